"""In-process before/after timings of the parts of decoding (results in BENCHMARKS.md, "Decoding speed").

Each mode alternates the two variants it compares within one process, so both see the same machine
load, and prints medians (RTF = seconds / audio seconds, 10 ms feature frames)::

    # the encoder of an older tree against this checkout's, same weights, float32 and bf16 autocast
    git archive COMMIT src configs | tar -x -C /tmp/before
    .venv/bin/python benchmarks/decode_parts.py encoder --model DIR --cuts MANIFEST... --compare-src /tmp/before/src
    # Predictor.step through nn.LSTM (one time step) against the LSTM cells written out, pooled searches
    .venv/bin/python benchmarks/decode_parts.py predictor-step --model DIR --cuts MANIFEST...
    # encoder batches on N intra-op threads against N Python threads of one torch thread each
    .venv/bin/python benchmarks/decode_parts.py encoder-threads --model DIR --cuts MANIFEST... --threads 2
    # the pooled searches (greedy, beam 4) on 1 torch thread against --threads (Transcriber search_threads)
    .venv/bin/python benchmarks/decode_parts.py search-threads --model DIR --cuts MANIFEST... --threads 2
    # the depthwise convolution's kernels at the tiny model's shapes (no model needed)
    .venv/bin/python benchmarks/decode_parts.py depthwise --threads 2

The batches are those of ``just-asr decode`` (:func:`just_asr.data.loader.make_eval_dataloader`,
200 s per batch, the model's CMVN), featurised once before any timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # benchmarks/decode.py (the batches) and train_step.py (older trees)


def _batches(model_dir: str, manifests: list[str]):
    """``(loaded model, [(features, lens)], audio seconds)``: ``benchmarks/decode.py``'s batches."""
    from decode import load_batches

    from just_asr.data.loader import read_cut_manifests
    from just_asr.inference import load_model_dir

    loaded = load_model_dir(model_dir)
    batches = load_batches(loaded, read_cut_manifests(manifests), manifests, 200.0)
    audio = sum(float(b.lens.sum()) for b in batches) / 100.0
    return loaded, [(b.features, b.lens) for b in batches], audio


def _alternate(variants: dict[str, Callable[[], object]], passes: int) -> dict[str, float]:
    """One untimed call of each, then ``passes`` rounds calling each once; median seconds per variant."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(passes):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _alternate_searches(searches: dict[str, Callable[[], list]], passes: int) -> tuple[dict[str, float], int, int]:
    """:func:`_alternate` over pooled searches (name -> a call returning the searched units per
    utterance): ``(median seconds per name, utterances whose units the first two agree on, utterances)``."""
    tokens: dict[str, list] = {}

    def keep(name, fn):
        def call():
            tokens[name] = fn()
        return call

    t = _alternate({name: keep(name, fn) for name, fn in searches.items()}, passes)
    first, second = list(searches)[:2]
    same = sum(a == b for a, b in zip(tokens[first], tokens[second], strict=True))
    return t, same, len(tokens[first])


def _search_label(method: str) -> str:
    return f"pooled {method} search{' (beam 4, length norm)' if method == 'beam' else ''}"


def _encode_all(model, batches, bf16: bool) -> list:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return [model.encode(f, l) for f, l in batches]


def run_encoder(args: argparse.Namespace) -> None:
    from train_step import import_package_copy

    loaded, batches, audio = _batches(args.model, args.cuts)
    new = loaded.model.eval()
    old_pkg = import_package_copy(args.compare_src)
    old = old_pkg.JustModel(new.cfg, new.joiner.vocab_size).eval()
    old.load_state_dict(new.state_dict())
    for bf16 in (False, True):
        t = _alternate({"before": lambda: _encode_all(old, batches, bf16),
                        "after": lambda: _encode_all(new, batches, bf16)}, args.passes)
        print(f"encoder {'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} threads: RTF before "
              f"{t['before'] / audio:.5f} after {t['after'] / audio:.5f} ({t['before'] / t['after']:.2f}x)")


def _nn_lstm_step(self, last_tokens, state=None):
    """``Predictor.step`` as it was: ``nn.LSTM`` over a length-1 sequence."""
    out, state = self.forward(last_tokens.unsqueeze(1), state)
    return out.squeeze(1), state


def run_predictor_step(args: argparse.Namespace) -> None:
    from just_asr.inference import Transcriber
    from just_asr.model.transducer import Predictor

    loaded, batches, audio = _batches(args.model, args.cuts)
    encoded = [Transcriber(loaded).encode(f, l, apply_cmvn=False) for f, l in batches]
    cells = Predictor.step
    try:
        for method in ("greedy", "beam"):
            tr = Transcriber(loaded, method=method, beam=4, length_norm=True)

            def with_step(step, tr=tr):
                def fn():
                    Predictor.step = step
                    return tr.search_pooled(encoded).tokens
                return fn

            t, same, n = _alternate_searches({"nn.LSTM": with_step(_nn_lstm_step), "cells": with_step(cells)},
                                             args.passes)
            print(f"{_search_label(method)}, {torch.get_num_threads()} threads: RTF nn.LSTM step "
                  f"{t['nn.LSTM'] / audio:.5f}, cells {t['cells'] / audio:.5f} ({t['nn.LSTM'] / t['cells']:.2f}x); "
                  f"same units on {same} of {n}")
    finally:
        Predictor.step = cells


def run_encoder_threads(args: argparse.Namespace) -> None:
    loaded, batches, audio = _batches(args.model, args.cuts)
    model = loaded.model.eval()
    n = args.threads

    def intra_op():
        torch.set_num_threads(n)
        _encode_all(model, batches, args.bf16)

    def python_threads():
        torch.set_num_threads(1)
        workers = [threading.Thread(target=_encode_all, args=(model, batches[i::n], args.bf16)) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    t = _alternate({"intra": intra_op, "python": python_threads}, args.passes)
    torch.set_num_threads(n)
    print(f"encoder {'bf16' if args.bf16 else 'fp32'}: RTF one call on {n} intra-op threads {t['intra'] / audio:.5f}, "
          f"{n} Python threads x 1 torch thread {t['python'] / audio:.5f} ({t['intra'] / t['python']:.2f}x)")


def run_search_threads(args: argparse.Namespace) -> None:
    """What ``search_threads`` buys: with encoder workers on one torch thread each, the search that
    starts after the last batch is encoded runs on all ``--threads`` instead of one."""
    from just_asr.inference import Transcriber

    loaded, batches, audio = _batches(args.model, args.cuts)
    torch.set_num_threads(1)
    encoded = [Transcriber(loaded, encoder_dtype="bfloat16").encode(f, l, apply_cmvn=False) for f, l in batches]
    for method in ("greedy", "beam"):
        opts = dict(method=method, beam=4, length_norm=method == "beam")
        one, many = Transcriber(loaded, **opts), Transcriber(loaded, search_threads=args.threads, **opts)
        t, same, n = _alternate_searches({"one": lambda: one.search_pooled(encoded).tokens,
                                          "many": lambda: many.search_pooled(encoded).tokens}, args.passes)
        print(f"{_search_label(method)}, bf16 encoder output: RTF 1 thread {t['one'] / audio:.5f}, "
              f"{args.threads} threads {t['many'] / audio:.5f} ({t['one'] / t['many']:.2f}x); "
              f"same units on {same} of {n}")
    torch.set_num_threads(args.threads)


def run_depthwise(args: argparse.Namespace) -> None:
    """Forward and forward + backward of the conformer's depthwise conv (d=144, kernel 15) on a
    ``(B, T, d)`` activation, three ways: bf16 on a contiguous ``(B, d, 1, T)`` copy (the old bf16
    path), float32 on the channels-last view of a float32 tensor (the float32 path), and the bf16
    activation cast to float32 and convolved on its channels-last view (the bf16 path now)."""
    d, k = 144, 15
    weight = torch.randn(d, 1, 1, k, requires_grad=True)
    bias = torch.randn(d, requires_grad=True)

    def conv(y: torch.Tensor, mode: str) -> torch.Tensor:
        view = y.transpose(1, 2).unsqueeze(2)
        if mode == "bf16 contiguous":
            return F.conv2d(view.contiguous(), weight.bfloat16(), bias.bfloat16(), padding=(0, k // 2), groups=d)
        if mode == "bf16 -> fp32 view":
            return F.conv2d(view.float(), weight, bias, padding=(0, k // 2), groups=d).bfloat16()
        return F.conv2d(view, weight, bias, padding=(0, k // 2), groups=d)

    for batch, frames in ((12, 49), (20, 27), (15, 38), (24, 49)):
        x = torch.randn(batch, frames, d)
        cot = torch.randn(batch, d, 1, frames)
        row = []
        for mode in ("bf16 contiguous", "fp32 view", "bf16 -> fp32 view"):
            y = x if mode == "fp32 view" else x.bfloat16()

            def fwd():
                with torch.no_grad():
                    conv(y, mode)

            def fwd_bwd():
                yy = y.detach().requires_grad_()
                out = conv(yy, mode)
                out.backward(cot.to(out.dtype))

            t = _alternate({"f": fwd, "fb": fwd_bwd}, args.passes * 5)
            row.append(f"{mode}: fwd {t['f'] * 1e3:.3f} ms, fwd+bwd {t['fb'] * 1e3:.3f} ms")
        print(f"B={batch} T={frames}: " + " | ".join(row))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("encoder", "predictor-step", "encoder-threads", "search-threads", "depthwise"))
    p.add_argument("--model", metavar="DIR", help="model directory (just-asr export)")
    p.add_argument("--cuts", nargs="+", metavar="MANIFEST", help="lhotse cut manifests (the demo test set)")
    p.add_argument("--compare-src", metavar="DIR", help="encoder: the older tree's src directory")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads (encoder-threads: the N of both variants; search-threads: the many-thread variant)")
    p.add_argument("--passes", type=int, default=7, help="timed rounds per variant (default: 7)")
    p.add_argument("--bf16", action="store_true", help="encoder-threads: bf16 autocast")
    args = p.parse_args(argv)
    if args.threads < 1 or args.passes < 1:
        p.error("--threads and --passes must be >= 1")
    if args.mode != "depthwise" and not (args.model and args.cuts):
        p.error(f"{args.mode} needs --model DIR --cuts MANIFEST...")
    if args.mode == "encoder" and not args.compare_src:
        p.error("encoder needs --compare-src DIR")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {args.threads} threads; {args.passes} passes")
    {"encoder": run_encoder, "predictor-step": run_predictor_step, "encoder-threads": run_encoder_threads,
     "search-threads": run_search_threads, "depthwise": run_depthwise}[args.mode](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
