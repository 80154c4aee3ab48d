"""``just-asr compute-cmvn CUTS... --out stats.json``: global feature mean/variance.

Example::

    just-asr compute-cmvn data/manifests/mls-*_cuts_train-10hr.jsonl.gz --out data/cmvn.json --max-cuts 20000

Statistics are over every valid frame of the (first ``--max-cuts`` of each file's) cuts, with
features computed exactly as in training. Cuts whose audio fails are reported and left out.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cuts", nargs="+", help="lhotse cut manifests (.jsonl.gz)")
    parser.add_argument("--out", required=True, help="output JSON")
    parser.add_argument("--max-cuts", type=int, default=None, help="use at most this many cuts per manifest")
    parser.add_argument("--features", choices=["auto", "precomputed", "on-the-fly"], default="auto", help="where features come from (default: stored when present)")
    parser.add_argument("--on-error", choices=["skip", "fail"], default="skip")


def run(args: argparse.Namespace) -> int:
    from lhotse import CutSet

    from just_asr.data.errors import DataError, ErrorCollector
    from just_asr.data.features import GlobalCMVN
    from just_asr.data.mls import NamedLazyManifest

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    errors = ErrorCollector(args.on_error)
    try:
        if args.max_cuts is not None and args.max_cuts < 1:
            raise ValueError(f"--max-cuts must be >= 1, got {args.max_cuts}")
        streams = []
        counts = dict.fromkeys(args.cuts, 0)

        def counted(path, cuts):
            for cut in cuts:
                counts[path] += 1
                yield cut

        for path in args.cuts:
            if not Path(path).is_file():
                raise ValueError(f"{path}: cut manifest not found")
            cs = CutSet(NamedLazyManifest(path, problem="not a lhotse cut manifest"))  # errors name the file
            streams.append(counted(path, itertools.islice(cs, args.max_cuts) if args.max_cuts is not None else cs))
        try:
            stats = GlobalCMVN.from_cuts(itertools.chain(*streams), source=args.features, errors=errors,
                                         progress=True)
        finally:  # (on an error too: "no frames" is explained by the empty inputs)
            for path, n in counts.items():
                if n == 0:
                    print(f"warning: {path}: the cut manifest holds no cuts; nothing was taken from it",
                          file=sys.stderr)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = stats.save(args.out)
    print(f"CMVN over {stats.count} frames written to {path}")
    if len(errors):
        print(errors.summary())
    return 0
