"""SpecAugment (Park et al., 2019) on padded feature batches.

:class:`SpecAugment` masks bands of mel channels and spans of frames, and can warp time (off by
default). It reads ``lens`` so that nothing is ever written into padding frames: every time mask
lies inside ``[0, lens[b])`` and the warp only moves valid frames. All randomness is drawn on the
CPU from an optional ``torch.Generator``, so a seeded generator gives the same masks on any device.

Defaults follow the Conformer recipe (2 frequency masks of width up to 27, 10 time masks of width
up to 5% of the utterance). Setting ``time_masks_per_frame`` makes the number of time masks
proportional to the length (adaptive SpecAugment: ``min(num_time_masks, floor(ratio * len))``).

The module only augments in training mode (``module.train()``); in eval mode it returns its input.
The model applies it to the supervised branch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpecAugment(nn.Module):
    """Frequency masks, time masks and optional time warp on ``(B, T, F)`` features.

    Args:
        num_freq_masks: frequency masks per utterance.
        freq_mask_width: maximum width (mel channels) of a frequency mask; each width is uniform
            in ``[0, freq_mask_width]``.
        num_time_masks: time masks per utterance (the cap when ``time_masks_per_frame`` is set).
        time_mask_ratio: maximum width of a time mask as a fraction of the utterance's valid
            length (``floor(ratio * len)`` frames).
        time_mask_width: optional absolute cap on a time mask's width, in frames.
        time_masks_per_frame: if set, the number of time masks for an utterance of ``len``
            frames is ``min(num_time_masks, floor(time_masks_per_frame * len))``.
        time_warp: maximum warp displacement ``W`` in frames; 0 (default) turns warping off.
        mask_value: value written into masked cells (0 = the mean of CMVN-normalised features).
    """

    def __init__(
        self,
        num_freq_masks: int = 2,
        freq_mask_width: int = 27,
        num_time_masks: int = 10,
        time_mask_ratio: float = 0.05,
        time_mask_width: int | None = None,
        time_masks_per_frame: float | None = None,
        time_warp: int = 0,
        mask_value: float = 0.0,
    ):
        super().__init__()
        if min(num_freq_masks, freq_mask_width, num_time_masks, time_warp) < 0:
            raise ValueError("mask counts, widths and time_warp must be >= 0")
        if not 0.0 <= time_mask_ratio <= 1.0:
            raise ValueError(f"time_mask_ratio must be in [0, 1], got {time_mask_ratio}")
        if time_masks_per_frame is not None and time_masks_per_frame < 0:
            raise ValueError("time_masks_per_frame must be >= 0")
        self.num_freq_masks = int(num_freq_masks)
        self.freq_mask_width = int(freq_mask_width)
        self.num_time_masks = int(num_time_masks)
        self.time_mask_ratio = float(time_mask_ratio)
        self.time_mask_width = None if time_mask_width is None else int(time_mask_width)
        self.time_masks_per_frame = time_masks_per_frame
        self.time_warp = int(time_warp)
        self.mask_value = float(mask_value)

    def extra_repr(self) -> str:
        return (
            f"freq_masks={self.num_freq_masks}x{self.freq_mask_width}, time_masks={self.num_time_masks}"
            f"x{self.time_mask_ratio:g}*len (cap {self.time_mask_width}), per_frame={self.time_masks_per_frame},"
            f" time_warp={self.time_warp}"
        )

    def forward(self, features: torch.Tensor, lens: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``features: (B, T, F)`` with valid lengths ``lens: (B,)``; returns ``(B, T, F)``.

        The input is not modified. Padding frames (``t >= lens[b]``) come out unchanged.
        """
        if not self.training:
            return features
        mask, warped = self.masks(features, lens, generator)
        return warped.masked_fill(mask, self.mask_value)

    def masks(
        self, features: torch.Tensor, lens: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The boolean mask ``(B, T, F)`` (True = masked) and the (possibly warped) features."""
        if features.ndim != 3:
            raise ValueError(f"features must be (B, T, F), got shape {tuple(features.shape)}")
        b, t, f = features.shape
        lens = lens.to("cpu", torch.long)
        if lens.shape != (b,):
            raise ValueError(f"lens must be ({b},), got {tuple(lens.shape)}")
        if (lens > t).any() or (lens < 0).any():
            raise ValueError(f"lens must be in [0, {t}], got {lens.tolist()}")
        x = self._warp(features, lens, generator) if self.time_warp > 0 else features
        mask = torch.zeros(b, t, f, dtype=torch.bool)
        # frequency masks: (B, M) widths and starts over the F channels
        if self.num_freq_masks > 0 and self.freq_mask_width > 0:
            m = self.num_freq_masks
            width = _uniform_int(torch.full((b, m), min(self.freq_mask_width, f)), generator)
            start = _uniform_int(f - width, generator)
            ch = torch.arange(f)
            fm = ((ch[None, None, :] >= start[..., None]) & (ch[None, None, :] < (start + width)[..., None])).any(1)
            valid_t = torch.arange(t)[None, :] < lens[:, None]  # (B, T)
            mask |= fm[:, None, :] & valid_t[:, :, None]
        # time masks: widths up to ratio * len (and the absolute cap), inside [0, len)
        if self.num_time_masks > 0:
            m = self.num_time_masks
            max_w = torch.floor(lens.double() * self.time_mask_ratio).long()
            if self.time_mask_width is not None:
                max_w = max_w.clamp(max=self.time_mask_width)
            if self.time_masks_per_frame is not None:
                count = torch.floor(lens.double() * self.time_masks_per_frame).long().clamp(max=m)
            else:
                count = torch.full((b,), m, dtype=torch.long)
            width = _uniform_int(max_w[:, None].expand(b, m), generator)
            start = _uniform_int(lens[:, None] - width, generator)
            active = torch.arange(m)[None, :] < count[:, None]  # (B, M)
            width = width * active
            tt = torch.arange(t)
            tm = ((tt[None, None, :] >= start[..., None]) & (tt[None, None, :] < (start + width)[..., None])).any(1)
            mask |= tm[:, :, None]
        return mask.to(features.device), x

    def _warp(self, features: torch.Tensor, lens: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Time warp: move the frame at a random centre ``c`` by ``w`` in ``[-W, W]``, stretching
        ``[0, c)`` onto ``[0, c + w)`` and ``[c, len)`` onto ``[c + w, len)`` by linear
        interpolation. Utterances with ``len <= 2 W + 1`` are left alone."""
        out = features.clone()
        w_max = self.time_warp
        u = torch.rand(features.shape[0], 2, generator=generator)
        for i, n in enumerate(lens.tolist()):
            if n <= 2 * w_max + 1:
                continue
            centre = w_max + int(u[i, 0] * (n - 2 * w_max))  # in [W, n - W)
            shift = int(torch.floor(u[i, 1] * (2 * w_max + 1)).item()) - w_max  # in [-W, W]
            new_c = centre + shift
            if shift == 0 or new_c <= 0 or new_c >= n:
                continue
            seg = features[i, :n].transpose(0, 1)[None]  # (1, F, n)
            left = F.interpolate(seg[..., :centre], size=new_c, mode="linear", align_corners=False)
            right = F.interpolate(seg[..., centre:], size=n - new_c, mode="linear", align_corners=False)
            out[i, :n] = torch.cat([left, right], dim=-1)[0].transpose(0, 1)
        return out


def _uniform_int(upper: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Integers uniform in ``[0, upper]`` (inclusive), elementwise; ``upper: (...)`` long, >= 0."""
    upper = upper.clamp_min(0)
    r = torch.rand(upper.shape, generator=generator, dtype=torch.float64)
    return torch.floor(r * (upper.double() + 1)).long().clamp(max=upper)
