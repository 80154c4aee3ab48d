#!/usr/bin/env python
"""End-to-end demo (``make demo``): a tiny multilingual JUST model, from nothing to a WER table.

Run (the Makefile does this after its set-up)::

    .venv/bin/python scripts/demo.py --workdir demo

Stages, each printed with the equivalent ``just-asr`` command and timed:

1. ``synth-corpus``: the offline 8-language corpus in MLS's on-disk format (espeak-ng voices, MLS's
   language imbalance with per-language floors); cached: skipped when ``WORKDIR/corpus`` is complete.
2. ``prepare-mls``: lhotse manifests with precomputed fbank features (cached likewise; training then
   reads features instead of decoding FLAC and computing fbank ~17 times over).
3. ``train-tokenizer``: one SentencePiece model for the 8 languages.
4. ``compute-cmvn``: global mean/variance of the training features.
5. ``fit``: JUST from scratch (``configs/model/tiny.yaml`` + ``configs/demo.yaml``) on the CPU, or the
   GPU when there is one; ``--resume`` makes a re-run continue (or skip) instead of restarting.
6. ``export`` three ways (final weights, EMA, average of the last checkpoints), ``decode`` the dev
   sets with each, keep the best on dev.
7. ``decode`` the test sets with it: the per-language WER/CER table.
8. ``transcribe`` one test file.

Everything lives under ``--workdir``; ``--fresh`` deletes the training outputs (not the corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

#: the corpus: MLS's imbalance over 8 languages above a floor of 1000 train utterances per language
#: (English ~4500), short utterances, a 100-word Zipfian list per language. The floor is what lets a
#: 10-minute run learn the small languages: with 250 utterances dev WER stayed near 66%, with 600
#: or 1000 it reached 45-47% (docs/training.md, "Session-4 probes")
CORPUS_ARGS = [
    "--hours", "1.5", "--imbalance", "mls", "--min-utts-per-lang", "1000", "--min-eval-utts", "25",
    "--dev-minutes", "0", "--test-minutes", "0", "--words", "2,5", "--vocab-size", "100",
    "--speakers", "8,3,3", "--seed", "0",
]
#: shared SentencePiece units for the 8 languages: 128 learned faster than 256 in the same 10 CPU
#: minutes (dev WER, docs/training.md "Training a small model from scratch")
TOKENIZER_VOCAB = 128
#: dev utterances per language scored at each validation during training (the weight-averaging
#: comparison after training decodes the whole dev sets)
DEV_CUTS_PER_LANG = 10
AVERAGE_LAST = 4
#: beam search with length normalisation: 5-6 points of WER below greedy on the demo's models
DECODE_ARGS = ["--method", "beam", "--beam", "4", "--length-norm"]


def _cmd(args: list[str]) -> str:
    return "just-asr " + " ".join(shlex.quote(a) for a in args)


class Stages:
    """Runs ``just-asr`` subcommands in this process, printing and timing each."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def run(self, name: str, args: list[str], check: bool = True) -> int:
        from just_asr.cli.main import main

        print(f"\n=== {name}\n$ {_cmd(args)}", flush=True)
        t0 = time.perf_counter()
        code = main(args)
        dt = time.perf_counter() - t0
        self.times.append((name, dt))
        print(f"--- {name}: {dt:.1f} s (exit {code})", flush=True)
        if check and code != 0:
            raise SystemExit(f"demo: stage '{name}' failed with exit status {code}")
        return code

    def skip(self, name: str, why: str) -> None:
        print(f"\n=== {name}: skipped ({why})", flush=True)
        self.times.append((f"{name} (cached)", 0.0))


def _stamp_ok(stamp: Path, key: dict) -> bool:
    try:
        return json.loads(stamp.read_text()) == key
    except (OSError, ValueError):
        return False


def _avg_wer(decode_dir: Path) -> float:
    data = json.loads((decode_dir / "wer.json").read_text())
    return float(data["average"]["wer"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="demo", help="where everything goes (default: demo)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier training outputs first (keeps the corpus)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the training steps of configs/demo.yaml")
    parser.add_argument("--jobs", type=int, default=None, help="processes for corpus synthesis (default: all cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (default: the CPUs this process may use; the features are precomputed, "
                        "so the data worker needs little CPU)")
    parser.add_argument("fit_args", nargs="*", help="extra 'just-asr fit' arguments (after --), e.g. --model.lr 1e-3")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(max(1, args.threads or len(os.sched_getaffinity(0))))
    os.chdir(ROOT)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus, manifests = work / "corpus", work / "manifests"
    tok_dir, cmvn = work / "tokenizer", work / "cmvn.json"
    exp, model_dir = work / "exp", work / "model"
    training_outputs = (exp, work / "models", model_dir, work / "decode", work / "dev")
    if args.fresh:
        for p in training_outputs:
            shutil.rmtree(p, ignore_errors=True)
    st = Stages()
    t_start = time.perf_counter()

    # 1. corpus (cached)
    key = {"args": CORPUS_ARGS}
    if _stamp_ok(corpus / ".complete.json", key):
        st.skip("synth-corpus", f"{corpus} is complete")
    else:
        shutil.rmtree(corpus, ignore_errors=True)
        jobs = ["--jobs", str(args.jobs)] if args.jobs else []
        st.run("synth-corpus", ["synth-corpus", str(corpus), *CORPUS_ARGS, *jobs, "--no-progress"])
        (corpus / ".complete.json").write_text(json.dumps(key))
        for p in (manifests, tok_dir, cmvn):  # derived from the old corpus
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    # 2. manifests (cached)
    key_m = {"corpus": key, "features": True}
    if _stamp_ok(manifests / ".complete.json", key_m):
        st.skip("prepare-mls", f"{manifests} is complete")
    else:
        shutil.rmtree(manifests, ignore_errors=True)
        st.run("prepare-mls", ["prepare-mls", str(corpus), str(manifests), "--jobs", "2", "--quiet",
                               "--compute-features"])
        (manifests / ".complete.json").write_text(json.dumps(key_m))

    from just_asr.data.languages import ISO_CODES

    train_cuts = [str(manifests / f"mls-{l}_cuts_train.jsonl.gz") for l in ISO_CODES]
    dev_cuts = [str(manifests / f"mls-{l}_cuts_dev.jsonl.gz") for l in ISO_CODES]
    test_cuts = [str(manifests / f"mls-{l}_cuts_test.jsonl.gz") for l in ISO_CODES]

    # 3. tokenizer, 4. CMVN (cheap; cached with the manifests)
    tok = tok_dir / "tokenizer.model"
    key_t = {"manifests": key_m, "vocab_size": TOKENIZER_VOCAB}
    if tok.is_file() and _stamp_ok(tok_dir / ".complete.json", key_t):
        st.skip("train-tokenizer", f"{tok} exists")
    else:
        shutil.rmtree(tok_dir, ignore_errors=True)
        st.run("train-tokenizer", ["train-tokenizer", *train_cuts, "--vocab-size", str(TOKENIZER_VOCAB),
                                   "--out", str(tok_dir)])
        (tok_dir / ".complete.json").write_text(json.dumps(key_t))
        for p in training_outputs:  # trained on the old units
            shutil.rmtree(p, ignore_errors=True)
    if cmvn.is_file():
        st.skip("compute-cmvn", f"{cmvn} exists")
    else:
        st.run("compute-cmvn", ["compute-cmvn", *train_cuts, "--out", str(cmvn), "--max-cuts", "200"])

    # 5. training
    fit = ["fit", "--config", "configs/model/tiny.yaml", "--config", "configs/demo.yaml",
           "--data.manifest_dir", str(manifests), "--data.tokenizer", str(tok), "--data.cmvn", str(cmvn),
           "--data.max_dev_cuts_per_lang", str(DEV_CUTS_PER_LANG), "--trainer.default_root_dir", str(exp),
           "--resume"]
    if args.max_steps is not None:
        fit += ["--trainer.max_steps", str(args.max_steps)]
    st.run("fit", fit + list(args.fit_args))

    # 6. export three ways, compare on dev
    ckdir = exp / "checkpoints"
    variants = {"final": [], "ema": ["--ema"], f"average-last-{AVERAGE_LAST}": ["--average-last", str(AVERAGE_LAST)]}
    dev_wer: dict[str, float] = {}
    for name, extra in variants.items():
        out = work / "models" / name
        code = st.run(f"export ({name})", ["export", str(ckdir / "last.ckpt"), str(out), *extra], check=name == "final")
        if code != 0:
            continue
        st.run(f"decode dev ({name})", ["decode", "--model", str(out), "--cuts", *dev_cuts,
                                         "--out", str(work / "dev" / name), *DECODE_ARGS])
        dev_wer[name] = _avg_wer(work / "dev" / name)
    best = min(dev_wer, key=dev_wer.get)
    print("\n=== weight averaging on dev (average WER over 8 languages)")
    for name, w in dev_wer.items():
        print(f"  {name:<18} {100 * w:6.2f}%{'   <- best, exported to ' + str(model_dir) if name == best else ''}")
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(work / "models" / best, model_dir)

    # 7. test sets
    st.run("decode test", ["decode", "--model", str(model_dir), "--cuts", *test_cuts, "--out", str(work / "decode"),
                           *DECODE_ARGS])
    test_avg = _avg_wer(work / "decode")

    # 8. transcribe one file
    from just_asr.data.mls import load_manifests

    cut = next(iter(load_manifests(manifests, "pl", "test")))
    audio = cut.recording.sources[0].source
    st.run("transcribe", ["transcribe", "--model", str(model_dir), audio, *DECODE_ARGS])
    print(f"(reference: {cut.supervisions[0].text})")

    total = time.perf_counter() - t_start
    print("\n=== wall time per stage")
    for name, dt in st.times:
        print(f"  {name:<28} {dt:7.1f} s")
    print(f"  {'total':<28} {total:7.1f} s")
    print(f"\ntest average WER {100 * test_avg:.2f}% (table above; reports in {work / 'decode'})")
    print(f"model directory: {model_dir}\ntranscribe your own audio with:\n"
          f"  .venv/bin/just-asr transcribe --model {model_dir} {' '.join(DECODE_ARGS)} FILE.flac")
    return 0


if __name__ == "__main__":
    sys.exit(main())
