"""Benchmark: pruned RNN-T vs the full fused RNN-T (joiner + loss, forward + backward) on CPU.

Run (from the repository root)::

    .venv/bin/python benchmarks/pruned_rnnt.py                    # B=16 T=250 U=60 V=1024, 2 threads
    .venv/bin/python benchmarks/pruned_rnnt.py --repeats 5
    .venv/bin/python benchmarks/pruned_rnnt.py --batch 4 --frames 50 --tokens 10 --vocab 128  # quick

Every case starts from the encoder output ``enc (B, T, D)`` and the predictor output
``pred (B, U+1, P)`` (both requiring grad) and a ``just_asr.model.transducer.Joiner`` (D = P = J =
``--joint-dim``), and computes the loss plus the gradient for ``enc``, ``pred`` and every weight:

* ``full``: ``joiner(enc, pred)`` -> logits ``(B, T, U+1, V)`` -> ``just_asr.losses.rnnt.rnnt_loss``.
* ``full, reuse_logits_for_grads``: the same with the full loss's opt-in memory saver (the gradient
  is written into the logits' storage); not what the model runs today, shown as the leanest full
  baseline.
* ``full, fused_batch_size=n``: ``just_asr.model.just.sub_batched_rnnt_loss``: the same joiner +
  loss over sub-batches of n utterances with activation recomputation (identical values).
* ``pruned-fused=n``: the pruned path with its joiner + pruned loss over sub-batches of n
  utterances under activation recomputation (``decoder.fused_batch_size`` with ``rnnt: pruned``).
* ``pruned``: ``just_asr.losses.pruned_rnnt.pruned_rnnt_loss``: simple heads ``am (B, T, V)``,
  ``lm (B, U+1, V)`` -> simple loss -> bounds -> joiner on ``(B, T, S, V)`` -> pruned loss;
  the objective is ``0.5 * simple + pruned`` (the post-warm-up weights); like the model, it lets the
  pruned loss write the ``(B, T, S, V)`` gradient into the pruned logits' storage.

Time: median and min wall time over ``--repeats`` runs in this one process with
``torch.set_num_threads(--threads)``. On a shared machine only the ratios between cases are
meaningful (every case suffers the same contention), so the table gives them.

Memory: extra peak resident memory of one cold run, each case in a fresh subprocess: it builds the
inputs, runs a tiny warm-up of the same code, writes ``5`` to ``/proc/self/clear_refs`` (Linux
resets ``VmHWM`` to the current RSS), reads ``VmRSS`` as the baseline, runs forward + backward
(keeping the gradients, as a training step does), and reports ``VmHWM - baseline``.
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
from just_asr.losses.pruned_rnnt import pruned_rnnt_loss
from just_asr.losses.rnnt import rnnt_loss
from just_asr.model.just import sub_batched_rnnt_loss
from just_asr.model.transducer import Joiner


class Problem:
    """Inputs and modules of one benchmark shape (seeded)."""

    def __init__(self, B: int, T: int, U: int, V: int, dim: int, prune_range: int) -> None:
        torch.manual_seed(0)
        self.B, self.T, self.U, self.V, self.S = B, T, U, V, prune_range
        self.joiner = Joiner(dim, dim, dim, V)
        self.am_head = torch.nn.Linear(dim, V)
        self.lm_head = torch.nn.Linear(dim, V)
        self.enc = torch.randn(B, T, dim)
        self.pred = torch.randn(B, U + 1, dim)
        self.targets = torch.randint(1, V, (B, U))
        # realistic, unequal lengths: the longest utterance fills the padded shape
        self.t_len = torch.linspace(T, int(T * 0.7), B).round().long()
        self.u_len = torch.linspace(U, int(U * 0.7), B).round().long()

    def params(self, case: str) -> list[torch.nn.Parameter]:
        ps = list(self.joiner.parameters())
        if case.startswith("pruned"):
            ps += list(self.am_head.parameters()) + list(self.lm_head.parameters())
        return ps

    def loss(self, case: str, enc: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Scalar objective (mean over utterances) of ``case``."""
        if case in ("full", "full-reuse"):
            logits = self.joiner(enc[:, :, None], pred[:, None])
            return rnnt_loss(logits, self.targets, self.t_len, self.u_len, blank=0, reduction="mean",
                             reuse_logits_for_grads=case == "full-reuse")
        if case.startswith("fused"):
            n = int(case.split("=")[1])
            return sub_batched_rnnt_loss(self.joiner, enc, self.t_len, pred, self.targets, self.u_len, n).mean()
        if case.startswith("pruned"):
            sub = int(case.split("=")[1]) if "=" in case else None
            res = pruned_rnnt_loss(
                self.joiner.project_encoder(enc), self.joiner.project_predictor(pred), self.joiner.join,
                self.am_head(enc), self.lm_head(pred), self.targets, self.t_len, self.u_len,
                prune_range=self.S, reduction="mean", reuse_logits_for_grads=True,  # as the model does
                sub_batch=sub,
            )
            return 0.5 * res.simple + res.pruned
        raise ValueError(f"benchmarks/pruned_rnnt.py: unknown case {case!r}")

    def step(self, case: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        enc = self.enc.detach().requires_grad_()
        pred = self.pred.detach().requires_grad_()
        loss = self.loss(case, enc, pred)
        grads = torch.autograd.grad(loss, [enc, pred, *self.params(case)])
        return loss.detach(), list(grads)


CASES = ["full", "full-reuse", "fused=4", "fused=1", "pruned", "pruned-fused=4"]
LABELS = {
    "full": "full: joiner (B,T,U+1,V) + fused rnnt_loss",
    "full-reuse": "full, rnnt_loss(reuse_logits_for_grads=True)",
    "fused=4": "full, fused_batch_size=4",
    "fused=1": "full, fused_batch_size=1",
    "pruned": "pruned (S={S}): simple loss + joiner (B,T,S,V) + pruned loss",
    "pruned-fused=4": "pruned (S={S}), fused_batch_size=4",
}


def peak_memory_mb(prob: Problem, case: str) -> float:
    small = Problem(2, 8, 3, 16, 8, prob.S)
    small.step(case)  # page in the code paths and one-time state
    gc.collect()
    reset_peak()
    base = status_kb("VmRSS")
    loss, grads = prob.step(case)
    peak = status_kb("VmHWM")
    if not (torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)):
        raise RuntimeError(f"benchmarks/pruned_rnnt.py: non-finite loss or gradient in case {case}")
    return (peak - base) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--joint-dim", type=int, default=256)
    p.add_argument("--prune-range", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)  # internal: child process
    args = p.parse_args(argv)
    if not peak_rss_available():
        print("benchmarks/pruned_rnnt.py: needs Linux /proc/self/clear_refs for peak memory", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    prob = Problem(args.batch, args.frames, args.tokens, args.vocab, args.joint_dim, args.prune_range)
    if args.memory_case is not None:
        print(f"EXTRA_MB {peak_memory_mb(prob, args.memory_case):.1f}")
        return 0

    B, T, U, V = args.batch, args.frames, args.tokens, args.vocab
    logits_mb = B * T * (U + 1) * V * 4 / 2**20
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"shape B={B} T={T} U={U} V={V} J={args.joint_dim} S={args.prune_range}; T_b from {T} to "
          f"{int(prob.t_len.min())}, U_b from {U} to {int(prob.u_len.min())}; full float32 logits {logits_mb:.0f} MB")
    results: dict[str, dict[str, float]] = {}
    for case in CASES:
        times = []
        loss = torch.tensor(float("nan"))
        for _ in range(args.repeats):
            gc.collect()
            t0 = time.perf_counter()
            loss, grads = prob.step(case)
            times.append(time.perf_counter() - t0)
            del grads
        child = subprocess.run(
            [sys.executable, __file__, "--memory-case", case, "--batch", str(B), "--frames", str(T), "--tokens",
             str(U), "--vocab", str(V), "--joint-dim", str(args.joint_dim), "--prune-range", str(args.prune_range),
             "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )
        mb = float(child.stdout.split("EXTRA_MB")[1].split()[0])
        results[case] = {"median": statistics.median(times), "min": min(times), "mb": mb, "loss": float(loss)}
        print(f"  {case}: loss {float(loss):.4f}, times {[round(t, 2) for t in times]}, extra peak {mb:.0f} MB",
              flush=True)
    ref = results["full"]
    print()
    print("| case | loss | median wall s | min wall s | extra peak MB | time vs full | memory vs full |")
    print("|---|---|---|---|---|---|---|")
    for case in CASES:
        r = results[case]
        print(f"| {LABELS[case].format(S=args.prune_range)} | {r['loss']:.4f} | {r['median']:.2f} | {r['min']:.2f} | "
              f"{r['mb']:.0f} | {r['median'] / ref['median']:.2f}x | {ref['mb'] / max(r['mb'], 1e-9):.1f}x less |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
