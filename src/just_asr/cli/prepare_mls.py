"""``just-asr prepare-mls CORPUS_DIR OUT_DIR``: MLS(-format) corpus -> lhotse manifests.

Examples::

    just-asr prepare-mls /data/mls data/manifests --langs pl,pt --jobs 8
    just-asr prepare-mls /data/mls data/manifests --langs polish --splits train dev --on-error fail

Writes ``mls-<iso>_{recordings,supervisions,cuts}_<split>.jsonl.gz``, the limited-supervision cut
sets ``mls-<iso>_cuts_train-{9hr,1hr,10hr}.jsonl.gz`` and ``prepare_errors.json`` (every problem
met, with file and line). A summary of skipped items is printed at the end. Exit status 0 on
success (even with skipped items), 1 when ``--on-error fail`` stopped the run or the corpus
cannot be read.
"""

from __future__ import annotations

import argparse
import logging
import sys

from just_asr.cli.prepare_untranscribed import finish


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus_dir", help="folder holding mls_<language>[_opus] folders (or one of them)")
    parser.add_argument("out_dir", help="where the manifests go")
    parser.add_argument("--langs", nargs="+", default=None, help="languages by ISO code or MLS name, e.g. 'pl pt' or 'polish,de' (default: all found)")
    parser.add_argument("--splits", nargs="+", default=["train", "dev", "test"], choices=["train", "dev", "test"], help="splits to read (default: train dev test)")
    parser.add_argument("--jobs", type=int, default=1, help="processes reading audio headers (default 1)")
    parser.add_argument("--on-error", choices=["skip", "fail"], default="skip", help="skip bad items and go on (default) or stop at the first")
    parser.add_argument("--no-verify-audio", dest="verify_audio", action="store_false", help="read only audio headers (faster; truncated files are then found at training time)")
    parser.add_argument("--audio-format", choices=["auto", "flac", "opus"], default="auto", help="which release to read when both exist (default: FLAC)")
    parser.add_argument("--compute-features", action="store_true", help="also precompute fbank features (lilcom, OUT_DIR/features/); default: on the fly in training")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from just_asr.data.errors import DataError, ErrorCollector
    from just_asr.data.mls import ERRORS_FILE, prepare_mls

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    langs = None
    if args.langs:
        langs = [x for item in args.langs for x in item.replace(",", " ").split()]
    errors = ErrorCollector(args.on_error)
    try:
        result = prepare_mls(
            args.corpus_dir, args.out_dir, langs=langs, splits=tuple(args.splits), jobs=args.jobs,
            on_error=args.on_error, verify_audio=args.verify_audio, audio_format=args.audio_format,
            compute_features=args.compute_features, errors=errors, progress=not args.quiet,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        finish(errors, args.out_dir, ERRORS_FILE)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for iso, sets in result.items():
        counts = ", ".join(f"{name}: {sum(1 for _ in d['cuts'])}" for name, d in sets.items())
        print(f"{iso}: {counts}")
    finish(errors, args.out_dir, ERRORS_FILE)
    return 0
