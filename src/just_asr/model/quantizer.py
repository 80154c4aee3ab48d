"""Gumbel-softmax vector quantiser (wav2vec 2.0 / w2v-BERT).

``x (B, T, D) -> logits (B, T, G, V)``. In training, ``y = softmax((logits + g) / tau)`` with Gumbel
noise ``g``; the hard one-hot of ``argmax y`` is used in the forward pass and the soft ``y`` carries
the gradient (straight-through: ``hard - y.detach() + y``). In eval there is no noise: the hard
one-hot of ``argmax logits``. Each group's one-hot picks one of V learned code vectors of width
``code_dim / G``; the G picks are concatenated into ``(B, T, code_dim)``.

``ids (B, T, G)`` are the indices of the chosen codes (the noisy argmax in training, i.e. exactly the
codes whose vectors are the contrastive targets; the noise-free argmax in eval): the MLM targets.

``probs (G, V)`` is the noise-free, temperature-free ``softmax(logits)`` averaged over valid frames of
the batch (for the diversity loss and the codebook perplexity); ``code_usage`` is the fraction of the
G x V codes chosen at least once among the valid frames.

Temperature: ``gumbel_temperature(step)`` gives the annealed value; set it with
``set_temperature(tau)`` (the JUST model's ``set_gumbel_temperature``).

Example::

    >>> import torch
    >>> qz = GumbelQuantizer(input_dim=8, num_codebooks=2, codebook_size=5, code_dim=6)
    >>> out = qz(torch.randn(3, 4, 8), torch.tensor([4, 2, 3]))
    >>> tuple(out.quantized.shape), tuple(out.ids.shape), tuple(out.probs.shape)
    ((3, 4, 6), (3, 4, 2), (2, 5))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .frontend import lengths_to_padding_mask


def gumbel_temperature(step: int, start: float = 2.0, end: float = 0.1, decay: float = 0.999995) -> float:
    """Annealed Gumbel temperature ``max(end, start * decay ** step)``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return max(end, start * decay**step)


@dataclass
class QuantizerOutput:
    """Quantiser results.

    Attributes:
        quantized: ``(B, T, code_dim)`` quantised vectors (zero at padded frames).
        ids: int64 ``(B, T, G)`` chosen code per group (0 at padded frames).
        logits: ``(B, T, G, V)`` raw code logits.
        probs: float32 ``(G, V)`` softmax(logits) averaged over valid frames.
        code_usage: float32 scalar, fraction of the G x V codes chosen at least once.
    """

    quantized: Tensor
    ids: Tensor
    logits: Tensor
    probs: Tensor
    code_usage: Tensor


class GumbelQuantizer(nn.Module):
    """Gumbel-softmax quantiser with G codebooks of V entries.

    Args:
        input_dim: width of the latents it reads.
        num_codebooks: G.
        codebook_size: V.
        code_dim: width of the output vector (divisible by G).
        temperature: initial Gumbel temperature.
    """

    def __init__(
        self, input_dim: int, num_codebooks: int = 1, codebook_size: int = 1024, code_dim: int = 256,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if code_dim % num_codebooks:
            raise ValueError(f"code_dim={code_dim} is not divisible by num_codebooks={num_codebooks}")
        self.num_codebooks = num_codebooks
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.weight_proj = nn.Linear(input_dim, num_codebooks * codebook_size)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)
        self.codevectors = nn.Parameter(torch.empty(num_codebooks, codebook_size, code_dim // num_codebooks).uniform_())
        self.temperature = float(temperature)

    def set_temperature(self, tau: float) -> None:
        """Set the Gumbel temperature used in training."""
        if not tau > 0:
            raise ValueError(f"Gumbel temperature must be positive, got {tau}")
        self.temperature = float(tau)

    def forward(self, x: Tensor, lengths: Tensor, generator: torch.Generator | None = None) -> QuantizerOutput:
        """``x: (B, T, input_dim)``, ``lengths: (B,)`` -> ``QuantizerOutput``."""
        b, t, _ = x.shape
        g, v = self.num_codebooks, self.codebook_size
        logits = self.weight_proj(x).view(b, t, g, v)
        valid = lengths_to_padding_mask(lengths, t)  # (B, T)
        if self.training:
            u = torch.rand(logits.shape, generator=generator, device=x.device, dtype=torch.float32)
            gumbel = -torch.log(-torch.log(u.clamp(min=1e-10, max=1.0 - 1e-7)))
            soft = torch.softmax((logits.float() + gumbel) / self.temperature, dim=-1)
            ids = soft.argmax(dim=-1)
            hard = F.one_hot(ids, v).to(soft.dtype)
            onehot = (hard - soft.detach() + soft).to(x.dtype)
        else:
            ids = logits.argmax(dim=-1)
            onehot = F.one_hot(ids, v).to(x.dtype)
        # (B, T, G, V) x (G, V, d_g) -> (B, T, G, d_g); the codevectors through a (G*V, d_g) view, so
        # that their gradient comes back with the parameter's strides (the einsum's own gradient has
        # another stride on the size-1 group dim, and DDP warned "Grad strides do not match")
        codevectors = self.codevectors.view(g * v, -1).view(g, v, -1)
        quantized = torch.einsum("btgv,gvd->btgd", onehot, codevectors.to(x.dtype)).reshape(b, t, -1)
        keep = valid.unsqueeze(-1)
        quantized = quantized * keep.to(quantized.dtype)
        ids = ids.masked_fill(~keep, 0)
        n = valid.sum().clamp(min=1).to(torch.float32)
        probs = torch.softmax(logits.float(), dim=-1)
        probs = (probs * valid[:, :, None, None].float()).sum(dim=(0, 1)) / n  # (G, V)
        with torch.no_grad():
            used = torch.zeros(g, v, device=x.device, dtype=torch.bool)
            chosen = ids[valid]  # (N, G)
            used[torch.arange(g, device=x.device).expand_as(chosen), chosen] = True
            code_usage = used.float().mean()
        return QuantizerOutput(quantized=quantized, ids=ids, logits=logits, probs=probs, code_usage=code_usage)
