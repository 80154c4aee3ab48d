"""The ``just-asr`` command.

Each subcommand lives in its own module under ``just_asr.cli`` exposing ``add_arguments(parser)``
and ``run(args) -> int``; modules are imported only when their subcommand runs, so ``--help`` stays
fast. ``fit`` hands the rest of the command line to Lightning's CLI.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

#: subcommand -> (module under just_asr.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth-corpus": ("synth_corpus", "build the offline 8-language corpus in MLS's on-disk format (espeak-ng)"),
    "prepare-mls": ("prepare_mls", "read an MLS(-format) corpus into lhotse manifests"),
    "prepare-untranscribed": ("prepare_untranscribed", "turn a folder of audio into cuts without text (self-supervised data)"),
    "train-tokenizer": ("train_tokenizer", "train the multilingual SentencePiece tokenizer"),
    "compute-cmvn": ("compute_cmvn", "compute global feature mean/variance from training cuts"),
    "export-shar": ("export_shar", "write lhotse Shar shards (audio or features + cuts) for streaming training"),
    "model-info": ("model_info", "print parameter counts per component for a model config"),
    "fit": ("fit", "train a model (Lightning CLI: --config, --print-config, overrides)"),
    "export": ("export", "turn a training checkpoint into a model directory (safetensors)"),
    "decode": ("decode", "decode test cuts and write per-language WER/CER reports"),
    "transcribe": ("transcribe", "print transcripts for audio files"),
    "import-w2v-bert": ("import_w2v_bert", "import a Hugging Face Wav2Vec2BertModel (w2v-BERT 2.0) as a just-asr model directory"),
}


def _available() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (mod, help_) in SUBCOMMANDS.items():
        if importlib.util.find_spec(f"just_asr.cli.{mod}") is not None:
            out[name] = (mod, help_)
    return out


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="just-asr",
        description="Joint unsupervised and supervised training (JUST) of multilingual speech recognisers.",
    )
    from just_asr import __version__

    parser.add_argument("--version", action="version", version=f"just-asr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is None or only == name:
            module = importlib.import_module(f"just_asr.cli.{mod}")
            if hasattr(module, "add_arguments"):
                module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _available()
    if argv and argv[0] in cmds and cmds[argv[0]][0] == "fit":
        module = importlib.import_module("just_asr.cli.fit")
        return int(module.main(argv[1:]) or 0)
    first = argv[0] if argv and not argv[0].startswith("-") else None
    parser = build_parser(only=first)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    module = importlib.import_module(f"just_asr.cli.{cmds[args.command][0]}")
    try:
        return int(module.run(args) or 0)
    except OSError as exc:  # e.g. an output path that is a file: the message names the path
        print(f"just-asr {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
