"""Benchmark: just_asr's RNN-T loss (fwd+bwd wall time and extra peak memory) on CPU.

Run (from the repository root)::

    .venv/bin/python benchmarks/rnnt_loss.py                     # B=16 T=250 U=60 V=1024, 2 threads
    .venv/bin/python benchmarks/rnnt_loss.py --repeats 7 --naive-repeats 3
    .venv/bin/python benchmarks/rnnt_loss.py --batch 4 --frames 50 --tokens 10 --vocab 128  # quick

What is measured, all in one process so ratios compare like with like:

* ``ours``: ``just_asr.losses.rnnt_loss`` (fused log-softmax, float32), gradient in a fresh tensor.
* ``ours, reuse_logits_for_grads``: the same, writing the gradient into the logits' storage.
* ``ours, bf16 logits``: the same loss on bfloat16 logits (computed in float32 inside).
* ``naive``: a plain autograd implementation: ``torch.log_softmax`` over V, gather of the blank
  and target log-probs, the same anti-diagonal alpha recursion, and ``backward`` through it all.

Time: median (and min) over ``--repeats`` runs of ``loss = f(x); torch.autograd.grad(loss, x)``,
each run after the previous run's gradient has been freed, with ``torch.set_num_threads``.

Wall time is sensitive to other processes on a small machine (an OpenMP region waits for its
slowest thread); the process CPU time (all threads) of the same runs is printed too.

Memory: extra peak resident memory of one cold fwd+bwd, measured in a fresh subprocess per case
(so no memory freed by an earlier run can be silently reused) with Linux's per-process high-water
mark: the subprocess builds and touches the inputs, writes ``5`` to ``/proc/self/clear_refs``
(which resets ``VmHWM`` to the current RSS), reads ``VmRSS`` as the baseline, runs fwd+bwd
(keeping the returned gradient alive, since a caller keeps it too), then reads ``VmHWM``.
``extra = VmHWM - baseline`` counts every page the loss touched that was not resident before,
whatever allocated it (PyTorch, glibc, OpenMP). It is reported in MB and as a multiple of the
logits tensor's size.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch

from _peak_rss import available as peak_rss_available, reset_peak, status_kb
from just_asr.losses import rnnt_loss


def naive_rnnt_loss(logits: torch.Tensor, targets: torch.Tensor, logit_lengths: torch.Tensor,
                    target_lengths: torch.Tensor, blank: int) -> torch.Tensor:
    """Reference: autograd through log_softmax + gather + anti-diagonal recursion; mean over B.

    Args: as ``rnnt_loss`` (``logits: (B, T, U+1, V)``); returns a float32 scalar.
    """
    B, max_t, max_u1, _ = logits.shape
    logp = torch.log_softmax(logits.float(), dim=-1)
    lpb = logp[..., blank]  # (B, T, U+1)
    tgt = torch.zeros(B, max_u1, dtype=torch.long)
    tgt[:, : max_u1 - 1] = targets.long()
    lpe = logp.gather(3, tgt[:, None, :, None].expand(B, max_t, max_u1, 1)).squeeze(3)
    # A large finite "minus infinity": logaddexp(-inf, -inf) has a NaN gradient in autograd.
    neg_inf = torch.tensor(-1e30)
    # alpha over anti-diagonals; a python list keeps each diagonal a separate autograd node.
    diags = [torch.cat([torch.zeros(B, 1), neg_inf.expand(B, max_u1 - 1)], dim=1)]
    u = torch.arange(max_u1)
    for n in range(1, max_t + max_u1 - 1):
        prev = diags[-1]
        t_prev = (n - 1) - u  # t of the cell (n-1-u, u) on the previous diagonal
        ok = (t_prev >= 0) & (t_prev < max_t)
        tc = t_prev.clamp(0, max_t - 1)
        b_prev = torch.where(ok, lpb[:, tc, u], neg_inf)
        e_prev = torch.where(ok, lpe[:, tc, u], neg_inf)
        stay = prev + b_prev
        move = torch.cat([neg_inf.expand(B, 1), prev[:, :-1] + e_prev[:, :-1]], dim=1)
        diags.append(torch.logaddexp(stay, move))
    alpha = torch.stack(diags, dim=1)  # (B, N, U+1)
    t_last = logit_lengths.long() - 1
    u_last = target_lengths.long()
    bi = torch.arange(B)
    ll = alpha[bi, t_last + u_last, u_last] + lpb[bi, t_last, u_last]
    return -ll.mean()


def time_runs(fn, make_input, repeats: int) -> dict:
    """Median/min wall time and median process CPU time of fwd+bwd over ``repeats`` runs."""
    wall, cpu = [], []
    for _ in range(repeats):
        x = make_input()
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        loss = fn(x)
        (g,) = torch.autograd.grad(loss, x)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del loss, g, x
    return {"median_s": statistics.median(wall), "min_s": min(wall), "cpu_s": statistics.median(cpu), "times": wall}


def peak_memory(fn, make_input) -> float:
    """Extra peak RSS (MB) of one fwd+bwd, relative to the RSS just before it."""
    x = make_input()
    gc.collect()
    reset_peak()
    base = status_kb("VmRSS")
    loss = fn(x)
    (g,) = torch.autograd.grad(loss, x)
    peak = status_kb("VmHWM")
    if not bool(torch.isfinite(g).all()):
        raise RuntimeError("benchmarks/rnnt_loss.py: non-finite gradient")
    return (peak - base) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--naive-repeats", type=int, default=3)
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--memory-case", type=int, default=None, help=argparse.SUPPRESS)  # internal
    args = p.parse_args(argv)
    if not peak_rss_available():
        print("benchmarks/rnnt_loss.py: needs Linux /proc/self/clear_refs for peak-memory measurement", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T, U, V = args.batch, args.frames, args.tokens, args.vocab
    blank = 0
    logits = torch.randn(B, T, U + 1, V)
    targets = torch.randint(1, V, (B, U), dtype=torch.int32)
    t_len = torch.full((B,), T, dtype=torch.int32)
    u_len = torch.full((B,), U, dtype=torch.int32)
    logits_mb = logits.numel() * logits.element_size() / 2**20
    bf16_logits = logits.bfloat16()
    spare = torch.empty_like(logits)  # storage for the in-place variant, touched before baselines
    spare.copy_(logits)

    def ours(x):
        return rnnt_loss(x, targets, t_len, u_len, blank=blank)

    def ours_reuse(x):
        return rnnt_loss(x, targets, t_len, u_len, blank=blank, reuse_logits_for_grads=True)

    def fresh_spare():
        with torch.no_grad():
            spare.copy_(logits)  # the previous run overwrote it with a gradient
        return spare.detach().requires_grad_()

    def naive(x):
        return naive_rnnt_loss(x, targets, t_len, u_len, blank)

    cases = [
        ("ours (fresh gradient tensor)", ours, lambda: logits.detach().requires_grad_(), args.repeats),
        ("ours, reuse_logits_for_grads=True", ours_reuse, fresh_spare, args.repeats),
        ("ours, bf16 logits", ours, lambda: bf16_logits.detach().requires_grad_(), args.repeats),
    ]
    if not args.skip_naive:
        cases.append(("naive autograd (log_softmax + recursion)", naive,
                      lambda: logits.detach().requires_grad_(), args.naive_repeats))

    if args.memory_case is not None:  # child process: one cold run, print the extra MB
        _, fn, make, _ = cases[args.memory_case]
        _warm_up_code_paths()  # page in library code and one-time state on a tiny problem

        print(f"EXTRA_MB {peak_memory(fn, make):.1f}")
        return 0

    # Correctness cross-check at this shape before timing anything.
    with torch.no_grad():
        a = float(ours(logits))
        b = float(naive(logits))
    print(f"loss ours={a:.6f} naive={b:.6f} |diff|={abs(a - b):.2e}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"shape B={B} T={T} U={U} V={V}: float32 logits {logits_mb:.0f} MB (bf16: {logits_mb / 2:.0f} MB)")
    print("| case | median wall s | min wall s | median CPU s | extra peak MB | extra / logits |")
    print("|---|---|---|---|---|---|")
    results = {}
    for i, (name, fn, make, reps) in enumerate(cases):
        r = time_runs(fn, make, reps)
        child = subprocess.run(
            [sys.executable, __file__, "--memory-case", str(i)] + _shape_args(args),
            capture_output=True, text=True, check=True,
        )
        extra = float(child.stdout.split("EXTRA_MB")[1])
        results[name] = r
        size = logits_mb / 2 if "bf16" in name else logits_mb
        print(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['cpu_s']:.2f} | {extra:.0f} "
              f"| {extra / size:.3f}x |"
              f"  wall runs: {', '.join(f'{t:.2f}' for t in r['times'])}", flush=True)
    if not args.skip_naive:
        base = results["ours (fresh gradient tensor)"]
        nv = results["naive autograd (log_softmax + recursion)"]
        print(f"naive / ours: wall {nv['median_s'] / base['median_s']:.1f}x, CPU {nv['cpu_s'] / base['cpu_s']:.1f}x; "
              f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


def _warm_up_code_paths() -> None:
    """Run every variant once on a tiny problem so one-time costs (library code paged in, thread
    pools) are not counted as the loss's memory."""
    tg = torch.tensor([[1, 2]], dtype=torch.int32)
    tl, ul = torch.tensor([3], dtype=torch.int32), torch.tensor([2], dtype=torch.int32)
    for dtype in (torch.float32, torch.bfloat16):
        for reuse in (False, True):
            x = torch.randn(1, 3, 3, 5, dtype=dtype, requires_grad=True)
            torch.autograd.grad(rnnt_loss(x * 1, tg, tl, ul, blank=0, reuse_logits_for_grads=reuse), x)
    x = torch.randn(1, 3, 3, 5, requires_grad=True)
    torch.autograd.grad(naive_rnnt_loss(x, tg, tl, ul, 0), x)


def _shape_args(args: argparse.Namespace) -> list[str]:
    return ["--batch", str(args.batch), "--frames", str(args.frames), "--tokens", str(args.tokens),
            "--vocab", str(args.vocab), "--threads", str(args.threads)]


if __name__ == "__main__":
    raise SystemExit(main())
