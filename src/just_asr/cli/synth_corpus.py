"""``just-asr synth-corpus OUT_DIR``: build the offline 8-language corpus in MLS's on-disk format.

Examples::

    just-asr synth-corpus data/synth                       # demo size (all 8 languages, MLS imbalance)
    just-asr synth-corpus data/synth --hours 10 --imbalance sqrt --langs en,de,pl --jobs 8
    just-asr synth-corpus data/synth --noise-snr 10,30 --seed 1 --overwrite

The result reads with ``just-asr prepare-mls data/synth manifests`` (or lhotse's
``prepare_mls(..., opus=False)``). See :mod:`just_asr.data.synth` for what is generated.
"""

from __future__ import annotations

import argparse
import sys

from just_asr.data.synth import DEMO_HOURS


def _int_triple(value: str) -> tuple[int, int, int]:
    parts = [p for p in value.replace(" ", "").split(",") if p]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,DEV,TEST (three integers), got {value!r}")
    try:
        a, b, c = (int(p) for p in parts)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected three integers, got {value!r}") from e
    return a, b, c


def _int_pair(value: str) -> tuple[int, int]:
    parts = [p for p in value.replace(" ", "").split(",") if p]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two integers), got {value!r}")
    try:
        return int(parts[0]), int(parts[1])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected two integers, got {value!r}") from e


def _float_pair(value: str) -> tuple[float, float]:
    parts = [p for p in value.replace(" ", "").split(",") if p]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX in dB, got {value!r}")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected two numbers, got {value!r}") from e


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create mls_<language>/ folders in")
    parser.add_argument(
        "--hours", type=float, default=DEMO_HOURS,
        help=f"total train hours over the chosen languages, at most 100,000 (default {DEMO_HOURS}: the demo size)",
    )
    parser.add_argument(
        "--imbalance", choices=("mls", "sqrt", "uniform"), default="mls",
        help="share of train hours per language: as MLS's train hours, their square root, or equal (default mls)",
    )
    parser.add_argument("--langs", default=None, help="comma-separated ISO codes or MLS names (default: all 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed gives identical bytes (default 0)")
    parser.add_argument("--dev-minutes", type=float, default=3.0, help="dev audio per language in minutes (default 3)")
    parser.add_argument("--test-minutes", type=float, default=3.0, help="test audio per language in minutes (default 3)")
    parser.add_argument(
        "--min-utts-per-lang", type=int, default=100,
        help="floor on train utterances per language, so tiny totals still cover every language (default 100, min 7)",
    )
    parser.add_argument(
        "--min-eval-utts", type=int, default=10, help="floor on dev and on test utterances per language (default 10)"
    )
    parser.add_argument(
        "--words", type=_int_pair, default=(5, 14), metavar="MIN,MAX",
        help="words per utterance, drawn uniformly (default 5,14: about 2-5 s of speech)",
    )
    parser.add_argument(
        "--number-prob", type=float, default=0.1, help="probability of a spelled-out number in an utterance (default 0.1)"
    )
    parser.add_argument("--vocab-size", type=int, default=5000, help="words per language vocabulary (default 5000)")
    parser.add_argument(
        "--zipf-exponent", type=float, default=1.0,
        help="words are drawn with probability frequency**EXPONENT, EXPONENT in [-10, 10] (default 1: natural Zipf)",
    )
    parser.add_argument(
        "--speakers", type=_int_triple, default=(12, 4, 4), metavar="TRAIN,DEV,TEST",
        help="speakers per language in each split, each >= 2 (default 12,4,4)",
    )
    parser.add_argument(
        "--noise-snr", type=_float_pair, default=None, metavar="MIN,MAX",
        help="add white noise at a per-utterance SNR drawn from [MIN, MAX] dB, both in [-100, 100] (default: no noise)",
    )
    parser.add_argument(
        "--limited-fraction", type=float, default=0.1,
        help="size of each language's 9hr+1hr limited-supervision set as a fraction of the smallest "
        "language's train audio (default 0.1, as MLS's 10 h of Polish's ~104 h)",
    )
    parser.add_argument(
        "--batch", type=int, default=8,
        help="most utterances of one speaker spoken by one espeak-ng process (default 8; 1: a process per "
        "utterance). Changes the audio slightly, so it is part of what a seed reproduces",
    )
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true", help="replace existing mls_<language> folders")


def run(args: argparse.Namespace) -> int:
    from just_asr.data.synth import EspeakError, EspeakNotFoundError, synthesize_corpus

    try:
        summary = synthesize_corpus(
            args.out_dir,
            hours=args.hours,
            imbalance=args.imbalance,
            langs=args.langs,
            seed=args.seed,
            dev_minutes=args.dev_minutes,
            test_minutes=args.test_minutes,
            min_train_utts=args.min_utts_per_lang,
            min_eval_utts=args.min_eval_utts,
            words=tuple(args.words),
            number_prob=args.number_prob,
            vocab_size=args.vocab_size,
            zipf_exponent=args.zipf_exponent,
            speakers=tuple(args.speakers),
            noise_snr=args.noise_snr,
            limited_fraction=args.limited_fraction,
            batch=args.batch,
            jobs=args.jobs,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (EspeakNotFoundError, EspeakError, FileExistsError, ValueError) as e:
        print(f"just-asr synth-corpus: error: {e}", file=sys.stderr)
        return 2
    print(summary.table())
    for f in summary.failures:
        print(f"skipped {f.lang}/{f.split} {f.utt_id}: {f.message} (text: {f.text!r})", file=sys.stderr)
    if summary.failures:
        print(f"{len(summary.failures)} utterance(s) failed and were skipped", file=sys.stderr)
    print(f"corpus written to {summary.out_dir}")
    return 0
