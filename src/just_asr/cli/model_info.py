"""``just-asr model-info``: parameter counts per component of a model config.

The model is built on PyTorch's ``meta`` device, so even the 0.6B preset costs no memory or time.

Example::

    just-asr model-info --config configs/model/w2v-bert-xl.yaml --vocab-size 1024
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="model YAML (ModelConfig under 'model: arch:')")
    parser.add_argument("--vocab-size", type=int, default=1024, help="output units including blank (default 1024)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")


def count_parameters(config_path: str, vocab_size: int) -> dict[str, int]:
    """Per-component parameter counts (``frontend``, ``contrastive_stack``, ``mlm_stack``,
    ``quantizer``, ``heads``, ``predictor``, ``joiner``, ``total``) of the model in ``config_path``."""
    import torch

    from just_asr.model import JustModel, load_model_config

    cfg = load_model_config(config_path)
    with torch.device("meta"):
        model = JustModel(cfg, vocab_size)
    return model.component_parameters()


def format_table(counts: dict[str, int]) -> str:
    width = max(len(k) for k in counts)
    lines = [f"{'component':<{width}}  {'parameters':>14}  {'millions':>9}"]
    for name, n in counts.items():
        if name == "total":
            lines.append("-" * (width + 27))
        lines.append(f"{name:<{width}}  {n:>14,}  {n / 1e6:>9.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.vocab_size < 2:
        raise SystemExit(f"model-info: --vocab-size must be >= 2, got {args.vocab_size}")
    try:
        counts = count_parameters(args.config, args.vocab_size)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"model-info: {exc}") from None
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        print(f"{args.config} (vocab size {args.vocab_size})")
        print(format_table(counts))
    return 0
