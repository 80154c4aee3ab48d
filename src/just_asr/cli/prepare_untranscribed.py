"""``just-asr prepare-untranscribed AUDIO_DIR OUT_DIR [--lang xx]``: audio without transcripts -> cuts.

Example::

    just-asr prepare-untranscribed /data/podcasts_pl data/manifests --lang pl --window 20 --jobs 4

Writes ``untranscribed[-<iso>]_{recordings,cuts}.jsonl.gz`` and ``prepare_errors.json``. The cuts
have no text, so they feed only the self-supervised losses.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio_dir", help="folder searched recursively for wav/flac/opus/ogg/mp3 files")
    parser.add_argument("out_dir", help="where the manifests go")
    parser.add_argument("--lang", default=None, help="ISO code or MLS name of the audio's language (optional)")
    parser.add_argument("--jobs", type=int, default=1, help="processes reading audio (default 1)")
    parser.add_argument("--on-error", choices=["skip", "fail"], default="skip", help="skip bad files and go on (default) or stop at the first")
    parser.add_argument("--no-verify-audio", dest="verify_audio", action="store_false", help="read only audio headers")
    parser.add_argument("--window", type=float, default=None, help="split recordings longer than this many seconds into windows of this length")
    parser.add_argument("--min-duration", type=float, default=0.5, help="leave out files, and drop the last window of a file, shorter than this (a "
                        "left-out file is reported; default 0.5 s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def finish(errors, out_dir: str | Path, name: str) -> None:
    """Print the problem summary and write the JSON report (also on failure)."""
    path = errors.to_json(Path(out_dir) / name)
    print(errors.summary())
    print(f"problem report: {path}")


def run(args: argparse.Namespace) -> int:
    from just_asr.data.errors import DataError, ErrorCollector
    from just_asr.data.mls import ERRORS_FILE
    from just_asr.data.untranscribed import prepare_untranscribed

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    errors = ErrorCollector(args.on_error)
    try:
        cuts = prepare_untranscribed(
            args.audio_dir, args.out_dir, args.lang, jobs=args.jobs, on_error=args.on_error,
            verify_audio=args.verify_audio, window=args.window, min_duration=args.min_duration,
            errors=errors, progress=not args.quiet,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        finish(errors, args.out_dir, ERRORS_FILE)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(cuts)} untranscribed cuts, {sum(c.duration for c in cuts) / 3600:.2f} h")
    finish(errors, args.out_dir, ERRORS_FILE)
    if len(cuts) == 0:
        print(f"error: {args.audio_dir}: no usable audio, every file was left out (see the problem report)",
              file=sys.stderr)
        return 1
    return 0
