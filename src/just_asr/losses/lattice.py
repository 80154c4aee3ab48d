"""Forward-backward over the transducer lattice: the recursion shared by both RNN-T losses.

From cell ``(t, u)`` an alignment moves to ``(t+1, u)`` with blank (log-probability
``lp_blank[b, t, u]``) or to ``(t, u+1)`` emitting ``y_{u+1}`` (``lp_emit[b, t, u]``); it starts at
``(0, 0)`` and ends with the blank that leaves ``(T_b-1, U_b)`` for the virtual terminal
``(T_b, U_b)``. :func:`forward_backward` returns the log-likelihood and the log posterior
occupancies of nodes and arcs, from which both losses build their analytic gradients.

Two ways to run the recursions:

* **By columns** (the default whenever it applies). Along one label column ``u`` the forward
  recursion is a first-order linear recurrence in the log semiring,
  ``alpha(t, u) = logaddexp(alpha(t-1, u) + blank(t-1, u), y(t))`` with
  ``y(t) = alpha(t, u-1) + emit(t, u-1)``, whose solution is a cumulative log-sum-exp:
  ``alpha(t, u) = C(t) + logcumsumexp_{t' <= t}(y(t') - C(t'))`` with ``C(t)`` the sum of the blank
  log-probabilities ``blank(0..t-1, u)``. The beta recursion is the same in reverse time. So a
  lattice costs about 11 vectorised ops per label position (``U + 1`` steps) instead of 13 per
  anti-diagonal (``T + U`` steps): on a GPU, where each op is a kernel launch that costs the host
  10-20 us, that is about 2,000 launches for the pruned loss's two lattices at B=32 x 15 s where
  the anti-diagonals took ~14,000 (the profiled ``aten::add`` calls per step fell from 4,798 to
  1,202; the step 1.6x faster on an H100: ``BENCHMARKS.md``). It is done in float64, so the
  running sums ``C`` (hundreds of nats at MLS lengths) cost no precision; outputs are cast back. A missing blank arc (``-inf``) cuts the column:
  the closed form holds within one run of present arcs, so it is used when every column holds at
  most one such run (true of the full lattice's padding and of the pruned loss's monotone bands;
  cells outside the run have no blank arc into them, so their value is ``y`` alone) and no running
  sum exceeds ``1e7`` in magnitude (huge finite log-probabilities such as ``-1e30`` used as masks
  would swamp the float64 sums).
* **By anti-diagonals** (every other lattice): all cells with ``t + u = n`` at once, ``T + U``
  steps, in the input dtype.

The two agree to rounding on finite inputs. With NaN inputs both give a NaN likelihood, except
that the column path ignores a NaN on an arc that no alignment can reach (behind a ``-inf`` cut).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["forward_backward", "lattice_masks"]

_NEG_INF = float("-inf")
# Largest |running sum of blank log-probabilities| the column recursion accepts (rounding error
# about 2e-9 nats there); larger ones go to the anti-diagonals.
_MAX_RUNNING_SUM = 1e7


def lattice_masks(logit_lengths: Tensor, target_lengths: Tensor, max_t: int, max_u1: int) -> tuple[Tensor, Tensor]:
    """``(node_ok, emit_ok)``, bool ``(B, T, U+1)``: valid nodes (``t < T_b``, ``u <= U_b``) and
    nodes with an outgoing emit arc (``t < T_b``, ``u < U_b``); on the lengths' device."""
    dev = logit_lengths.device
    t = torch.arange(max_t, device=dev)[None, :, None]
    u = torch.arange(max_u1, device=dev)[None, None, :]
    t_ok = t < logit_lengths[:, None, None]
    return t_ok & (u <= target_lengths[:, None, None]), t_ok & (u < target_lengths[:, None, None])


def forward_backward(
    lp_blank: Tensor,
    lp_emit: Tensor,
    logit_lengths: Tensor,
    target_lengths: Tensor,
    *,
    occupancies: bool = True,
    method: str = "auto",
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Log-likelihood and log posterior occupancies of a transducer lattice.

    Args:
        lp_blank, lp_emit: ``(B, T, U+1)`` float log-probabilities of the blank arc
            ``(t,u)->(t+1,u)`` and of the emit arc ``(t,u)->(t,u+1)``, already ``-inf`` where the arc
            does not exist (padding included: ``t >= T_b`` or ``u > U_b`` for both, ``u = U_b`` for
            emit). Not differentiated (run under ``no_grad``).
        logit_lengths, target_lengths: int64 ``(B,)`` ``T_b`` (``1 <= T_b <= T``) and ``U_b``.
        occupancies: also return the three occupancy tensors (else ``None`` for them; only the
            beta recursion runs).
        method: ``"auto"`` (columns when every column holds at most one run of blank arcs and no
            running sum of blank log-probabilities exceeds ``1e7`` in magnitude, else
            anti-diagonals), ``"columns"`` (raises ``ValueError`` when that does not hold) or
            ``"diagonals"``.

    Returns:
        ``(log_like (B,), log_node, log_blank_occ, log_emit_occ)``, the last three ``(B, T, U+1)``
        in ``lp_blank``'s dtype: the total log-likelihood and the log posterior occupancies of nodes
        and arcs (``-inf`` where zero, and everywhere in a row whose likelihood is 0, i.e. with no
        complete path). The virtual terminal's row ``T_b`` is a padding cell when ``T_b < T``: its
        node occupancy is finite there and callers mask it.
    """
    if method not in ("auto", "columns", "diagonals"):
        raise ValueError(f"forward_backward: method must be 'auto', 'columns' or 'diagonals', got {method!r}")
    if method != "diagonals":
        res = _by_columns(lp_blank, lp_emit, logit_lengths, target_lengths, occupancies)
        if res is not None:
            return res
        if method == "columns":
            raise ValueError(
                "forward_backward: a column holds more than one run of blank arcs, or its blank "
                "log-probabilities sum beyond 1e7 in magnitude; use 'diagonals'"
            )
    return _by_diagonals(lp_blank, lp_emit, logit_lengths, target_lengths, occupancies)


def _result(
    alpha: Tensor | None, beta: Tensor, lpb: Tensor, lpe: Tensor, out_dtype: torch.dtype
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """``forward_backward``'s result from ``beta (B, T+1, U+2)`` (row ``T`` and column ``U+1`` for
    the arcs that leave the lattice) and, for the occupancies, ``alpha (B, T, U+1)``; sums in
    ``alpha``'s dtype (``lpb``/``lpe`` are promoted to it), results in ``out_dtype``."""
    max_t, max_u1 = lpb.shape[1:]
    log_like = beta[:, 0, 0].clone()
    if alpha is None:
        return log_like.to(out_dtype), None, None, None
    # dead: no complete path (log_like = -inf). A NaN likelihood stays NaN everywhere, so that a NaN
    # input surfaces in the loss and the gradient.
    is_dead = log_like == _NEG_INF
    ll = torch.where(is_dead, torch.zeros_like(log_like), log_like)[:, None, None]
    dead = is_dead[:, None, None]

    def occ(x: Tensor, beta_part: Tensor) -> Tensor:  # one temporary in alpha's dtype at a time
        return x.add_(beta_part).sub_(ll).masked_fill_(dead, _NEG_INF).to(out_dtype)

    log_node = occ(alpha.clone(), beta[:, :max_t, :max_u1])
    log_blank = occ(alpha + lpb, beta[:, 1:, :max_u1])
    log_emit = occ(alpha + lpe, beta[:, :max_t, 1:])
    return log_like.to(out_dtype), log_node, log_blank, log_emit


# ------------------------------------------------------------------------------------------------
# by columns


def _by_columns(
    lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor, occupancies: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None] | None:
    B, max_t, max_u1 = lp_blank.shape
    dev = lp_blank.device
    f64 = torch.float64
    # Column-major (U+1, B, T) layouts: each step of the loops works on one contiguous (B, T) slab.
    bc = lp_blank.permute(2, 0, 1)
    cut = bc == _NEG_INF  # blank arc t -> t+1 missing (NaN is not a cut: it propagates)
    run_start = ~cut
    run_start[..., 1:] &= cut[..., :-1]
    n_runs = run_start.sum(-1, dtype=torch.int32)  # (U+1, B)
    # Nodes t = 0..T (T: the row after the last frame, where the virtual terminal of a full-length
    # utterance sits). seg: segment id of each node (cuts before it); the nodes joined by a
    # column's run of blank arcs are those of the run's first arc's segment. The closed form
    # applies to them; every other node is alone (no blank arc into or out of it).
    seg = F.pad(cut.cumsum(-1, dtype=torch.int32), (1, 0))  # (U+1, B, T+1)
    first = run_start.to(torch.uint8).argmax(-1, keepdim=True)  # the run's first arc (0 if none)
    joined = (seg == seg.gather(-1, first)) & (n_runs > 0)[..., None]
    del seg, run_start
    # C(t) = sum of the present blank arcs before node t, in float64; kept only where it is used:
    # -C on the joined nodes for alpha, +C time-reversed for beta (-inf elsewhere).
    csum = F.pad(bc.to(f64, copy=True).masked_fill_(cut, 0.0).cumsum(-1), (1, 0))
    del cut
    csum.masked_fill_(~joined, _NEG_INF)
    # The closed form's rounding error is about 2e-16 |C|: fine for any real lattice (|C| of a few
    # thousand nats), not for masking values such as -1e30 passed as log-probabilities. One sync
    # for both conditions.
    if bool((n_runs > 1).any() | (csum.abs().masked_fill_(~joined, 0.0) > _MAX_RUNNING_SUM).any()):
        return None
    pos_c = csum.flip(-1)  # beta's +C, reversed time
    ec = lp_emit.permute(2, 0, 1).to(f64).contiguous()  # (U+1, B, T)

    alpha = None
    if occupancies:
        neg_c = csum[..., :max_t].neg_().masked_fill_(~joined[..., :max_t], _NEG_INF)  # alpha's -C
        j_a = joined[..., :max_t].contiguous()
        alpha_c = torch.empty(max_u1, B, max_t, dtype=f64, device=dev)
        y = torch.full((B, max_t), _NEG_INF, dtype=f64, device=dev)
        y[:, 0] = 0.0  # the start node
        for u in range(max_u1):
            if u:
                y = alpha_c[u - 1] + ec[u - 1]
            lse = torch.logcumsumexp(y + neg_c[u], dim=-1)
            torch.where(j_a[u], lse - neg_c[u], y, out=alpha_c[u])
        alpha = alpha_c.permute(1, 2, 0)  # (B, T, U+1)
        del j_a, y, neg_c
    del csum

    # beta in reversed time: row r of the flipped tensors is node t = T - r.
    j_r = joined.flip(-1)
    del joined
    ec_r = F.pad(ec, (0, 1), value=_NEG_INF).flip(-1)  # no emit arcs on row T
    del ec
    # the virtual terminal (T_b, U_b) starts the beta recursion with log 1 = 0
    seed = torch.zeros(max_u1, B, max_t + 1, dtype=torch.bool, device=dev)
    rows = torch.arange(B, device=dev)
    seed[target_lengths.to(device=dev, dtype=torch.int64), rows, max_t - logit_lengths.to(device=dev, dtype=torch.int64)] = True
    beta_r = torch.empty(max_u1 + 1, B, max_t + 1, dtype=f64, device=dev)
    beta_r[max_u1] = _NEG_INF  # column U+1: nothing there
    for u in range(max_u1 - 1, -1, -1):
        w = (ec_r[u] + beta_r[u + 1]).masked_fill_(seed[u], 0.0)
        lse = torch.logcumsumexp(w + pos_c[u], dim=-1)
        torch.where(j_r[u], lse - pos_c[u], w, out=beta_r[u])
    del ec_r, pos_c, j_r, seed
    beta = beta_r.flip(-1).permute(1, 2, 0)  # (B, T+1, U+2)
    del beta_r
    return _result(alpha, beta, lp_blank, lp_emit, lp_blank.dtype)


# ------------------------------------------------------------------------------------------------
# by anti-diagonals


def _skew(x: Tensor, fill: float) -> Tensor:
    """``x: (B, T, U+1)`` -> ``(B, T+U, U+1)`` with ``out[b, n, u] = x[b, n-u, u]`` (``fill`` where
    ``n-u`` is outside ``[0, T)``)."""
    B, max_t, max_u1 = x.shape
    n = torch.arange(max_t + max_u1 - 1, device=x.device)[:, None]
    u = torch.arange(max_u1, device=x.device)[None, :]
    t = n - u
    ok = (t >= 0) & (t < max_t)
    out = x[:, t.clamp(0, max_t - 1), u.expand_as(t)]
    return out.masked_fill(~ok, fill)


def _unskew(xs: Tensor, max_t: int, max_u1: int) -> Tensor:
    """Inverse of :func:`_skew` for ``xs: (B, N', U')``: ``out[b, t, u] = xs[b, t+u, u]`` for
    ``t < max_t``, ``u < max_u1``."""
    t = torch.arange(max_t, device=xs.device)[:, None]
    u = torch.arange(max_u1, device=xs.device)[None, :]
    return xs[:, t + u, u.expand(max_t, max_u1)]


def _by_diagonals(
    lp_blank: Tensor, lp_emit: Tensor, logit_lengths: Tensor, target_lengths: Tensor, occupancies: bool
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    B, max_t, max_u1 = lp_blank.shape
    n_diag = max_t + max_u1 - 1
    pb = _skew(lp_blank, _NEG_INF)  # (B, N, U+1)
    pe = _skew(lp_emit, _NEG_INF)
    dev, dt = lp_blank.device, lp_blank.dtype
    tl = logit_lengths.to(device=dev, dtype=torch.int64)
    ul = target_lengths.to(device=dev, dtype=torch.int64)

    # beta(t, u): log-probability of finishing from (t, u); the virtual terminal (T_b, U_b) is 0.
    # one diagonal more than the recursion writes, so that unskewing reaches (T, U+1)
    beta = torch.full((B, n_diag + 2, max_u1 + 1), _NEG_INF, dtype=dt, device=dev)
    term_n = tl + ul  # diagonal of the terminal
    rows = torch.arange(B, device=dev)
    beta[rows, term_n, ul] = 0.0
    zero = torch.zeros((), dtype=dt, device=dev)
    col = torch.arange(max_u1, device=dev)[None, :]
    for n in range(n_diag - 1, -1, -1):
        nxt = beta[:, n + 1]
        val = torch.logaddexp(pb[:, n] + nxt[:, :-1], pe[:, n] + nxt[:, 1:])
        # Keep the terminal's 0 where the terminal lies on this diagonal (it is a padding cell).
        is_term = (term_n[:, None] == n) & (col == ul[:, None])
        beta[:, n, :-1] = torch.where(is_term, zero, val)
    # unskewed (B, T+1, U+2): row T and column U+1 for the arcs that leave the lattice
    beta_u = _unskew(beta, max_t + 1, max_u1 + 1)
    if not occupancies:
        return _result(None, beta_u, lp_blank, lp_emit, dt)

    # alpha(t, u): log-probability of reaching (t, u) from (0, 0).
    alpha = torch.full((B, n_diag, max_u1), _NEG_INF, dtype=dt, device=dev)
    alpha[:, 0, 0] = 0.0
    for n in range(1, n_diag):
        prev = alpha[:, n - 1]
        stay = prev + pb[:, n - 1]
        if max_u1 > 1:
            torch.logaddexp(stay[:, 1:], prev[:, :-1] + pe[:, n - 1, :-1], out=alpha[:, n, 1:])
        alpha[:, n, 0] = stay[:, 0]
    return _result(_unskew(alpha, max_t, max_u1), beta_u, lp_blank, lp_emit, dt)
