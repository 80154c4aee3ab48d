"""Optimiser and learning-rate schedule.

The schedule is the Transformer ("Noam") warm-up used by conformer/RNN-T recipes: the learning rate
rises linearly from ``peak/warmup`` to ``peak`` over ``warmup_steps`` optimiser steps, then decays in
proportion to ``step^-0.5``::

    lr(step) = peak * min(step / warmup, sqrt(warmup / step)),   step = 1, 2, ...

(The original Transformer paper writes the same curve as ``d^-0.5 * min(step^-0.5, step * warmup^-1.5)``;
here it is parameterised by the peak value directly, which is what people tune.)

The decoder (predictor + joiner) may get its own peak learning rate: both parameter groups follow the
same curve, scaled to their own peaks.

Example::

    >>> f = noam_factor(warmup_steps=4)
    >>> [round(f(s), 4) for s in range(6)]   # scheduler counter s -> optimiser step s+1
    [0.25, 0.5, 0.75, 1.0, 0.8944, 0.8165]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn


def noam_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (1-based) under the Noam schedule.

    Args:
        step: the 1-based optimiser step; ``step <= 0`` is treated as step 1.
        peak_lr: the value reached at ``step == warmup_steps``.
        warmup_steps: length of the linear ramp; ``0`` means no warm-up (pure ``step^-0.5`` decay
          from ``peak_lr`` at step 1).
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    s = max(int(step), 1)
    if warmup_steps == 0:
        return peak_lr * s**-0.5
    return peak_lr * min(s / warmup_steps, math.sqrt(warmup_steps / s))


def noam_factor(warmup_steps: int) -> Callable[[int], float]:
    """Multiplier for ``torch.optim.lr_scheduler.LambdaLR`` (whose counter starts at 0 before the
    first optimiser step, so counter ``s`` is optimiser step ``s + 1``)."""

    def factor(s: int) -> float:
        return noam_lr(s + 1, 1.0, warmup_steps)

    return factor


def _decoder_prefixes() -> tuple[str, ...]:
    return ("predictor.", "joiner.")


def param_groups(
    model: nn.Module,
    lr: float,
    decoder_lr: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Split ``model``'s trainable parameters into optimiser groups.

    * ``decoder``: parameters under ``model.predictor`` / ``model.joiner`` (peak ``decoder_lr`` when
      given, else ``lr``);
    * ``encoder``: everything else (peak ``lr``).

    Weight decay applies to matrices only; biases, norms' gains and other 1-D parameters get none.
    Empty groups are left out.
    """
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "decoder" if name.startswith(_decoder_prefixes()) else "encoder"
        decay = p.ndim >= 2
        groups.setdefault((part, decay), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        peak = decoder_lr if (part == "decoder" and decoder_lr is not None) else lr
        out.append(
            {
                "params": params,
                "lr": peak,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{part}{'' if decay else '_no_decay'}",
            }
        )
    return out


def build_optimizer(
    params: Iterable[dict] | Iterable[nn.Parameter],
    name: str = "adamw",
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-9,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params`` (plain parameters or groups from :func:`param_groups`).

    ``fused``: PyTorch's fused kernel (one pass over all parameters; on CPU the for-loop version,
    which torch picks there by default, costs a few small ops per parameter tensor). ``None``
    (default): fused when every parameter is a floating-point tensor on CPU or CUDA. Same update rule
    either way; the optimiser state has the same keys, so checkpoints load into either.
    """
    key = name.lower()
    if key not in ("adam", "adamw"):
        raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'adamw'")
    if isinstance(params, torch.Tensor):
        params = [params]
    # materialise every group's parameters once (a generator would be used up by the check below)
    params = [{**g, "params": [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])}
              if isinstance(g, dict) else g for g in params]
    if fused is None:
        tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        fused = bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    cls = torch.optim.Adam if key == "adam" else torch.optim.AdamW
    opt = cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)

    def keep_implementation(optimizer: torch.optim.Optimizer) -> None:
        # load_state_dict restores each group's saved "fused" flag: keep the one chosen here, so a
        # checkpoint from a for-loop optimiser resumes fused (and the other way round)
        for group in optimizer.param_groups:
            group["fused"] = fused

    opt.register_load_state_dict_post_hook(keep_implementation)
    return opt


def warmup_constant_factor(warmup_steps: int) -> Callable[[int], float]:
    """``LambdaLR`` multiplier of the ``constant`` schedule: linear warm-up over ``warmup_steps``
    optimiser steps, then the peak held (short runs, where Noam's decay starves learning)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    def factor(s: int) -> float:
        return 1.0 if warmup_steps == 0 else min((s + 1) / warmup_steps, 1.0)

    return factor


def wsd_factor(warmup_steps: int, total_steps: int, decay_fraction: float) -> Callable[[int], float]:
    """``LambdaLR`` multiplier of the ``wsd`` schedule (warm-up, stable, decay): linear warm-up over
    ``warmup_steps``, the peak held, then a linear decay to 0 over the last ``decay_fraction`` of
    ``total_steps`` (0 from ``total_steps`` on). For runs with a known step budget: the decay
    settles the weights at the end, which a constant rate never does.

    >>> f = wsd_factor(warmup_steps=2, total_steps=10, decay_fraction=0.5)
    >>> [round(f(s), 2) for s in range(11)]
    [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    """
    ramp = warmup_constant_factor(warmup_steps)  # checks warmup_steps
    if total_steps <= 0:
        raise ValueError(f"the wsd schedule needs a positive step budget (trainer.max_steps), got {total_steps}")
    if not 0.0 < decay_fraction <= 1.0:
        raise ValueError(f"lr_decay_fraction must be in (0, 1], got {decay_fraction}")
    decay_len = max(1, round(decay_fraction * total_steps))
    decay_start = total_steps - decay_len

    def factor(s: int) -> float:
        if s < decay_start:
            return ramp(s)
        return min(ramp(s), max(0.0, (total_steps - s) / decay_len))

    return factor


SCHEDULES = ("noam", "constant", "wsd")


def build_noam_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    schedule: str = "noam",
    total_steps: int | None = None,
    decay_fraction: float = 0.3,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` applying the schedule to every group's own peak (its initial ``lr``):
    ``noam`` (warm-up then ``step^-0.5`` decay), ``constant`` (warm-up then the peak held) or ``wsd``
    (warm-up, peak, linear decay to 0 over the last ``decay_fraction`` of ``total_steps``)."""
    if schedule == "noam":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, noam_factor(warmup_steps))
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_constant_factor(warmup_steps))
    if schedule == "wsd":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, wsd_factor(warmup_steps, total_steps if total_steps is not None else -1, decay_fraction))
    raise ValueError(f"unknown lr_schedule {schedule!r}; choose from {SCHEDULES}")
