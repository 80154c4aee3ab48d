"""``just-asr export CKPT OUT_DIR [--average-last N | --ema]``: turn a training checkpoint into a model
directory (safetensors weights, config, tokenizer, CMVN) that ``decode``/``transcribe`` load without
pickle.

* plain: the weights of ``CKPT`` (a ``.ckpt`` file, or a checkpoint folder: its ``last.ckpt``);
* ``--average-last N``: the element-wise mean of the N checkpoints with the highest global step in
  ``CKPT``'s folder (periodic ``step*.ckpt`` files written by ``periodic_checkpoint``);
* ``--ema``: the exponential moving average kept by the EMA callback inside ``CKPT``.

The tokenizer and CMVN paths recorded in the checkpoint are used unless ``--tokenizer``/``--cmvn``
are given.

Example::

    just-asr export exp/just/checkpoints/last.ckpt exp/just/model --average-last 5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) or the folder holding last.ckpt")
    parser.add_argument("out_dir", help="model directory to write")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--average-last", type=int, default=None, metavar="N",
                     help="average the N latest checkpoints (by global step) of CKPT's folder")
    how.add_argument("--ema", action="store_true", help="export the EMA weights stored in CKPT")
    parser.add_argument("--tokenizer", default=None, help="tokenizer .model (default: the one recorded in CKPT)")
    parser.add_argument("--cmvn", default=None, help="CMVN JSON (default: the one recorded in CKPT; 'none' for none)")


def _resolve_ckpt(ckpt: str | Path) -> Path:
    p = Path(ckpt)
    if p.is_dir():
        p = p / "last.ckpt"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    return p


def export_checkpoint(
    ckpt: str | Path,
    out_dir: str | Path,
    *,
    average_last: int | None = None,
    ema: bool = False,
    tokenizer: str | None = None,
    cmvn: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the model directory; returns ``(out_dir, info)`` where ``info`` says which weights were
    exported (``source``: ``checkpoint``/``average``/``ema``, ``checkpoints``, ``global_step``)."""
    from just_asr.inference import save_model_dir
    from just_asr.model import JustModel, ModelConfig
    from just_asr.train.averaging import (
        EMA_CHECKPOINT_KEY,
        average_checkpoints,
        find_last_checkpoints,
        load_lightning_checkpoint,
        strip_prefix,
    )

    averaged: list[Path] = []
    if average_last is not None:
        averaged = find_last_checkpoints(ckpt, average_last)  # a folder needs no last.ckpt for this
        path = Path(ckpt) if Path(ckpt).is_file() else averaged[-1]
    else:
        path = _resolve_ckpt(ckpt)
    ck = load_lightning_checkpoint(path)
    hp = ck.get("hyper_parameters") or {}
    if "arch" not in hp or "vocab_size" not in hp:
        raise ValueError(f"{path}: checkpoint lacks the model's hyper-parameters (arch, vocab_size); "
                         "was it written by just-asr fit?")
    cfg = ModelConfig.from_dict(hp["arch"], source=f"{path} (hyper_parameters.arch)")
    model = JustModel(cfg, int(hp["vocab_size"]))
    info: dict[str, Any] = {"global_step": int(ck.get("global_step", -1)), "checkpoints": [str(path)]}
    if average_last is not None:
        state = average_checkpoints(averaged)
        info.update(source="average", checkpoints=[str(p) for p in averaged])
    elif ema:
        if EMA_CHECKPOINT_KEY not in ck:
            raise ValueError(f"{path}: no EMA weights in this checkpoint (train with the ema callback enabled)")
        state = ck[EMA_CHECKPOINT_KEY]
        info.update(source="ema")
    else:
        state = strip_prefix(ck["state_dict"])
        info.update(source="checkpoint")
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ValueError(f"{path}: weights lack {len(missing)} tensors of the model, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=True)
    dm = ck.get("datamodule_hyper_parameters") or {}
    tok = tokenizer or hp.get("tokenizer") or dm.get("tokenizer")
    if not tok:
        raise ValueError(f"{path}: no tokenizer recorded in the checkpoint; pass --tokenizer")
    if cmvn is None:
        cmvn = dm.get("cmvn")
    elif cmvn.lower() == "none":
        cmvn = None
    # the feature recipe the run was trained on travels with the model (a fine-tuned w2v-BERT 2.0
    # import was trained on the SeamlessM4T recipe and must be decoded with it)
    out = save_model_dir(out_dir, model, cfg, tok, cmvn=cmvn, extra={"export": info},
                         features=dm.get("feature_source"))
    return out, info


def run(args: argparse.Namespace) -> int:
    try:
        out, info = export_checkpoint(args.ckpt, args.out_dir, average_last=args.average_last, ema=args.ema,
                                      tokenizer=args.tokenizer, cmvn=args.cmvn)
    except (FileNotFoundError, ValueError) as exc:
        print(f"just-asr export: error: {exc}", file=sys.stderr, flush=True)
        return 1
    what = {"checkpoint": "checkpoint weights", "average": f"average of {len(info['checkpoints'])} checkpoints",
            "ema": "EMA weights"}[info["source"]]
    print(f"exported {what} (step {info['global_step']}) to {out}", flush=True)
    return 0
