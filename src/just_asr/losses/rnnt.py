"""Full-lattice RNN-T loss, written in PyTorch, with an analytic gradient.

``rnnt_loss`` is a drop-in replacement for ``torchaudio.functional.rnnt_loss``: same arguments, same
meaning, same values and gradients (including torchaudio's gradient clamping and its treatment of
``fused_log_softmax=False``). It is built to be fast and memory-lean on CPU and GPU:

* The log-softmax over the vocabulary is never materialised. The forward pass log-softmaxes one
  chunk of about ``_CHUNK_ELEMENTS`` elements at a time (``logits[b, t0:t1]``, contiguous, with
  PyTorch's fused kernel) into one reused workspace and keeps only the blank and target
  log-probabilities ``(B, T, U+1)`` that the recursions need.
* The forward (alpha) and backward (beta) recursions (:mod:`just_asr.losses.lattice`) run one
  label column at a time for the whole batch, each column a cumulative log-sum-exp over time, so a
  lattice costs ``U + 1`` small vectorised steps instead of ``T · U`` scalar ones.
* A ``torch.autograd.Function`` computes the gradient with respect to the logits analytically in
  one chunked pass: ``softmax(logits) · occupancy(t, u)`` (fused softmax kernel, then one
  multiply), minus the blank and emit arc occupancies at their two entries per cell. The gradient
  is written into a freshly allocated tensor (the only full-size allocation), or, with
  ``reuse_logits_for_grads=True``, straight into the caller's logits storage.
* The log-softmax and gradient passes are float32 (float64 if the logits are float64, which is
  useful for ``torch.autograd.gradcheck``), the lattice recursions float64 (or the logits' dtype
  on the rare lattices that fall back to anti-diagonals); bf16/fp16 logits and autocast are
  handled by casting inside, and the loss is float32 (float64 for float64 logits).
* A NaN log-probability makes that utterance's loss and gradient NaN; an utterance with no
  complete path (only possible with ``-inf`` log-probabilities) gets ``+inf`` and zero gradient.

Example::

    >>> import torch
    >>> from just_asr.losses import rnnt_loss
    >>> logits = torch.randn(2, 5, 4, 7, requires_grad=True)      # (B, T, U+1, V)
    >>> targets = torch.tensor([[1, 2, 3], [4, 5, 0]], dtype=torch.int32)
    >>> loss = rnnt_loss(logits, targets, torch.tensor([5, 3]), torch.tensor([3, 2]), blank=0)
    >>> loss.backward()
    >>> tuple(logits.grad.shape)
    (2, 5, 4, 7)
"""

from __future__ import annotations

import torch
from torch import Tensor

from just_asr.losses.lattice import forward_backward, lattice_masks

__all__ = ["rnnt_loss"]

# Elements of the logits tensor processed per chunk in the vocabulary-sized passes. 2**23 float32
# elements are 32 MiB: few enough chunks that per-chunk overhead (Python, and an OpenMP barrier
# per kernel, which is costly on a busy machine) is negligible, while the one chunk-sized
# workspace stays a few percent of a (B, T, U+1, V) tensor.
_CHUNK_ELEMENTS = 1 << 23

_NEG_INF = float("-inf")


def rnnt_loss(
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int = -1,
    clamp: float = -1,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
    *,
    reuse_logits_for_grads: bool = False,
) -> Tensor:
    """RNN-T loss (Graves 2012) over the full ``(T, U+1)`` lattice, torchaudio-compatible.

    Args:
        logits: ``(B, max_T, max_U+1, V)`` joiner outputs (float32, float64, float16 or bfloat16).
            With ``fused_log_softmax=True`` (default) these are unnormalised scores and the
            log-softmax over ``V`` is applied inside; with ``False`` the caller has already applied
            ``log_softmax`` and the values are used as log-probabilities as they are.
        targets: ``(B, max_U)`` integer token ids (int32 as in torchaudio; int64 is accepted).
            Positions at or beyond ``target_lengths[b]`` are padding and are never read.
        logit_lengths: ``(B,)`` integer number of valid frames ``T_b`` per utterance, ``1 <= T_b
            <= max_T``.
        target_lengths: ``(B,)`` integer number of target tokens ``U_b`` per utterance, ``0 <= U_b
            <= max_U`` and ``U_b + 1 <= logits.size(2)``. ``U_b = 0`` (all-blank) is allowed.
        blank: blank id; negative values count from the end (``-1`` is ``V - 1``), as in
            torchaudio.
        clamp: if ``> 0``, every element of each utterance's gradient with respect to the logits
            is clamped to ``[-clamp, clamp]`` before it is multiplied by the incoming gradient
            (torchaudio's semantics). The loss value is unaffected.
        reduction: ``"none"`` returns the per-utterance negative log-likelihood ``(B,)``;
            ``"sum"`` returns its sum; ``"mean"`` returns the sum divided by ``B`` (the number of
            utterances, not of frames or tokens), exactly like torchaudio.
        fused_log_softmax: see ``logits``. With ``False`` the gradient is the exact gradient with
            respect to the given log-probabilities: non-zero only at the blank and target entries
            of cells the alignments pass through.
        reuse_logits_for_grads: opt-in memory saver (keyword only). When ``True``, the backward
            pass writes the gradient **into the storage of ``logits``**, overwriting the caller's
            logits, and hands that tensor on as the gradient. This removes the only full-size
            allocation of the loss (extra peak memory drops from about 1.0x to a few percent of
            the logits tensor). Use it only when nothing reads ``logits`` after ``backward()``
            (true for a joiner's output: ``nn.Linear`` saves its input, not its output). Calling
            backward twice through the same graph then fails with autograd's in-place error.

    Returns:
        float32 loss (float64 if ``logits`` is float64): shape ``(B,)`` for ``reduction="none"``,
        else a scalar. Padding (frames ``t >= T_b``, cells ``u > U_b``) never contributes to the
        loss, and its gradient is exactly zero.

    Differences from torchaudio (supersets only): ``logits.size(1)`` may exceed
    ``max(logit_lengths)`` and ``logits.size(2)`` may exceed ``max(target_lengths) + 1`` (extra
    padding is ignored); int64 targets/lengths and bfloat16/float64 logits are accepted; targets
    equal to ``blank`` inside ``target_lengths`` are rejected with an error; the loss of
    float16/bfloat16 logits is float32 (torchaudio returns the logits' dtype).
    """
    if reduction not in ("none", "sum", "mean"):
        raise ValueError(f"rnnt_loss: reduction must be 'none', 'sum' or 'mean', got {reduction!r}")
    blank_id = _check_inputs(logits, targets, logit_lengths, target_lengths, blank)
    costs = _RNNTLossFunction.apply(
        logits,
        targets,
        logit_lengths,
        target_lengths,
        blank_id,
        float(clamp),
        bool(fused_log_softmax),
        bool(reuse_logits_for_grads),
    )
    if reduction == "sum":
        return costs.sum()
    if reduction == "mean":
        return costs.mean()
    return costs


def _check_inputs(
    logits: Tensor, targets: Tensor, logit_lengths: Tensor, target_lengths: Tensor, blank: int
) -> int:
    """Validate shapes, dtypes and ranges; return the non-negative blank id."""
    if not isinstance(logits, Tensor) or logits.dim() != 4:
        raise ValueError(
            "rnnt_loss: logits must be a 4-D tensor (B, max_T, max_U+1, V), got "
            f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"rnnt_loss: logits must be floating point, got {logits.dtype}")
    for name, t, dim in (
        ("targets", targets, 2),
        ("logit_lengths", logit_lengths, 1),
        ("target_lengths", target_lengths, 1),
    ):
        if not isinstance(t, Tensor) or t.dim() != dim:
            raise ValueError(f"rnnt_loss: {name} must be a {dim}-D tensor, got {getattr(t, 'shape', t)}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"rnnt_loss: {name} must be an integer tensor (int32), got {t.dtype}")
    B, max_t, max_u1, vocab = logits.shape
    if targets.size(0) != B or logit_lengths.size(0) != B or target_lengths.size(0) != B:
        raise ValueError(
            "rnnt_loss: batch sizes differ: logits "
            f"{B}, targets {targets.size(0)}, logit_lengths {logit_lengths.size(0)}, "
            f"target_lengths {target_lengths.size(0)}"
        )
    if vocab < 1 or max_t < 1 or max_u1 < 1:
        raise ValueError(f"rnnt_loss: logits has an empty dimension: {tuple(logits.shape)}")
    if not -vocab <= blank < vocab:
        raise ValueError(f"rnnt_loss: blank={blank} is out of range for V={vocab}")
    blank_id = blank % vocab
    if B == 0:
        return blank_id
    t_len = logit_lengths.detach().to("cpu", torch.int64)
    u_len = target_lengths.detach().to("cpu", torch.int64)
    if int(t_len.min()) < 1 or int(t_len.max()) > max_t:
        raise ValueError(
            f"rnnt_loss: logit_lengths must lie in [1, logits.size(1)={max_t}], got {t_len.tolist()}"
        )
    if int(u_len.min()) < 0 or int(u_len.max()) > targets.size(1) or int(u_len.max()) + 1 > max_u1:
        raise ValueError(
            "rnnt_loss: target_lengths must lie in [0, min(targets.size(1)="
            f"{targets.size(1)}, logits.size(2)-1={max_u1 - 1})], got {u_len.tolist()}"
        )
    if targets.size(1) > 0:
        pos = torch.arange(targets.size(1))
        inside = pos[None, :] < u_len[:, None]
        tg = targets.detach().to("cpu", torch.int64)
        bad = inside & ((tg < 0) | (tg >= vocab))
        if bool(bad.any()):
            b, u = (int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"rnnt_loss: targets[{b}, {u}] = {int(tg[b, u])} is outside the vocabulary [0, {vocab})"
            )
        is_blank = inside & (tg == blank_id)
        if bool(is_blank.any()):
            b, u = (int(i) for i in is_blank.nonzero()[0])
            raise ValueError(
                f"rnnt_loss: targets[{b}, {u}] equals the blank id {blank_id}; blank may only "
                "appear as padding beyond target_lengths"
            )
    return blank_id


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_rows(max_u1: int, vocab: int) -> int:
    """Time steps per chunk: a chunk is ``logits[b, t0:t0+rows]``, i.e. ``rows·(max_U+1)·V``
    elements (at least one time step)."""
    return max(1, _CHUNK_ELEMENTS // max(1, max_u1 * vocab))


def _workspace(logits: Tensor, cd: torch.dtype) -> Tensor:
    """One chunk-sized scratch buffer ``(rows, max_U+1, V)`` in the compute dtype."""
    _, max_t, max_u1, vocab = logits.shape
    rows = min(_chunk_rows(max_u1, vocab), max_t)
    return torch.empty(rows, max_u1, vocab, dtype=cd, device=logits.device)


def _chunked_log_probs(
    logits: Tensor, tgt: Tensor, blank: int, t_len: list[int], cd: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Blank and target log-probabilities via a chunked log-softmax over V.

    Each chunk ``logits[b, t0:t1]`` (all ``max_U+1`` columns, so the chunk is contiguous and
    PyTorch's fused last-dim kernel runs without copies) is log-softmaxed into one reused
    workspace, and only the blank and target entries are kept: no full-size temporary exists.
    Frames ``t >= T_b`` are never read; columns ``u > U_b`` are computed but masked by the caller.

    Args:
        logits: ``(B, max_T, max_U+1, V)``.
        tgt: ``(B, max_U+1)`` int64 target id of the emit arc leaving each column (0 if none).
    Returns:
        ``lpb, lpe``: ``(B, max_T, max_U+1)`` in ``cd`` (zeros at frames ``t >= T_b``).
    """
    B, max_t, max_u1, vocab = logits.shape
    lpb = torch.zeros(B, max_t, max_u1, dtype=cd, device=logits.device)
    lpe = torch.zeros_like(lpb)
    work = _workspace(logits, cd)
    step = work.size(0)
    for b in range(B):
        tb = t_len[b]
        for t0 in range(0, tb, step):
            x = logits[b, t0 : min(t0 + step, tb)]
            w = work[: x.size(0)]
            if x.dtype != cd:  # bf16/fp16: convert into the workspace, then work in place
                w.copy_(x)
                x = w
            torch.log_softmax(x, dim=-1, out=w)
            lpb[b, t0 : t0 + w.size(0)] = w[..., blank]
            idx = tgt[b][None, :, None].expand(w.size(0), max_u1, 1)
            lpe[b, t0 : t0 + w.size(0)] = w.gather(2, idx).squeeze(2)
    return lpb, lpe


class _RNNTLossFunction(torch.autograd.Function):
    """Per-utterance RNN-T costs ``(B,)`` with an analytic gradient for ``logits``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: Tensor,
        targets: Tensor,
        logit_lengths: Tensor,
        target_lengths: Tensor,
        blank: int,
        clamp: float,
        fused: bool,
        reuse_logits: bool,
    ) -> Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return _forward(ctx, logits, targets, logit_lengths, target_lengths, blank, clamp, fused, reuse_logits)

    @staticmethod
    def backward(ctx, grad_costs: Tensor):  # type: ignore[override]
        with torch.autocast(device_type=grad_costs.device.type, enabled=False):
            grad = _backward(ctx, grad_costs)
        return grad, None, None, None, None, None, None, None


def _forward(
    ctx,
    logits: Tensor,
    targets: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    blank: int,
    clamp: float,
    fused: bool,
    reuse_logits: bool,
) -> Tensor:
    cd = _compute_dtype(logits.dtype)
    device = logits.device
    B, max_t, max_u1, vocab = logits.shape
    if B == 0:
        ctx.empty = True
        return torch.zeros(0, dtype=cd, device=device)
    ctx.empty = False
    t_len = [int(x) for x in logit_lengths.tolist()]
    u_len = [int(x) for x in target_lengths.tolist()]
    u1_len = [u + 1 for u in u_len]

    ul = target_lengths.to(device=device, dtype=torch.int64)
    # (B, T, U+1): lattice nodes, and nodes with an outgoing emit arc
    valid, emit_ok = lattice_masks(logit_lengths.to(device=device, dtype=torch.int64), ul, max_t, max_u1)

    # Target id of the emit arc leaving each column u (0 where there is none; never read then).
    tgt = torch.zeros(B, max_u1, dtype=torch.int64, device=device)
    n_tgt = min(targets.size(1), max_u1 - 1)
    if n_tgt > 0:
        tg = targets[:, :n_tgt].to(device=device, dtype=torch.int64)
        inside = torch.arange(n_tgt, device=device)[None, :] < ul[:, None]
        tgt[:, :n_tgt] = torch.where(inside, tg, torch.zeros_like(tg))

    with torch.no_grad():
        if fused:
            lpb, lpe = _chunked_log_probs(logits, tgt, blank, t_len, cd)
        else:  # the inputs already are log-probabilities
            lpb = logits[..., blank].to(cd)
            lpe = logits.gather(3, tgt[:, None, :, None].expand(B, max_t, max_u1, 1)).squeeze(3).to(cd)
        lpb = lpb.masked_fill(~valid, _NEG_INF)
        lpe = lpe.masked_fill(~emit_ok, _NEG_INF)
        log_like, log_occ, log_blank, log_emit = forward_backward(
            lpb, lpe, logit_lengths, target_lengths, occupancies=ctx.needs_input_grad[0]
        )
        costs = -log_like

        if ctx.needs_input_grad[0]:
            # the virtual terminal (T_b, U_b) is a padding cell when T_b < T: no occupancy there
            log_occ = log_occ.masked_fill(~valid, _NEG_INF)
            ctx.save_for_backward(logits, log_occ, log_blank, log_emit, tgt)
            ctx.meta = (t_len, u1_len, blank, clamp, fused, reuse_logits, cd)
    return costs


def _backward(ctx, grad_costs: Tensor) -> Tensor | None:
    if ctx.empty:
        return None
    logits, log_occ, log_blank, log_emit, tgt = ctx.saved_tensors
    t_len, u1_len, blank, clamp, fused, reuse_logits, cd = ctx.meta
    B, max_t, max_u1, vocab = logits.shape
    g = grad_costs.detach().to(cd)
    # Index of the target entry of every cell, (B, T, U+1) after broadcasting. Advanced indexing
    # instead of gather/scatter_: scatter_ on bf16 allocates a float32 copy of the whole tensor.
    dev = logits.device
    target_entry = (
        torch.arange(B, device=dev)[:, None, None],
        torch.arange(max_t, device=dev)[None, :, None],
        torch.arange(max_u1, device=dev)[None, None, :],
        tgt[:, None, :],
    )
    grad = logits if reuse_logits else torch.empty_like(logits, memory_format=torch.contiguous_format)
    # Without clamping the incoming gradient is folded into the per-cell factors; with clamping
    # torchaudio clamps the per-utterance gradient first and scales afterwards.
    scale_now = clamp <= 0
    gv = g[:, None, None]
    occ = log_occ.exp()
    blank_occ = log_blank.exp()
    emit_occ = log_emit.exp()
    if scale_now:
        occ, blank_occ, emit_occ = occ * gv, blank_occ * gv, emit_occ * gv

    if not fused:
        # d cost / d logprob is minus the occupancy of the arcs that use that log-prob.
        grad.zero_()
        vals_b = -blank_occ
        vals_e = -emit_occ
        if not scale_now:
            vals_b = vals_b.clamp(-clamp, clamp) * gv
            vals_e = vals_e.clamp(-clamp, clamp) * gv
        grad[..., blank] = vals_b.to(grad.dtype)
        # Cells without an emit arc add 0 onto index 0, which already holds 0.
        cur = grad[target_entry].to(cd)
        grad[target_entry] = (cur + vals_e).to(grad.dtype)
        return grad

    # softmax(logits) * occupancy, chunk by chunk, with PyTorch's fused last-dim softmax.
    work = _workspace(logits, cd) if logits.dtype != cd else None
    step = _chunk_rows(max_u1, vocab)
    for b in range(B):
        tb, ub1 = t_len[b], u1_len[b]
        for t0 in range(0, tb, step):
            t1 = min(t0 + step, tb)
            s = logits[b, t0:t1]
            d = grad[b, t0:t1]
            if work is None:
                torch.softmax(s, dim=-1, out=d)  # in place when d is s (reuse_logits_for_grads)
                d.mul_(occ[b, t0:t1, :, None])
            else:  # bf16/fp16: compute in the float workspace, store once
                w = work[: t1 - t0]
                w.copy_(s)
                torch.softmax(w, dim=-1, out=w)
                w.mul_(occ[b, t0:t1, :, None])
                d.copy_(w)
        # Padding gets exactly zero gradient (whatever the padding logits held).
        if tb < max_t:
            grad[b, tb:].zero_()
        if ub1 < max_u1:
            grad[b, :tb, ub1:].zero_()

    # Subtract the arc occupancies at the blank and target entries (in cd, then store).
    gb = grad[..., blank]
    gb.copy_(gb.to(cd) - blank_occ)
    cur = grad[target_entry].to(cd)
    grad[target_entry] = (cur - emit_occ).to(grad.dtype)
    if not scale_now:
        grad.clamp_(-clamp, clamp)
        grad.mul_(g.view(B, 1, 1, 1).to(grad.dtype))
    return grad
