"""Benchmark: dropout keep-masks on the CPU, ``torch.bernoulli_`` against the project's integer draws.

Run (from the repository root)::

    .venv/bin/python benchmarks/dropout_mask.py                 # 2 threads, the tiny model's shapes
    .venv/bin/python benchmarks/dropout_mask.py --threads 1

For each shape, alternating in one process (``--repeats`` rounds after 3 warm-up calls, medians of
wall milliseconds per call): the mask alone drawn by ``torch.empty(shape).bernoulli_(1 - p)``, by
``just_asr.model.frontend.dropout_keep_mask`` with 32-bit pieces (two elements per 64-bit draw) and
with 16-bit pieces (four per draw, the default for usual rates); then a whole dropout forward +
backward on a bf16 tensor (``x * mask * 1/(1-p)`` and its gradient) with each mask. The keep rate
of every mask is printed beside it. Default shapes: the FFN activation of the tiny preset's
12-utterance batch (12 x 49 x 576), its attention probabilities (12 x 4 x 49 x 49) and the
attention probabilities of a 15 s batch (4 x 4 x 468 x 468).
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

from just_asr.model.frontend import dropout_keep_mask  # noqa: E402

CPU = torch.device("cpu")


def masks(p: float):
    """name -> function(shape) returning a bool keep-mask."""
    return {
        "bernoulli_": lambda shape: torch.empty(shape).bernoulli_(1.0 - p).bool(),
        "32-bit pieces": lambda shape: dropout_keep_mask(shape, p, CPU, bits=32),
        "16-bit pieces": lambda shape: dropout_keep_mask(shape, p, CPU, bits=16),
    }


def dropout_step(x: torch.Tensor, keep: torch.Tensor, p: float) -> None:
    y = x.mul(keep.to(x.dtype)).mul(1.0 / (1.0 - p))
    y.backward(torch.ones_like(y))


def run(shapes: list[tuple[int, ...]], p: float, repeats: int) -> list[tuple]:
    rows = []
    for shape in shapes:
        fns = masks(p)
        x = torch.randn(shape, dtype=torch.bfloat16, requires_grad=True)
        cases = {}
        for name, f in fns.items():
            cases[("mask", name)] = lambda f=f: f(shape)
            cases[("dropout fwd+bwd", name)] = lambda f=f: dropout_step(x, f(shape), p)
        times: dict = {k: [] for k in cases}
        for _ in range(3):
            for fn in cases.values():
                fn()
        for _ in range(repeats):
            for k, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        for what in ("mask", "dropout fwd+bwd"):
            ref = statistics.median(times[(what, "bernoulli_")])
            for name, f in fns.items():
                med = statistics.median(times[(what, name)])
                rate = float(f(shape).float().mean()) if what == "mask" else float("nan")
                rows.append((shape, what, name, med * 1e3, ref / med, rate))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--p", type=float, default=0.1, help="dropout rate (default 0.1, the presets')")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--shapes", nargs="+", default=["12,49,576", "12,4,49,49", "4,4,468,468"],
                    help="comma-separated tensor shapes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"load average {os.getloadavg()[0]:.2f}; p = {args.p}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print()
    print("| shape | what | mask | ms/call (median) | speed-up vs bernoulli_ | keep rate |")
    print("|---|---|---|---:|---:|---:|")
    for shape, what, name, ms, speedup, rate in run(shapes, args.p, args.repeats):
        rate_s = "" if rate != rate else f"{rate:.4f}"
        print(f"| {'x'.join(map(str, shape))} | {what} | {name} | {ms:.3f} | {speedup:.2f}x | {rate_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
