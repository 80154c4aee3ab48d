"""Training with Lightning: the LightningModule/DataModule, optimiser and schedule, callbacks and
weight averaging. ``just-asr fit`` (``just_asr.cli.fit``) wires them into Lightning's CLI; see
docs/training.md.

Imports are lazy so that ``import just_asr.train.optim`` does not pull in Lightning or lhotse.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "JustLightningModule": "just_asr.train.module",
    "InitReport": "just_asr.train.module",
    "load_matching": "just_asr.train.module",
    "JustDataModule": "just_asr.train.datamodule",
    "noam_lr": "just_asr.train.optim",
    "build_optimizer": "just_asr.train.optim",
    "build_noam_scheduler": "just_asr.train.optim",
    "param_groups": "just_asr.train.optim",
    "GumbelTemperature": "just_asr.train.callbacks",
    "CodebookHealth": "just_asr.train.callbacks",
    "NonFiniteGuard": "just_asr.train.callbacks",
    "EMA": "just_asr.train.callbacks",
    "Throughput": "just_asr.train.callbacks",
    "EMAWeights": "just_asr.train.averaging",
    "average_checkpoints": "just_asr.train.averaging",
    "find_last_checkpoints": "just_asr.train.averaging",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'just_asr.train' has no attribute {name!r}")
