"""Span masking of latent frames (w2v-BERT / wav2vec 2.0 style).

``compute_span_mask`` draws, independently for every *valid* frame t of each utterance, a span
start with probability ``prob``; a span covers frames ``[t, t + span)`` cut at the utterance's valid
length. If an utterance gets fewer than ``min_spans`` starts, extra starts are drawn uniformly
(without replacement) among its remaining valid frames until it has ``min(min_spans, length)``.
Spans may overlap. Away from the first ``span - 1`` frames, a frame is masked with probability
``1 - (1 - prob) ** span`` (0.489 at prob=0.065, span=10); frame ``t < span - 1`` has only ``t + 1``
possible starts, so it is masked with probability ``1 - (1 - prob) ** (t + 1)``.

``SpanMasker`` applies the mask to ``(B, T, D)`` latents, replacing masked frames by
``N(0, noise_std**2)`` noise or by a learned vector.

Both are deterministic under a ``torch.Generator`` (it must live on the tensors' device).

Example::

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> m = compute_span_mask(torch.tensor([50, 20]), 50, prob=0.065, span=10, min_spans=2, generator=g)
    >>> tuple(m.shape), bool(m[1, 20:].any()), int(m[1].sum()) >= 10
    ((2, 50), False, True)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import MaskingConfig
from .frontend import lengths_to_padding_mask


def compute_span_mask(
    lengths: Tensor,
    max_len: int,
    prob: float = 0.065,
    span: int = 10,
    min_spans: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw span masks.

    Args:
        lengths: ``(B,)`` valid frames per utterance (``<= max_len``).
        max_len: padded length T.
        prob: probability that a valid frame starts a span.
        span: span length in frames.
        min_spans: minimum number of span starts per utterance (capped at its length).
        generator: optional RNG for reproducible masks.

    Returns:
        bool ``(B, T)``: True at masked frames; always False at padded frames.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be (B,), got shape {tuple(lengths.shape)}")
    if span < 1:
        raise ValueError(f"span must be >= 1, got {span}")
    device = lengths.device
    b = lengths.size(0)
    valid = lengths_to_padding_mask(lengths, max_len)  # (B, T)
    u = torch.rand(b, max_len, generator=generator, device=device)
    starts = (u < prob) & valid
    need = (torch.clamp(lengths, max=min_spans) - starts.sum(dim=1)).clamp(min=0)  # (B,)
    if bool((need > 0).any()):
        # Rank the remaining valid frames by fresh uniform scores; take the top ``need`` of each row.
        score = torch.rand(b, max_len, generator=generator, device=device)
        score = score.masked_fill(~valid | starts, -1.0)
        order = score.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(max_len, device=device).expand(b, max_len))
        starts = starts | ((rank < need.unsqueeze(1)) & valid & ~starts)
    # Frame t is masked iff some start lies in [t - span + 1, t]: a windowed count via cumsum.
    c = torch.cumsum(starts.to(torch.int32), dim=1)
    shifted = torch.zeros_like(c)
    if max_len > span:
        shifted[:, span:] = c[:, :-span]
    return ((c - shifted) > 0) & valid


def expected_mask_fraction(length: int, prob: float, span: int) -> float:
    """Expected masked fraction of a ``length``-frame utterance, ignoring ``min_spans``
    (negligible for long utterances): ``mean_t 1 - (1 - prob) ** min(t + 1, span)``."""
    total = sum(1.0 - (1.0 - prob) ** min(t + 1, span) for t in range(length))
    return total / length


class SpanMasker(nn.Module):
    """Draw span masks and replace masked latent frames.

    Args:
        cfg: masking settings.
        d_model: latent width (for the learned replacement vector).
    """

    def __init__(self, cfg: MaskingConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.replace == "learned":
            self.mask_embedding = nn.Parameter(torch.empty(d_model).uniform_())
        elif cfg.replace != "noise":
            raise ValueError(f"unknown masking.replace {cfg.replace!r}; choose 'noise' or 'learned'")

    def forward(
        self, x: Tensor, lengths: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``x: (B, T, D)``, ``lengths: (B,)`` -> ``(masked x (B, T, D), mask (B, T) bool)``."""
        cfg = self.cfg
        mask = compute_span_mask(lengths, x.size(1), cfg.prob, cfg.span, cfg.min_spans, generator)
        if cfg.replace == "noise":
            fill = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * cfg.noise_std
        else:
            fill = self.mask_embedding.to(x.dtype).expand_as(x)
        return torch.where(mask.unsqueeze(-1), fill, x), mask
