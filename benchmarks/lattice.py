"""Benchmark: the transducer lattice's forward-backward by label columns against by anti-diagonals.

Run (from the repository root)::

    .venv/bin/python benchmarks/lattice.py                       # CPU, 2 threads, three shapes
    PYTHONPATH=src python3 benchmarks/lattice.py --device cuda   # on a GPU

Both methods of ``just_asr.losses.lattice.forward_backward`` run on the same float32 lattice
(log-softmaxed random scores, padding masked as ``rnnt_loss`` masks it, utterance lengths spread
from the full ``T``/``U`` down to 60%/50%), alternating, ``--repeats`` times each after 3 warm-up
calls; the table gives median wall milliseconds per call (synchronised on a GPU), the speed-up, and
the largest difference in log-likelihood between the two (the columns run in float64, the
diagonals in float32, so this is mostly the diagonals' rounding). Shapes: ``B x T x (U+1)`` as
``--shapes`` gives them; the defaults are the tiny model's 15 s batch (4 x 468 x 94), the demo's
batches (14 x 50 x 21) and the RNN-T loss benchmark's (16 x 250 x 61), plus the paper-size GPU batch
(32 x 468 x 94) on a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from just_asr.losses.lattice import forward_backward  # noqa: E402
from just_asr.losses.lattice import lattice_masks  # noqa: E402


def lattice(B: int, T: int, U1: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(B, T, U1, 3, generator=g).log_softmax(-1)
    tl = torch.linspace(T, max(1, round(T * 0.6)), B).round().long()
    ul = torch.linspace(U1 - 1, (U1 - 1) * 0.5, B).round().long()
    node_ok, emit_ok = lattice_masks(tl, ul, T, U1)
    lpb = lp[..., 0].masked_fill(~node_ok, float("-inf"))
    lpe = lp[..., 1].masked_fill(~emit_ok, float("-inf"))
    return lpb.to(device), lpe.to(device), tl.to(device), ul.to(device)


def time_call(fn, device: str) -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--shapes", nargs="*", default=None, help="B,T,U+1 triples, e.g. 4,468,94")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else [
        (4, 468, 94), (14, 50, 21), (16, 250, 61)] + ([(32, 468, 94)] if args.device != "cpu" else [])
    where = platform.processor() or platform.machine()
    if args.device != "cpu":
        where = torch.cuda.get_device_name(torch.device(args.device))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {where}, {os.cpu_count()} CPUs, torch {torch.__version__}, device {args.device}, "
          f"threads={args.threads}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average {load:.2f}")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| B x T x (U+1) | diagonals: ms/call | columns: ms/call | speed-up | max abs log-likelihood difference |")
    print("|---|---:|---:|---:|---:|")
    for B, T, U1 in shapes:
        lpb, lpe, tl, ul = lattice(B, T, U1, args.device)
        fns = {m: (lambda m=m: forward_backward(lpb, lpe, tl, ul, method=m)) for m in ("diagonals", "columns")}
        times: dict[str, list[float]] = {m: [] for m in fns}
        for i in range(args.repeats + 3):
            for m, fn in fns.items():
                t = time_call(fn, args.device)
                if i >= 3:
                    times[m].append(t)
        d, c = (statistics.median(times[m]) * 1e3 for m in ("diagonals", "columns"))
        diff = (fns["diagonals"]()[0].double() - fns["columns"]()[0].double()).abs().max().item()
        print(f"| {B} x {T} x {U1} | {d:.2f} | {c:.2f} | {d / c:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
