"""Pruned RNN-T loss (the k2 / icefall approach, written in plain PyTorch).

The full RNN-T loss needs the joiner's output for every lattice cell, a ``(B, T, U+1, V)`` tensor
(1 GB of float32 at B=16, T=250, U=60, V=1024, plus as much again for its gradient). The pruned
loss of Kuang et al. (2022, "Pruned RNN-T for fast, memory-efficient ASR training") avoids it in
four steps:

1. **Simple loss** (:func:`simple_rnnt_loss`). Two cheap linear heads give ``am: (B, T, V)`` (from
   the encoder) and ``lm: (B, U+1, V)`` (from the predictor); the "simple joiner" is
   ``logits(t, u, v) = am(t, v) + lm(u, v)``, normalised over ``v``. Its log-normaliser is
   computed without the 4-D tensor, as a matrix product of max-shifted exponentials:
   ``log Σ_v exp(am(t,v) + lm(u,v)) = m_am(t) + m_lm(u) + log (exp(am - m_am) @ exp(lm - m_lm)^T)(t, u)``.
   Memory is ``O(B·T·(U+1)) + O(B·(T+U)·V)``. Cells where the product underflows float32 are
   recomputed exactly with a ``logsumexp`` over ``V``. Optionally the lattice log-probabilities
   are smoothed with the am-only / lm-only log-softmaxes (k2's ``rnnt_loss_smoothed``).
2. **Pruning bounds** (:func:`prune_bounds`). The simple lattice's node occupation probabilities
   (the posterior probability that an alignment passes through cell ``(t, u)``; these are what the
   gradient of the simple loss with respect to its lattice log-probabilities is made of) choose,
   for every frame ``t``, a window ``[s_t, s_t + S)`` of ``S = prune_range`` label positions that
   holds the most occupancy. The starts are then made valid: ``s_0 = 0``, ``s_{T-1} = U+1-S`` (the
   window must hold the final cell), ``0 <= s_{t+1} - s_t <= S - 1`` (monotone, and no label can
   be skipped), so the pruned lattice always holds a complete path.
3. **Pruned joiner**: the full joiner only inside the windows, logits ``(B, T, S, V)``
   (:func:`gather_pruned` picks the predictor projections at ``u = s_t + k``).
4. **Pruned loss** (:func:`pruned_rnnt_loss_from_logits`): the ordinary transducer recursion on
   the ``(T, U+1)`` lattice where every cell outside the band is ``-inf``.

:func:`pruned_rnnt_loss` runs all four; :func:`pruned_loss_scales` is icefall's warm-up of the two
terms' weights. The lattice recursions (:func:`lattice_nll`, :mod:`just_asr.losses.lattice`) run
by label columns (``U + 1`` vectorised steps, each a cumulative log-sum-exp over time) with an
analytic gradient, so all costs are ``O(B·T·U)`` apart from the vocabulary-sized products.

Conventions shared with :func:`just_asr.losses.rnnt.rnnt_loss` (torchaudio's semantics): from
``(t, u)`` an alignment moves to ``(t+1, u)`` with blank or to ``(t, u+1)`` emitting ``y_{u+1}``;
it starts at ``(0, 0)`` and ends with the blank that leaves ``(T_b-1, U_b)``. Every loss is the
per-utterance negative log-likelihood (nats), reduced with ``reduction``: ``"none"`` gives ``(B,)``,
``"sum"`` their sum, ``"mean"`` the sum divided by ``B`` (utterances, not frames or tokens).
Padding (``t >= T_b``, ``u > U_b``) never contributes.

Example::

    >>> import torch
    >>> B, T, U, V, J = 2, 6, 3, 7, 5
    >>> am, lm = torch.randn(B, T, V), torch.randn(B, U + 1, V)
    >>> enc_proj, pred_proj = torch.randn(B, T, J), torch.randn(B, U + 1, J)
    >>> out_layer = torch.nn.Linear(J, V)
    >>> join = lambda e, p: out_layer(torch.tanh(e + p))
    >>> targets = torch.tensor([[1, 2, 3], [4, 5, 0]])
    >>> res = pruned_rnnt_loss(enc_proj, pred_proj, join, am, lm, targets, torch.tensor([6, 4]),
    ...                        torch.tensor([3, 2]), prune_range=2)
    >>> tuple(res.bounds.shape), res.simple.dim(), res.pruned.dim()
    ((2, 6), 0, 0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.utils.checkpoint
from torch import Tensor

from just_asr.losses.lattice import forward_backward, lattice_masks

__all__ = [
    "PrunedRNNTOutput",
    "gather_pruned",
    "lattice_nll",
    "prune_bounds",
    "pruned_loss_scales",
    "pruned_rnnt_loss",
    "pruned_rnnt_loss_from_logits",
    "simple_lattice_logprobs",
    "simple_rnnt_loss",
]

_NEG_INF = float("-inf")
# Below this, the float32 matrix-product normaliser has lost too much precision (or underflowed
# to 0): such cells are recomputed exactly with logsumexp over V.
_UNDERFLOW = 1e-30


# ------------------------------------------------------------------------------------------------
# input checks


def _reduce(costs: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return costs
    if reduction == "sum":
        return costs.sum()
    return costs.sum() / max(1, costs.numel())


def _check_reduction(reduction: str, fn: str) -> None:
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"{fn}: reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def _check_lengths(
    fn: str, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, B: int, max_t: int, max_u1: int
) -> tuple[Tensor, Tensor]:
    """Validate ``targets (B, >=U_max)``, ``logit_lengths (B,)`` and ``target_lengths (B,)``;
    return both lengths as int64 on the targets' device."""
    for name, t, dim in (("targets", targets, 2), ("logit_lengths", logit_lengths, 1),
                         ("target_lengths", target_lengths, 1)):
        if not isinstance(t, Tensor) or t.dim() != dim:
            raise ValueError(f"{fn}: {name} must be a {dim}-D tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{fn}: {name} must be an integer tensor, got {t.dtype}")
        if t.size(0) != B:
            raise ValueError(f"{fn}: {name} has batch size {t.size(0)}, expected {B}")
    tl = logit_lengths.to(torch.int64)
    ul = target_lengths.to(torch.int64)
    if B:
        if int(tl.min()) < 1 or int(tl.max()) > max_t:
            raise ValueError(f"{fn}: logit_lengths must lie in [1, {max_t}], got {tl.tolist()}")
        if int(ul.min()) < 0 or int(ul.max()) > min(targets.size(1), max_u1 - 1):
            raise ValueError(
                f"{fn}: target_lengths must lie in [0, min(targets.size(1)={targets.size(1)}, "
                f"U+1-1={max_u1 - 1})], got {ul.tolist()}"
            )
    return tl, ul


def _blank_id(fn: str, blank: int, vocab: int) -> int:
    if not -vocab <= blank < vocab:
        raise ValueError(f"{fn}: blank={blank} is out of range for V={vocab}")
    return blank % vocab


def _padded_targets(fn: str, targets: Tensor, target_lengths: Tensor, max_u1: int, vocab: int, blank: int) -> Tensor:
    """``(B, U+1)`` int64: ``out[b, u] = y_{u+1}`` (the label emitted when leaving column ``u``) for
    ``u < U_b`` and ``blank`` elsewhere (never read there). Rejects ids outside ``[0, V)`` and
    blank inside the valid part."""
    B = targets.size(0)
    out = torch.full((B, max_u1), blank, dtype=torch.int64, device=targets.device)
    n = min(targets.size(1), max_u1 - 1)
    if n > 0:
        tg = targets[:, :n].to(torch.int64)
        inside = torch.arange(n, device=targets.device)[None, :] < target_lengths[:, None]
        bad = inside & ((tg < 0) | (tg >= vocab) | (tg == blank))
        if bool(bad.any()):
            b, u = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{fn}: targets[{b}, {u}] = {int(tg[b, u])} is not a label id (must lie in [0, {vocab}) "
                f"and differ from blank={blank})"
            )
        out[:, :n] = torch.where(inside, tg, torch.full_like(tg, blank))
    return out


# ------------------------------------------------------------------------------------------------
# the lattice: forward-backward (losses.lattice) with an analytic gradient


class _LatticeNLL(torch.autograd.Function):
    """``-log P(y|x)`` per utterance from arc log-probabilities; the gradient with respect to an
    arc's log-probability is minus its posterior occupancy."""

    @staticmethod
    def forward(ctx, lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor):  # type: ignore[override]
        with torch.no_grad():
            log_like, log_node, log_blank, log_emit = forward_backward(
                lp_blank.detach(), lp_emit.detach(), logit_lengths, target_lengths
            )
        ctx.save_for_backward(log_blank, log_emit)
        node = log_node.exp()
        ctx.mark_non_differentiable(node)
        return -log_like, node

    @staticmethod
    def backward(ctx, grad_nll: Tensor, _grad_node: Tensor):  # type: ignore[override]
        log_blank, log_emit = ctx.saved_tensors
        g = grad_nll[:, None, None]
        return -log_blank.exp() * g, -log_emit.exp() * g, None, None


def lattice_nll(
    lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Transducer negative log-likelihood from per-cell arc log-probabilities.

    Args:
        lp_blank: ``(B, T, U+1)`` float, log-probability of blank at cell ``(t, u)``.
        lp_emit: ``(B, T, U+1)`` float, log-probability of emitting ``y_{u+1}`` at ``(t, u)``
            (column ``U`` is never read). ``-inf`` entries remove arcs (used for pruning).
        logit_lengths: ``(B,)`` integer ``T_b`` (``1 <= T_b <= T``).
        target_lengths: ``(B,)`` integer ``U_b`` (``0 <= U_b < U+1``).

    Returns:
        ``(nll, node_occupancy)``: ``nll (B,)`` per-utterance ``-log P`` (``+inf`` when no
        complete path is left; its gradient is then 0), differentiable with respect to both
        log-probability tensors; ``node_occupancy (B, T, U+1)``: the posterior probability that an
        alignment visits each cell (0 on padding), not differentiable. Entries outside each
        utterance's lattice are ignored (set to ``-inf`` inside).
    """
    B, max_t, max_u1 = lp_blank.shape
    if lp_emit.shape != lp_blank.shape:
        raise ValueError(f"lattice_nll: lp_emit {tuple(lp_emit.shape)} and lp_blank {tuple(lp_blank.shape)} differ")
    tl = logit_lengths.to(device=lp_blank.device, dtype=torch.int64)
    ul = target_lengths.to(device=lp_blank.device, dtype=torch.int64)
    if tl.shape != (B,) or ul.shape != (B,):
        raise ValueError(f"lattice_nll: logit_lengths and target_lengths must be ({B},), got "
                         f"{tuple(tl.shape)} and {tuple(ul.shape)}")
    if B and bool((tl < 1).any() | (tl > max_t).any() | (ul < 0).any() | (ul >= max_u1).any()):
        raise ValueError(f"lattice_nll: lengths must satisfy 1 <= T_b <= {max_t} and 0 <= U_b <= {max_u1 - 1} "
                         f"(the lattice is {max_t} x {max_u1}), got T_b {tl.tolist()}, U_b {ul.tolist()}")
    node_ok, emit_ok = lattice_masks(tl, ul, max_t, max_u1)
    lpb = lp_blank.masked_fill(~node_ok, _NEG_INF)
    lpe = lp_emit.masked_fill(~emit_ok, _NEG_INF)
    nll, node = _LatticeNLL.apply(lpb, lpe, tl, ul)
    # alpha also reaches the virtual terminal (T_b, U_b), a padding cell when T_b < T: zero it.
    return nll, node.masked_fill(~node_ok, 0.0)


# ------------------------------------------------------------------------------------------------
# 1. simple loss


def _log_normalisers(am: Tensor, lm: Tensor) -> Tensor:
    """``log Σ_v exp(am[b,t,v] + lm[b,u,v])`` as ``(B, T, U+1)`` without a ``(B, T, U+1, V)`` tensor.

    ``am: (B, T, V)``, ``lm: (B, U+1, V)``. Differentiable. Cells whose max-shifted product is
    below ``_UNDERFLOW`` (lost precision) are recomputed exactly, in chunks of cells.
    """
    am_max = am.detach().amax(dim=-1, keepdim=True)  # (B, T, 1)
    lm_max = lm.detach().amax(dim=-1, keepdim=True)  # (B, U+1, 1)
    am_max = torch.where(torch.isfinite(am_max), am_max, torch.zeros_like(am_max))
    lm_max = torch.where(torch.isfinite(lm_max), lm_max, torch.zeros_like(lm_max))
    prod = torch.bmm((am - am_max).exp(), (lm - lm_max).exp().transpose(1, 2))  # (B, T, U+1)
    norm = prod.clamp_min(_UNDERFLOW).log() + am_max + lm_max.transpose(1, 2)
    low = prod.detach() < _UNDERFLOW
    if bool(low.any()):
        b, t, u = low.nonzero(as_tuple=True)
        vocab = am.size(-1)
        step = max(1, (1 << 20) // max(1, vocab))
        exact = torch.cat([
            torch.logsumexp(am[b[i : i + step], t[i : i + step]] + lm[b[i : i + step], u[i : i + step]], dim=-1)
            for i in range(0, b.numel(), step)
        ])
        norm = norm.index_put((b, t, u), exact)
    return norm


def simple_lattice_logprobs(
    am: Tensor,
    lm: Tensor,
    targets_padded: Tensor,
    blank: int,
    am_only_scale: float = 0.0,
    lm_only_scale: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Blank and emit log-probabilities of the simple joiner ``am(t) + lm(u)``.

    Args:
        am: ``(B, T, V)`` float32 encoder-side scores; lm: ``(B, U+1, V)`` predictor-side scores.
        targets_padded: int64 ``(B, U+1)``, ``y_{u+1}`` per column (any valid id in unused columns).
        blank: non-negative blank id.
        am_only_scale, lm_only_scale: k2's smoothing: the log-probabilities become
            ``(1 - a - l) · log p(v | t, u) + a · log p_am(v | t) + l · log p_lm(v | u)`` where
            ``p_am``/``p_lm`` are the softmaxes of ``am``/``lm`` alone. 0 and 0: plain.

    Returns:
        ``(lp_blank, lp_emit)``, each ``(B, T, U+1)``.
    """
    B, max_t, vocab = am.shape
    max_u1 = lm.size(1)
    norm = _log_normalisers(am, lm)
    idx_t = targets_padded[:, None, :].expand(B, max_t, max_u1)
    am_y = am.gather(2, idx_t)  # (B, T, U+1): am[b, t, y_{u+1}]
    lm_y = lm.gather(2, targets_padded[:, :, None]).squeeze(2)  # (B, U+1)
    lp_emit = am_y + lm_y[:, None, :] - norm
    lp_blank = am[..., blank][:, :, None] + lm[..., blank][:, None, :] - norm
    if am_only_scale or lm_only_scale:
        joint = 1.0 - am_only_scale - lm_only_scale
        lp_emit = joint * lp_emit
        lp_blank = joint * lp_blank
        if am_only_scale:
            am_lse = am.logsumexp(dim=-1)  # (B, T)
            lp_emit = lp_emit + am_only_scale * (am_y - am_lse[:, :, None])
            lp_blank = lp_blank + am_only_scale * (am[..., blank] - am_lse)[:, :, None]
        if lm_only_scale:
            lm_lse = lm.logsumexp(dim=-1)  # (B, U+1)
            lp_emit = lp_emit + lm_only_scale * (lm_y - lm_lse)[:, None, :]
            lp_blank = lp_blank + lm_only_scale * (lm[..., blank] - lm_lse)[:, None, :]
    return lp_blank, lp_emit


def simple_rnnt_loss(
    am: Tensor,
    lm: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    am_only_scale: float = 0.0,
    lm_only_scale: float = 0.0,
    reduction: str = "mean",
    return_occupancy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """RNN-T loss of the "simple" joiner ``logits(t, u, v) = am(t, v) + lm(u, v)`` (log-softmax
    over ``v``), computed without the ``(B, T, U+1, V)`` tensor.

    With ``am_only_scale = lm_only_scale = 0`` this equals
    ``rnnt_loss(am[:, :, None] + lm[:, None], targets, ..., blank=blank, fused_log_softmax=True)``.

    Args:
        am: ``(B, T, V)`` float encoder-side scores (computed in float32, float64 kept).
        lm: ``(B, U+1, V)`` float predictor-side scores (``U+1 >= max(target_lengths) + 1``).
        targets: ``(B, >=U_max)`` integer label ids (no blank inside ``target_lengths``).
        logit_lengths: ``(B,)`` integer ``T_b``; target_lengths: ``(B,)`` integer ``U_b``.
        blank: blank id (negative counts from the end of the vocabulary).
        am_only_scale, lm_only_scale: smoothing, see :func:`simple_lattice_logprobs` (icefall
            uses ``am_only_scale=0``, ``lm_only_scale=0.25``).
        reduction: ``"none"`` ``(B,)`` per-utterance NLL, ``"sum"``, or ``"mean"`` (sum / B).
        return_occupancy: also return the node occupancy ``(B, T, U+1)`` (for :func:`prune_bounds`).

    Returns:
        The loss (float32, or float64 for float64 inputs), or ``(loss, occupancy)``.
    """
    fn = "simple_rnnt_loss"
    _check_reduction(reduction, fn)
    if am.dim() != 3 or lm.dim() != 3 or am.size(0) != lm.size(0) or am.size(2) != lm.size(2):
        raise ValueError(f"{fn}: am must be (B, T, V) and lm (B, U+1, V), got {tuple(am.shape)} and {tuple(lm.shape)}")
    for s, name in ((am_only_scale, "am_only_scale"), (lm_only_scale, "lm_only_scale")):
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"{fn}: {name} must lie in [0, 1], got {s}")
    if am_only_scale + lm_only_scale > 1.0:
        raise ValueError(f"{fn}: am_only_scale + lm_only_scale must be <= 1, got {am_only_scale + lm_only_scale}")
    cd = torch.float64 if am.dtype == torch.float64 else torch.float32
    B, max_t, vocab = am.shape
    max_u1 = lm.size(1)
    blank_id = _blank_id(fn, blank, vocab)
    tl, ul = _check_lengths(fn, targets, logit_lengths, target_lengths, B, max_t, max_u1)
    tl, ul = tl.to(am.device), ul.to(am.device)
    tp = _padded_targets(fn, targets.to(am.device), ul, max_u1, vocab, blank_id)
    with torch.autocast(device_type=am.device.type, enabled=False):
        lp_blank, lp_emit = simple_lattice_logprobs(am.to(cd), lm.to(cd), tp, blank_id, am_only_scale, lm_only_scale)
        nll, occ = lattice_nll(lp_blank, lp_emit, tl, ul)
    loss = _reduce(nll, reduction)
    return (loss, occ) if return_occupancy else loss


# ------------------------------------------------------------------------------------------------
# 2. pruning bounds


def prune_bounds(
    occupancy: Tensor, logit_lengths: Tensor, target_lengths: Tensor, prune_range: int
) -> Tensor:
    """Per-frame window starts ``s_t`` that keep the most occupancy and allow a complete path.

    With ``S = min(prune_range, U+1)`` (``U+1 = occupancy.size(2)``) and ``K_b = max(0, U_b+1-S)``
    (the largest start whose window stays inside the utterance's labels, or 0 when it has fewer
    than ``S`` positions), the returned starts satisfy, for every utterance:

    * ``0 <= s_t <= K_b``;
    * ``s_0 = 0`` and ``s_{T_b-1} = K_b`` (the windows hold ``(0, 0)`` and ``(T_b-1, U_b)``);
    * ``0 <= s_{t+1} - s_t <= S - 1`` (monotone, and the last label of one window's reach is
      inside the next one's, so a path can always cross to the next frame);
    * padded frames ``t >= T_b`` hold ``K_b``.

    Such a sequence exists iff ``K_b <= (S-1)(T_b-1)``, i.e. ``U_b <= (S-1)·T_b`` when
    ``S <= U_b``: at most ``S-1`` labels per frame; otherwise ``ValueError``.

    Method: every feasible sequence lies between ``L_t = max(0, K_b - (S-1)(T_b-1-t))`` and
    ``H_t = min(K_b, (S-1)t)``. For each frame, ``s_t`` is the start in ``[L_t, H_t]`` whose window
    ``[s_t, s_t+S)`` holds the largest node occupancy (ties: the smallest start). Then a running
    maximum makes the starts monotone, and a backward pass raises any ``s_t`` that is more than
    ``S-1`` below ``s_{t+1}``; both steps keep ``L_t <= s_t <= H_t``, so all constraints hold.

    Args:
        occupancy: ``(B, T, U+1)`` float node occupation probabilities (e.g. from
            :func:`simple_rnnt_loss` with ``return_occupancy=True``); padding is ignored.
        logit_lengths: ``(B,)`` integer ``T_b``; target_lengths: ``(B,)`` integer ``U_b``.
        prune_range: ``S >= 2`` (``1`` allowed only when every ``U_b = 0``).

    Returns:
        int64 ``(B, T)`` starts ``s_t``; the window of frame ``t`` is ``s_t + arange(S)``.
    """
    fn = "prune_bounds"
    if occupancy.dim() != 3:
        raise ValueError(f"{fn}: occupancy must be (B, T, U+1), got {tuple(occupancy.shape)}")
    B, max_t, max_u1 = occupancy.shape
    dev = occupancy.device
    tl = logit_lengths.to(device=dev, dtype=torch.int64)
    ul = target_lengths.to(device=dev, dtype=torch.int64)
    if prune_range < 1:
        raise ValueError(f"{fn}: prune_range must be >= 1, got {prune_range}")
    S = min(prune_range, max_u1)
    K = (ul + 1 - S).clamp(min=0)  # (B,)
    bad = K > (S - 1) * (tl - 1)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{fn}: utterance {b} has U={int(ul[b])} labels in T={int(tl[b])} frames: a window of "
            f"prune_range={prune_range} label positions allows at most {prune_range - 1} labels per "
            "frame; raise prune_range or drop the utterance"
        )
    t = torch.arange(max_t, device=dev)[None, :]  # (1, T)
    last = (tl - 1)[:, None]
    lo = (K[:, None] - (S - 1) * (last - t)).clamp(min=0)
    lo = torch.minimum(lo, K[:, None])  # padded frames t > T_b-1: K
    hi = torch.minimum(K[:, None].expand(B, max_t), (S - 1) * t)
    hi = torch.where(t >= last, K[:, None].expand(B, max_t), hi)
    # Window sums over [s, s+S) for s in [0, U+1-S], via a cumulative sum along u.
    occ = occupancy.detach().to(torch.float64)
    csum = torch.nn.functional.pad(occ.cumsum(dim=2), (1, 0))  # (B, T, U+2)
    n_start = max_u1 - S + 1
    win = csum[:, :, S : S + n_start] - csum[:, :, :n_start]  # (B, T, n_start)
    s = torch.arange(n_start, device=dev)[None, None, :]
    allowed = (s >= lo[:, :, None]) & (s <= hi[:, :, None])
    win = win.masked_fill(~allowed, _NEG_INF)
    start = win.argmax(dim=2)  # first maximum: the smallest start on ties
    start = torch.maximum(torch.minimum(start, hi), lo)  # (no-op unless occupancy had NaNs)
    start = start.cummax(dim=1).values
    # raise s_t to max_{t' >= t} (s_{t'} - (S-1)(t'-t)):  z = s - (S-1) t  made non-increasing.
    z = start - (S - 1) * t
    z = z.flip(1).cummax(dim=1).values.flip(1)
    return z + (S - 1) * t


# ------------------------------------------------------------------------------------------------
# 3. pruned joiner input and 4. pruned loss


def _window_index(bounds: Tensor, S: int) -> Tensor:
    return bounds[:, :, None] + torch.arange(S, device=bounds.device)[None, None, :]  # (B, T, S)


def gather_pruned(pred: Tensor, bounds: Tensor, prune_range: int) -> Tensor:
    """Pick predictor-side vectors inside the windows.

    Args:
        pred: ``(B, U+1, J)`` (e.g. ``joiner.project_predictor(predictor_out)``).
        bounds: int64 ``(B, T)`` from :func:`prune_bounds`.
        prune_range: S; clipped to ``U+1`` like :func:`prune_bounds`.

    Returns:
        ``(B, T, S, J)`` with ``out[b, t, k] = pred[b, bounds[b, t] + k]``; join it with the encoder
        side ``(B, T, 1, J)``.
    """
    B, max_u1, J = pred.shape
    S = min(prune_range, max_u1)
    idx = _window_index(bounds, S)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= max_u1):
        raise ValueError(f"gather_pruned: bounds + window reach outside [0, {max_u1}) label positions")
    rows = torch.arange(B, device=pred.device)[:, None, None]
    return pred[rows, idx]


# Rows (cells) of V entries per chunk in the vocabulary-sized passes: bounds the temporaries.
_CHUNK_ELEMENTS = 1 << 21


class _PrunedLogProbs(torch.autograd.Function):
    """Blank and label log-probabilities ``(B, T, S)`` of logits ``(B, T, S, V)`` with a fused,
    chunked log-softmax: the only vocabulary-sized allocation is the gradient itself (or none, with
    ``reuse_logits``: the gradient is written into the logits' storage)."""

    @staticmethod
    def forward(ctx, logits: Tensor, y: Tensor, blank: int, reuse_logits: bool):  # type: ignore[override]
        cd = torch.float64 if logits.dtype == torch.float64 else torch.float32
        vocab = logits.size(-1)
        flat = logits.detach().reshape(-1, vocab)
        lse = torch.empty(flat.size(0), dtype=cd, device=logits.device)
        step = max(1, _CHUNK_ELEMENTS // max(1, vocab))
        for i in range(0, flat.size(0), step):
            lse[i : i + step] = torch.logsumexp(flat[i : i + step].to(cd), dim=-1)
        lse = lse.view(logits.shape[:-1])
        lpb = logits.detach()[..., blank].to(cd) - lse
        lpe = logits.detach().gather(3, y[..., None]).squeeze(3).to(cd) - lse
        ctx.save_for_backward(logits, lse, y)
        ctx.blank, ctx.reuse = blank, reuse_logits
        return lpb, lpe

    @staticmethod
    def backward(ctx, g_b: Tensor, g_e: Tensor):  # type: ignore[override]
        logits, lse, y = ctx.saved_tensors
        vocab = logits.size(-1)
        cd = lse.dtype
        grad = logits.detach() if ctx.reuse else torch.empty_like(logits, memory_format=torch.contiguous_format)
        src = logits.detach().reshape(-1, vocab)
        dst = grad.view(-1, vocab)
        lse_f = lse.reshape(-1, 1)
        g_b_f = g_b.to(cd).reshape(-1, 1)
        g_e_f = g_e.to(cd).reshape(-1, 1)
        y_f = y.reshape(-1, 1)
        step = max(1, _CHUNK_ELEMENTS // max(1, vocab))
        for i in range(0, src.size(0), step):
            x = src[i : i + step].to(cd)
            # d(lpb)/dx = onehot(blank) - softmax(x); d(lpe)/dx = onehot(y) - softmax(x)
            w = (x - lse_f[i : i + step]).exp_().mul_(-(g_b_f[i : i + step] + g_e_f[i : i + step]))
            w[:, ctx.blank] += g_b_f[i : i + step, 0]
            w.scatter_add_(1, y_f[i : i + step], g_e_f[i : i + step])
            dst[i : i + step] = w.to(grad.dtype)
        return grad, None, None, None


def pruned_rnnt_loss_from_logits(
    logits: Tensor,
    targets: Tensor,
    bounds: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = 0,
    reduction: str = "mean",
    *,
    reuse_logits_for_grads: bool = False,
) -> Tensor:
    """Transducer loss on the pruned lattice.

    Args:
        logits: ``(B, T, S, V)`` joiner output at cells ``(t, bounds[b, t] + k)``, ``k < S``
            (unnormalised; log-softmax over ``V`` is applied inside, in float32).
        targets: ``(B, >=U_max)`` integer label ids.
        bounds: int64 ``(B, T)`` window starts (any values the windows fit in ``U+1 = bounds.max()
            + S`` positions; :func:`prune_bounds` gives valid ones).
        logit_lengths: ``(B,)`` integer ``T_b``; target_lengths: ``(B,)`` integer ``U_b``.
        blank: blank id (negative counts from the end).
        reduction: ``"none"`` ``(B,)``, ``"sum"`` or ``"mean"`` (sum / B).
        reuse_logits_for_grads: write the gradient into ``logits``' storage in backward (saves one
            ``(B, T, S, V)`` allocation). Only when nothing else reads ``logits`` after backward
            (true for the output of an ``nn.Linear``, which saves its input, not its output).

    Returns:
        The loss. Cells outside the band (and padding) are ``-inf``: no alignment uses them. An
        utterance whose band holds no complete path gets ``+inf`` (zero gradient).
    """
    fn = "pruned_rnnt_loss_from_logits"
    _check_reduction(reduction, fn)
    if logits.dim() != 4:
        raise ValueError(f"{fn}: logits must be (B, T, S, V), got {tuple(logits.shape)}")
    B, max_t, S, vocab = logits.shape
    if bounds.shape != (B, max_t):
        raise ValueError(f"{fn}: bounds must be (B, T) = {(B, max_t)}, got {tuple(bounds.shape)}")
    blank_id = _blank_id(fn, blank, vocab)
    dev = logits.device
    bounds = bounds.to(device=dev, dtype=torch.int64)
    if B and int(bounds.min()) < 0:
        raise ValueError(f"{fn}: bounds must be >= 0")
    max_u1 = max(int(target_lengths.max()) + 1 if B else 1, (int(bounds.max()) + S) if B else S)
    tl, ul = _check_lengths(fn, targets, logit_lengths, target_lengths, B, max_t, max_u1)
    tl, ul = tl.to(dev), ul.to(dev)
    tp = _padded_targets(fn, targets.to(dev), ul, max_u1, vocab, blank_id)
    cd = torch.float64 if logits.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=dev.type, enabled=False):
        idx = _window_index(bounds, S)  # (B, T, S) label position u of each pruned cell
        rows = torch.arange(B, device=dev)[:, None, None]
        y = tp[rows, idx]  # (B, T, S): y_{u+1}
        lpb_p, lpe_p = _PrunedLogProbs.apply(logits, y, blank_id, bool(reuse_logits_for_grads))
        full = torch.full((B, max_t, max_u1), _NEG_INF, dtype=cd, device=dev)
        lpb = full.scatter(2, idx, lpb_p)
        lpe = full.scatter(2, idx, lpe_p)
        nll, _ = lattice_nll(lpb, lpe, tl, ul)
    return _reduce(nll, reduction)


@dataclass
class PrunedRNNTOutput:
    """Result of :func:`pruned_rnnt_loss`.

    Attributes:
        simple: simple-joiner loss, reduced as asked (``(B,)`` for ``"none"``).
        pruned: pruned full-joiner loss, reduced the same way.
        bounds: int64 ``(B, T)`` window starts used.
    """

    simple: Tensor
    pruned: Tensor
    bounds: Tensor


def pruned_rnnt_loss(
    enc_proj: Tensor,
    pred_proj: Tensor,
    join: Callable[[Tensor, Tensor], Tensor],
    am: Tensor,
    lm: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    prune_range: int = 5,
    blank: int = 0,
    am_only_scale: float = 0.0,
    lm_only_scale: float = 0.0,
    reduction: str = "mean",
    *,
    reuse_logits_for_grads: bool = False,
    sub_batch: int | None = None,
) -> PrunedRNNTOutput:
    """Simple loss, pruning bounds from its occupancies, pruned joiner, pruned loss.

    Args:
        enc_proj: ``(B, T, J)`` encoder side already projected into the joint space.
        pred_proj: ``(B, U+1, J)`` predictor side (on ``blank + targets``) projected likewise.
        join: maps ``enc (B, T, 1, J)`` and ``pred (B, T, S, J)`` to logits ``(B, T, S, V)``
            (e.g. ``Joiner.join``).
        am: ``(B, T, V)`` simple encoder head; lm: ``(B, U+1, V)`` simple predictor head.
        targets, logit_lengths, target_lengths, blank, reduction: as :func:`simple_rnnt_loss`.
        prune_range: window width S (k2's ``s_range``; icefall uses 5).
        am_only_scale, lm_only_scale: smoothing of the simple loss (see
            :func:`simple_lattice_logprobs`).
        reuse_logits_for_grads: let the backward pass write the pruned logits' gradient into their
            own storage (see :func:`pruned_rnnt_loss_from_logits`); safe when ``join`` ends with an
            ``nn.Linear`` (as ``Joiner.join`` does), whose backward does not read its output.
        sub_batch: ``None`` joins the whole batch at once; an integer evaluates the pruned joiner
            and loss over sub-batches of that many utterances (each trimmed to its own longest
            utterance) under activation recomputation, so the ``(b, T, S, V)`` logits and the
            joiner's activations exist for one sub-batch at a time. Values and gradients equal the
            whole-batch computation's.

    Returns:
        :class:`PrunedRNNTOutput` (combine the two terms with :func:`pruned_loss_scales`). The
        bounds are chosen without gradient; both losses are float32 (float64 inputs stay float64).
    """
    if pred_proj.size(1) != lm.size(1):
        raise ValueError(
            f"pruned_rnnt_loss: pred_proj has {pred_proj.size(1)} label positions but lm has {lm.size(1)}"
        )
    simple_nll, occ = simple_rnnt_loss(
        am, lm, targets, logit_lengths, target_lengths, blank=blank, am_only_scale=am_only_scale,
        lm_only_scale=lm_only_scale, reduction="none", return_occupancy=True,
    )
    bounds = prune_bounds(occ, logit_lengths, target_lengths, prune_range)
    _check_reduction(reduction, "pruned_rnnt_loss")
    if sub_batch is None:
        pred_pruned = gather_pruned(pred_proj, bounds, prune_range)  # (B, T, S, J)
        logits = join(enc_proj[:, :, None, :], pred_pruned)
        pruned_nll = pruned_rnnt_loss_from_logits(
            logits, targets, bounds, logit_lengths, target_lengths, blank=blank, reduction="none",
            reuse_logits_for_grads=reuse_logits_for_grads,
        )
        return PrunedRNNTOutput(_reduce(simple_nll, reduction), _reduce(pruned_nll, reduction), bounds)
    if sub_batch < 1:
        raise ValueError(f"pruned_rnnt_loss: sub_batch must be >= 1, got {sub_batch}")
    costs = []
    for i in range(0, enc_proj.size(0), sub_batch):
        t_sub = logit_lengths[i : i + sub_batch]
        u_sub = target_lengths[i : i + sub_batch]
        t_max = int(t_sub.max())
        b_sub = bounds[i : i + sub_batch, :t_max]
        y_sub = targets[i : i + sub_batch]

        def piece(e: Tensor, p: Tensor, b_sub: Tensor = b_sub, y_sub: Tensor = y_sub, t_sub: Tensor = t_sub,
                  u_sub: Tensor = u_sub) -> Tensor:
            logits = join(e[:, :, None, :], gather_pruned(p, b_sub, prune_range))  # (b, T_sub, S, V)
            return pruned_rnnt_loss_from_logits(
                logits, y_sub, b_sub, t_sub, u_sub, blank=blank, reduction="none",
                reuse_logits_for_grads=reuse_logits_for_grads,
            )

        e = enc_proj[i : i + sub_batch, :t_max]
        p = pred_proj[i : i + sub_batch]
        if torch.is_grad_enabled() and (e.requires_grad or p.requires_grad):
            costs.append(torch.utils.checkpoint.checkpoint(piece, e, p, use_reentrant=False))
        else:
            costs.append(piece(e, p))
    pruned_nll = torch.cat(costs)
    return PrunedRNNTOutput(_reduce(simple_nll, reduction), _reduce(pruned_nll, reduction), bounds)


def pruned_loss_scales(
    step: int, warmup_steps: int, simple_loss_scale: float = 0.5, pruned_start: float = 0.1
) -> tuple[float, float]:
    """icefall's warm-up of the two terms (``zipformer/train.py``, ``compute_loss``).

    ``total = simple_scale · simple + pruned_scale · pruned`` where, with ``r = step / warmup_steps``
    for ``step < warmup_steps``: ``simple_scale = 1 - r · (1 - simple_loss_scale)`` (1.0 down to
    ``simple_loss_scale``) and ``pruned_scale = pruned_start + r · (1 - pruned_start)`` (0.1 up to
    1.0); from ``warmup_steps`` on they are ``simple_loss_scale`` and 1.0. icefall's defaults:
    ``simple_loss_scale=0.5``, ``warm_step=2000``. ``warmup_steps = 0`` skips the warm-up.

    Returns:
        ``(simple_scale, pruned_scale)``.
    """
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"pruned_loss_scales: step and warmup_steps must be >= 0, got {step}, {warmup_steps}")
    if step >= warmup_steps:
        return float(simple_loss_scale), 1.0
    r = step / warmup_steps
    return 1.0 - r * (1.0 - simple_loss_scale), pruned_start + r * (1.0 - pruned_start)
