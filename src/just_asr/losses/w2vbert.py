"""w2v-BERT self-supervised losses: contrastive (wav2vec 2.0 style), codebook diversity, MLM.

All functions are pure tensor functions. They compute in float32 whatever the input dtype
(bf16/fp16 inputs are cast inside; float64 stays float64) and state their reduction.

* :func:`contrastive_loss`: for every masked frame, identify its own quantised target among
  ``K`` distractors drawn from the other masked frames of the same utterance (cosine / κ).
  Reduction: **mean over the eligible masked frames** (masked frames of utterances with at least
  two masked frames) of the cross-entropy with the positive at index 0.
* :func:`diversity_loss`: wav2vec 2.0's codebook diversity term on the batch-averaged code
  distribution ``(G, V)``. Reduction: one value for the whole batch (it is a property of the
  averaged distribution).
* :func:`mlm_loss`: cross-entropy between MLM logits and the quantiser's code ids at masked frames
  only. Reduction: **mean over masked frames** (and over codebooks when ``G > 1``).

Example::

    >>> import torch
    >>> from just_asr.losses import contrastive_loss, mlm_loss
    >>> g = torch.Generator().manual_seed(0)
    >>> c, q = torch.randn(2, 20, 8), torch.randn(2, 20, 8)
    >>> mask = torch.zeros(2, 20, dtype=torch.bool); mask[:, 3:13] = True
    >>> loss, acc = contrastive_loss(c, q, mask, num_distractors=5, generator=g)
    >>> loss.dim(), 0.0 <= float(acc) <= 1.0
    (0, True)
    >>> loss, acc = mlm_loss(torch.randn(2, 20, 16), torch.randint(0, 16, (2, 20)), mask)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ContrastiveOutput",
    "MLMOutput",
    "average_code_probs",
    "codebook_perplexity",
    "contrastive_loss",
    "diversity_loss",
    "mlm_loss",
    "sample_distractors",
]

_COS_EPS = 1e-8


class ContrastiveOutput(NamedTuple):
    """Result of :func:`contrastive_loss` (unpacks as ``loss, accuracy``).

    Attributes:
        loss: float32 scalar, mean over eligible masked frames of the cross-entropy.
        accuracy: float32 scalar, fraction of eligible masked frames whose positive logit is
            strictly greater than every non-excluded distractor logit (0 when no frame is eligible).
    """

    loss: Tensor
    accuracy: Tensor


class MLMOutput(NamedTuple):
    """Result of :func:`mlm_loss` (unpacks as ``loss, accuracy``).

    Attributes:
        loss: float32 scalar, mean over masked (frame, codebook) pairs of the cross-entropy.
        accuracy: float32 scalar, fraction of those pairs whose arg-max logit is the target id.
    """

    loss: Tensor
    accuracy: Tensor


def _float(x: Tensor) -> Tensor:
    """Cast to float32 unless already float32/float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_mask(mask: Tensor, batch: int, frames: int, fn: str) -> None:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{fn}: mask must be a bool tensor (B, T), got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != (batch, frames):
        raise ValueError(f"{fn}: mask must have shape (B, T) = {(batch, frames)}, got {tuple(mask.shape)}")


def sample_distractors(mask: Tensor, num_distractors: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw distractor frame indices for every masked frame.

    Distractors of masked frame ``(b, t)`` are drawn **uniformly with replacement** (as in
    wav2vec 2.0) from the *other* masked frames of utterance ``b``: never ``t`` itself, never an
    unmasked or padding frame, never another utterance.

    Args:
        mask: ``(B, T)`` bool, masked frames (must not include padding).
        num_distractors: ``K >= 1``.
        generator: optional RNG on ``mask.device`` for reproducible draws.

    Returns:
        ``(B, T, K)`` int64 time indices into the same utterance. Rows of frames that are not
        eligible (unmasked frames, and every frame of an utterance with fewer than 2 masked frames,
        where no distractor exists) are filled with ``-1``.
    """
    if num_distractors < 1:
        raise ValueError(f"sample_distractors: num_distractors must be >= 1, got {num_distractors}")
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"sample_distractors: mask must be a bool (B, T) tensor, got {mask.dtype} {tuple(mask.shape)}")
    B, T = mask.shape
    device = mask.device
    n_masked = mask.sum(dim=1)  # (B,)
    # Masked frames first, in time order: rank -> time index.
    rank_to_time = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    rank = torch.cumsum(mask.long(), dim=1) - 1  # (B, T) rank of each masked frame
    u = torch.rand(B, T, num_distractors, generator=generator, device=device)
    span = (n_masked - 1).clamp(min=1).to(u.dtype)[:, None, None]
    j = torch.floor(u * span).long().clamp(max=(n_masked - 2).clamp(min=0)[:, None, None])
    j = j + (j >= rank[:, :, None]).long()  # skip the frame itself
    j = j.clamp(0, T - 1)
    idx = rank_to_time.gather(1, j.view(B, T * num_distractors)).view(B, T, num_distractors)
    eligible = mask & (n_masked >= 2)[:, None]
    return torch.where(eligible[:, :, None], idx, torch.full_like(idx, -1))


def contrastive_loss(
    context: Tensor,
    quantized: Tensor,
    mask: Tensor,
    lengths: Tensor | None = None,
    num_distractors: int = 100,
    kappa: float = 0.1,
    generator: torch.Generator | None = None,
    *,
    distractors: Tensor | None = None,
    classes: Tensor | None = None,
) -> ContrastiveOutput:
    """wav2vec 2.0 / w2v-BERT contrastive loss over masked frames.

    For each masked frame ``(b, t)`` the logits are
    ``[cos(c_bt, q_bt), cos(c_bt, q_{b,d_1}), ..., cos(c_bt, q_{b,d_K})] / kappa`` where the
    ``d_k`` are distractor frames from :func:`sample_distractors` and
    ``cos(x, y) = x·y / (max(|x|, 1e-8) · max(|y|, 1e-8))``. A distractor whose quantised vector
    is exactly equal to the target's (e.g. the same code) gets logit ``-inf``: it is excluded.
    The loss is the cross-entropy with the positive at index 0.

    Frames of an utterance with fewer than 2 masked frames have no possible distractor; they are
    skipped (not counted in the loss or the accuracy). A frame whose distractors are all excluded
    contributes a loss of 0 and counts as correct (its positive is the only candidate).

    Args:
        context: ``(B, T, D)`` contrastive-module outputs (after projection).
        quantized: ``(B, T, D)`` quantised targets. Gradients flow into both inputs.
        mask: ``(B, T)`` bool, masked frames; must not include padding.
        lengths: optional ``(B,)`` valid frames per utterance, used to check that the mask does
            not reach into padding.
        num_distractors: ``K`` distractors per masked frame (drawn with replacement).
        kappa: temperature ``κ > 0`` dividing the cosine similarities.
        generator: optional RNG (on the inputs' device) for the distractor draw.
        distractors: optional precomputed ``(B, T, K)`` indices from :func:`sample_distractors`
            (keyword only; when given, ``num_distractors`` and ``generator`` are ignored).
        classes: optional ``(B, T)`` integer ids with equal ids exactly where the quantised vectors
            of valid frames are equal, e.g. the quantiser's code ids (keyword only). It replaces the
            search for identical vectors (a sort of all ``B·T`` rows of ``quantized``, the costliest
            part of this loss on a GPU); distractors with the target's id are excluded.

    Returns:
        ``ContrastiveOutput(loss, accuracy)``: float32 scalars (float64 for float64 inputs).
        ``loss`` is the **mean over eligible masked frames**; 0 (still connected to the graph)
        when no frame is eligible.
    """
    fn = "contrastive_loss"
    if context.dim() != 3 or quantized.shape != context.shape:
        raise ValueError(
            f"{fn}: context and quantized must both be (B, T, D) of the same shape, got "
            f"{tuple(context.shape)} and {tuple(quantized.shape)}"
        )
    B, T, D = context.shape
    _check_mask(mask, B, T, fn)
    if kappa <= 0:
        raise ValueError(f"{fn}: kappa must be > 0, got {kappa}")
    if lengths is not None:
        if lengths.shape != (B,):
            raise ValueError(f"{fn}: lengths must be (B,) = ({B},), got {tuple(lengths.shape)}")
        beyond = torch.arange(T, device=mask.device)[None, :] >= lengths.to(mask.device)[:, None]
        if bool((mask & beyond).any()):
            b = int((mask & beyond).any(dim=1).nonzero()[0])
            raise ValueError(f"{fn}: mask of utterance {b} covers padding frames (>= lengths[{b}]={int(lengths[b])})")
    if distractors is None:
        distractors = sample_distractors(mask, num_distractors, generator)
    elif distractors.dim() != 3 or distractors.shape[:2] != (B, T):
        raise ValueError(f"{fn}: distractors must be (B, T, K), got {tuple(distractors.shape)}")
    if classes is not None and (classes.shape != (B, T) or classes.is_floating_point()):
        raise ValueError(f"{fn}: classes must be (B, T) integer ids, got {tuple(classes.shape)} {classes.dtype}")

    with torch.autocast(device_type=context.device.type, enabled=False):
        c = _float(context)
        q = _float(quantized).to(c.dtype)
        eligible = (distractors[:, :, 0] >= 0) & mask
        b_idx, t_idx = eligible.nonzero(as_tuple=True)  # (M,)
        if b_idx.numel() == 0:
            zero = (c.sum() + q.sum()) * 0.0
            return ContrastiveOutput(zero, torch.zeros((), dtype=c.dtype, device=c.device))
        cn = c / c.norm(dim=-1, keepdim=True).clamp(min=_COS_EPS)
        qn = q / q.norm(dim=-1, keepdim=True).clamp(min=_COS_EPS)
        d_idx = distractors[b_idx, t_idx]  # (M, K)
        pos = (cn[b_idx, t_idx] * qn[b_idx, t_idx]).sum(-1)  # (M,)
        # Similarities of every frame to every frame of its utterance: (B, T, T); only the
        # sampled (frame, distractor) pairs are read.
        sim = torch.bmm(cn, qn.transpose(1, 2))
        neg = sim[b_idx[:, None], t_idx[:, None], d_idx]  # (M, K)
        with torch.no_grad():
            if classes is None:
                # Exact-equality classes of the quantised vectors: identical vectors share an id.
                _, code = torch.unique(q.detach().reshape(B * T, D), dim=0, return_inverse=True)
                code = code.view(B, T)
            else:
                code = classes.to(c.device)
            same = code[b_idx[:, None], d_idx] == code[b_idx, t_idx][:, None]  # (M, K)
        neg = neg.masked_fill(same, float("-inf"))
        logits = torch.cat([pos[:, None], neg], dim=1) / kappa  # (M, 1+K)
        target = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target, reduction="mean")
        with torch.no_grad():
            correct = logits[:, 0] > logits[:, 1:].max(dim=1).values
            accuracy = correct.to(c.dtype).mean()
    return ContrastiveOutput(loss, accuracy)


def codebook_perplexity(probs: Tensor) -> Tensor:
    """Sum over codebooks of the perplexity ``exp(H_g)`` of the averaged code distribution.

    Args:
        probs: ``(G, V)`` (or ``(V,)`` for one codebook) softmax probabilities averaged over all
            unpadded frames of the batch (see :func:`average_code_probs`).
    Returns:
        float32 scalar in ``[G, G·V]``: ``G`` when each codebook always picks one code,
        ``G·V`` when usage is uniform.
    """
    p = _as_code_probs(probs, "codebook_perplexity")
    # p·log(max(p, tiny)): the same value as xlogy(p, p) (0 at p = 0), but a finite gradient where a
    # code's averaged probability underflows to exactly 0 (a collapsing codebook): xlogy's derivative
    # there is log(0) = -inf, which the softmax backward turns into NaN for every logit.
    entropy = -(p * torch.log(p.clamp(min=torch.finfo(p.dtype).tiny))).sum(dim=-1)  # (G,)
    return torch.exp(entropy).sum()


def diversity_loss(probs: Tensor) -> Tensor:
    """wav2vec 2.0 codebook diversity loss ``(G·V − Σ_g exp(H_g)) / (G·V)``.

    ``H_g = −Σ_v p_gv log p_gv`` is the entropy of codebook ``g``'s averaged usage. The loss is 0
    for uniform usage and ``(G·V − G) / (G·V)`` (its maximum) for collapsed usage.

    Args:
        probs: ``(G, V)`` (or ``(V,)``) softmax probabilities averaged over all unpadded frames.
    Returns:
        float32 scalar; reduction: one value for the batch-averaged distribution.
    """
    p = _as_code_probs(probs, "diversity_loss")
    num = p.size(0) * p.size(1)
    return (num - codebook_perplexity(p)) / num


def average_code_probs(probs: Tensor, lengths: Tensor) -> Tensor:
    """Average per-frame code probabilities over the unpadded frames of a batch.

    Args:
        probs: ``(B, T, G, V)`` or ``(B, T, V)`` softmax probabilities per frame.
        lengths: ``(B,)`` valid frames per utterance; padding frames are ignored.
    Returns:
        ``(G, V)`` float32 mean over the ``Σ_b lengths[b]`` valid frames.
    """
    if probs.dim() == 3:
        probs = probs.unsqueeze(2)
    if probs.dim() != 4:
        raise ValueError(f"average_code_probs: probs must be (B, T, G, V) or (B, T, V), got {tuple(probs.shape)}")
    B, T = probs.shape[:2]
    if lengths.shape != (B,):
        raise ValueError(f"average_code_probs: lengths must be (B,) = ({B},), got {tuple(lengths.shape)}")
    valid = torch.arange(T, device=probs.device)[None, :] < lengths.to(probs.device)[:, None]
    total = valid.sum().clamp(min=1)
    p = _float(probs)
    return (p * valid[:, :, None, None].to(p.dtype)).sum(dim=(0, 1)) / total


def _as_code_probs(probs: Tensor, fn: str) -> Tensor:
    if probs.dim() == 1:
        probs = probs.unsqueeze(0)
    if probs.dim() != 2:
        raise ValueError(f"{fn}: probs must be (G, V) averaged code probabilities, got {tuple(probs.shape)}")
    return _float(probs)


def mlm_loss(logits: Tensor, target_ids: Tensor, mask: Tensor) -> MLMOutput:
    """Masked-prediction cross-entropy on the quantiser's code ids, at masked frames only.

    Args:
        logits: ``(B, T, V)`` for one codebook, or ``(B, T, G, V)`` for ``G`` codebooks.
        target_ids: ``(B, T)`` (one codebook) or ``(B, T, G)`` int64 code ids.
        mask: ``(B, T)`` bool masked frames. Logits at unmasked frames are never read, so they get
            exactly zero gradient.

    Returns:
        ``MLMOutput(loss, accuracy)``: float32 scalars (float64 for float64 logits). ``loss`` is
        the **mean over masked frames (and codebooks)** of the cross-entropy; 0 (still connected
        to the graph) when nothing is masked. ``accuracy`` is the fraction of masked
        (frame, codebook) pairs whose arg-max is the target.
    """
    fn = "mlm_loss"
    if logits.dim() == 3:
        if target_ids.dim() != 2 or target_ids.shape != logits.shape[:2]:
            raise ValueError(
                f"{fn}: with logits (B, T, V) = {tuple(logits.shape)}, target_ids must be (B, T), "
                f"got {tuple(target_ids.shape)}"
            )
    elif logits.dim() == 4:
        if target_ids.dim() != 3 or target_ids.shape != logits.shape[:3]:
            raise ValueError(
                f"{fn}: with logits (B, T, G, V) = {tuple(logits.shape)}, target_ids must be "
                f"(B, T, G), got {tuple(target_ids.shape)}"
            )
    else:
        raise ValueError(f"{fn}: logits must be (B, T, V) or (B, T, G, V), got {tuple(logits.shape)}")
    if target_ids.is_floating_point():
        raise TypeError(f"{fn}: target_ids must be integer code ids, got {target_ids.dtype}")
    B, T = logits.shape[:2]
    V = logits.size(-1)
    _check_mask(mask, B, T, fn)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        sel = _float(logits[mask]).reshape(-1, V)  # (M*G, V): masked frames only
        tgt = target_ids[mask].reshape(-1).long()
        if sel.size(0) == 0:
            zero = _float(logits).sum() * 0.0
            return MLMOutput(zero, torch.zeros((), dtype=zero.dtype, device=zero.device))
        if bool(((tgt < 0) | (tgt >= V)).any()):
            raise ValueError(
                f"{fn}: target_ids at masked frames must lie in [0, {V}), "
                f"got {tgt.min().item()}..{tgt.max().item()}"
            )
        loss = F.cross_entropy(sel, tgt, reduction="mean")
        with torch.no_grad():
            accuracy = (sel.argmax(dim=-1) == tgt).to(sel.dtype).mean()
    return MLMOutput(loss, accuracy)
