"""``just-asr transcribe --model DIR FILE...``: print one transcript per audio file.

Output: one line per file, ``<file>\\t<text>``, in the order given; with ``--json``, a JSON list of
``{"file": ..., "text": ...}`` (failed files carry ``"text": null`` and ``"error"``). A file that
cannot be read is reported on stderr (``error: <file>: <problem>``) and the others are still
transcribed; the exit status is 1 if any file failed, 2 if the model directory cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys

from just_asr.decode import DEFAULT_MAX_SYMBOLS_PER_FRAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="model directory (just-asr export)")
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, opus, mp3, ...; any rate from 8 kHz, resampled to 16 kHz)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of {file, text} instead of lines")
    parser.add_argument("--method", choices=("greedy", "beam"), default="greedy", help="search (default: greedy)")
    parser.add_argument("--beam", type=int, default=4, help="beam size for --method beam (default: 4)")
    parser.add_argument("--max-symbols-per-frame", type=int, default=DEFAULT_MAX_SYMBOLS_PER_FRAME,
                        help=f"most units per encoder frame (default: {DEFAULT_MAX_SYMBOLS_PER_FRAME})")
    parser.add_argument("--length-norm", action="store_true", help="beam search: rank by score per unit")
    parser.add_argument("--encoder-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="encoder precision (bfloat16: under autocast, faster on CPUs with AVX-512 bf16; "
                             "default: float32)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's choice; 1 is often fastest on busy machines)")
    parser.add_argument("--max-batch-frames", type=int, default=12000,
                        help="most 10 ms feature frames (padding included) per batch (default: 12000)")


def run(args: argparse.Namespace) -> int:
    from just_asr.runtime import tune_malloc_for_command

    if not tune_malloc_for_command("transcribe"):
        return 2
    from just_asr.inference import ModelDirError, Transcriber, load_model_dir

    if args.threads is not None:
        if args.threads < 1:
            print(f"just-asr transcribe: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        loaded = load_model_dir(args.model, device=args.device)
        transcriber = Transcriber(
            loaded, method=args.method, beam=args.beam, max_symbols_per_frame=args.max_symbols_per_frame,
            length_norm=args.length_norm, max_batch_frames=args.max_batch_frames, encoder_dtype=args.encoder_dtype,
        )
    except (ModelDirError, ValueError, OSError) as exc:
        print(f"just-asr transcribe: error: {exc}", file=sys.stderr)
        return 2
    results = transcriber.transcribe_each(args.files)
    failed = 0
    for r in results:
        if r.error is not None:
            failed += 1
            print(f"error: {r.error}", file=sys.stderr)
    if args.json:
        items = []
        for r in results:
            item: dict = {"file": r.path, "text": r.text}
            if r.error is not None:
                item["error"] = r.error
            items.append(item)
        print(json.dumps(items, ensure_ascii=False, indent=1))
    else:
        for r in results:
            if r.error is None:
                print(f"{r.path}\t{r.text}")
    sys.stdout.flush()
    if failed:
        print(f"just-asr transcribe: {failed} of {len(results)} files failed", file=sys.stderr)
        return 1
    return 0
