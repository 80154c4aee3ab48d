"""``just-asr export-shar MANIFEST_DIR OUT_DIR``: write lhotse Shar shards for streaming training.

Example (audio as FLAC, 1000 cuts per shard, the train and dev splits of every language)::

    just-asr export-shar data/manifests data/shar --splits train,dev --fields audio --shard-size 1000
    just-asr fit --config ... --data.shar_dir data/shar       # training then streams the shards

``--fields features`` stores the 80-d fbank (computed exactly as in training, lilcom-compressed)
instead of audio, ``both`` stores both. The shards and ``shar_index.json`` are described in
:mod:`just_asr.data.shar`. Cuts whose audio cannot be read are reported and left out
(``--on-error fail`` stops at the first one instead).
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from just_asr.data.shar import AUDIO_FORMATS, FIELD_CHOICES

    parser.add_argument("manifest_dir", help="folder of just-asr prepare-mls (mls-<iso>_cuts_<split>.jsonl.gz)")
    parser.add_argument("out_dir", help="output folder for the shards and shar_index.json (an existing index is extended)")
    parser.add_argument("--langs", default=None, help="comma-separated ISO codes or MLS names (default: all eight)")
    parser.add_argument("--splits", default="train,dev", help="comma-separated splits (default: train,dev)")
    parser.add_argument("--fields", choices=list(FIELD_CHOICES), default="audio",
                        help="what the shards hold besides the cuts: audio, features (fbank), or both (default: audio)")
    parser.add_argument("--audio-format", choices=list(AUDIO_FORMATS), default="flac", help="audio encoding (default: flac)")
    parser.add_argument("--shard-size", type=int, default=1000,
                        help="cuts per shard (default: 1000; keep shards >= GPUs x workers for large languages)")
    parser.add_argument("--jobs", type=int, default=1, help="processes for feature extraction (default: 1)")
    parser.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                        help="unreadable audio: report and leave the cut out (skip), or stop (fail)")


def run(args: argparse.Namespace) -> int:
    from just_asr.data.errors import DataError, ErrorCollector
    from just_asr.data.shar import export_shar

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    errors = ErrorCollector(args.on_error)
    splits = [s.strip() for s in str(args.splits).split(",") if s.strip()]
    if not splits:
        print("just-asr export-shar: error: --splits is empty", file=sys.stderr)
        return 1
    try:
        report = export_shar(
            args.manifest_dir, args.out_dir, langs=args.langs, splits=splits, fields=args.fields,
            audio_format=args.audio_format, shard_size=args.shard_size, jobs=args.jobs, errors=errors, progress=True,
        )
    except (DataError, ValueError, FileNotFoundError) as exc:
        print(f"just-asr export-shar: error: {exc}", file=sys.stderr)
        return 1
    total = sum(report.written.values())
    print(f"{total} cuts in {len(report.written)} language/split sets; index: {report.index.path}")
    if len(errors):
        print(errors.summary())
    return 0
