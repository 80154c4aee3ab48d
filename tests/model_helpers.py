"""Helpers shared by the model tests (torch and just_asr only, so they also run on a GPU machine)."""

from __future__ import annotations

from typing import Any

from just_asr.model import ModelConfig


def model_config(base: dict[str, Any], over: dict[str, Any]) -> ModelConfig:
    """``ModelConfig.from_dict(base)`` after applying ``over``: a dict value updates that section of
    ``base`` key by key, anything else replaces it (``base`` is modified)."""
    for section, values in over.items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    return ModelConfig.from_dict(base)
