"""Helpers shared by the model tests (torch and just_asr only, so they also run on a GPU machine)."""

from __future__ import annotations

from typing import Any

import torch

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


def record_search_threads(monkeypatch) -> list[int]:
    """Patch the Transcriber's search (``just_asr.inference.decode``) to note torch's thread count
    each time it runs; returns the list it appends to."""
    import just_asr.inference as inference

    seen: list[int] = []
    real = inference.decode

    def recording(*args: Any, **kwargs: Any):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "decode", recording)
    return seen
