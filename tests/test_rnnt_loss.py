"""Tests for just_asr.losses.rnnt_loss against brute-force alignment enumeration and finite
differences.

The reference never uses a recursion: it lists every monotonic path through the (T, U+1)
lattice explicitly (choose which of the T-1+U steps are emissions), sums the log-probabilities
along each path and log-sum-exps the paths. Its gradient comes from autograd in float64.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from just_asr.losses import rnnt_loss

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP wake-ups (slow on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _path_cells(T: int, U: int, y: list[int], blank: int) -> list[tuple[list[int], list[int], list[int]]]:
    """Every alignment as index lists (t, u, v) of the log-probs it multiplies."""
    paths = []
    for emit_steps in itertools.combinations(range(T - 1 + U), U):
        emit = set(emit_steps)
        ts, us, vs = [], [], []
        t = u = 0
        for step in range(T - 1 + U):
            ts.append(t)
            us.append(u)
            if step in emit:
                vs.append(y[u])
                u += 1
            else:
                vs.append(blank)
                t += 1
        ts.append(T - 1)  # the final blank out of (T-1, U)
        us.append(U)
        vs.append(blank)
        assert t == T - 1 and u == U
        paths.append((ts, us, vs))
    return paths


def brute_force_costs(logp: torch.Tensor, targets, t_len, u_len, blank: int) -> torch.Tensor:
    """Negative log-likelihood per utterance by explicit path enumeration.

    Args:
        logp: (B, max_T, max_U+1, V) log-probabilities (already normalised, or raw for the
            non-fused semantics).
    Returns:
        (B,) costs, differentiable w.r.t. ``logp``.
    """
    blank = blank % logp.size(-1)
    costs = []
    for b in range(logp.size(0)):
        T, U = int(t_len[b]), int(u_len[b])
        y = [int(v) for v in targets[b, :U]]
        scores = [logp[b, ts, us, vs].sum() for ts, us, vs in _path_cells(T, U, y, blank)]
        costs.append(-torch.logsumexp(torch.stack(scores), dim=0))
    return torch.stack(costs)


def _make_batch(B, max_t, max_u, V, blank, t_len=None, u_len=None, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, max_t, max_u + 1, V, generator=g, dtype=dtype) * 2
    blank_id = blank % V
    non_blank = [v for v in range(V) if v != blank_id]
    choice = torch.randint(0, len(non_blank), (B, max_u), generator=g)
    targets = torch.tensor(non_blank)[choice].to(torch.int32)
    t_len = torch.full((B,), max_t, dtype=torch.int32) if t_len is None else torch.tensor(t_len, dtype=torch.int32)
    u_len = torch.full((B,), max_u, dtype=torch.int32) if u_len is None else torch.tensor(u_len, dtype=torch.int32)
    # Padding targets hold blank (as the data layer pads with 0): must be ignored.
    pad = torch.arange(max_u)[None, :] >= u_len[:, None]
    targets = targets.masked_fill(pad, blank_id)
    return logits, targets, t_len, u_len


SHAPES = [
    # (B, max_T, max_U, V, t_len, u_len)
    (1, 1, 0, 3, None, None),  # single frame, nothing to emit
    (2, 4, 3, 5, [4, 2], [3, 1]),
    (3, 5, 3, 4, [5, 3, 1], [2, 0, 3]),  # U = 0 and T = 1 in one batch
    (2, 3, 4, 6, [3, 3], [4, 2]),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("blank", [0, -1, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_matches_brute_force_loss_and_grad(shape, blank, fused):
    B, max_t, max_u, V, t_len, u_len = shape
    logits, targets, tl, ul = _make_batch(B, max_t, max_u, V, blank, t_len, u_len, seed=max_t * 7 + V)
    if not fused:
        logits = torch.log_softmax(logits, dim=-1)
    x = logits.clone().requires_grad_()
    costs = rnnt_loss(x, targets, tl, ul, blank=blank, reduction="none", fused_log_softmax=fused)
    assert costs.dtype == F64 and costs.shape == (B,)

    ref_in = logits.clone().requires_grad_()
    ref_lp = torch.log_softmax(ref_in, dim=-1) if fused else ref_in
    ref = brute_force_costs(ref_lp, targets, tl, ul, blank)
    torch.testing.assert_close(costs, ref, rtol=1e-10, atol=1e-10)

    w = torch.arange(1, B + 1, dtype=F64)  # distinct weights: checks per-utterance gradient scaling
    (gx,) = torch.autograd.grad((costs * w).sum(), x)
    (gr,) = torch.autograd.grad((ref * w).sum(), ref_in)
    torch.testing.assert_close(gx, gr, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("fused", [True, False])
def test_reductions_float32(reduction, fused):
    logits, targets, tl, ul = _make_batch(3, 4, 3, 5, -1, [4, 3, 2], [3, 2, 0], seed=3, dtype=torch.float32)
    if not fused:
        logits = torch.log_softmax(logits, dim=-1)
    x = logits.clone().requires_grad_()
    out = rnnt_loss(x, targets, tl, ul, reduction=reduction, fused_log_softmax=fused)
    assert out.dtype == torch.float32
    ref_in = logits.double().requires_grad_()
    per = brute_force_costs(torch.log_softmax(ref_in, -1) if fused else ref_in, targets, tl, ul, -1)
    ref = {"none": per, "sum": per.sum(), "mean": per.sum() / 3}[reduction]
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gr,) = torch.autograd.grad(ref.sum(), ref_in)
    torch.testing.assert_close(gx.double(), gr, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_float64(fused):
    logits, targets, tl, ul = _make_batch(3, 4, 3, 5, 1, [4, 2, 3], [3, 2, 0], seed=11)
    if not fused:
        logits = torch.log_softmax(logits, -1)
    x = logits.clone().requires_grad_()

    def f(inp):
        return rnnt_loss(inp, targets, tl, ul, blank=1, reduction="none", fused_log_softmax=fused)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_float32_central_differences():
    """The float32 path (cast inside) against central differences on a few entries."""
    logits, targets, tl, ul = _make_batch(2, 3, 2, 4, 0, [3, 2], [2, 1], seed=5, dtype=torch.float32)
    x = logits.clone().requires_grad_()
    (g,) = torch.autograd.grad(rnnt_loss(x, targets, tl, ul, blank=0, reduction="sum"), x)
    h = 1e-2
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        b = int(torch.randint(0, 2, (1,), generator=gen))
        t = int(torch.randint(0, int(tl[b]), (1,), generator=gen))
        u = int(torch.randint(0, int(ul[b]) + 1, (1,), generator=gen))
        v = int(torch.randint(0, 4, (1,), generator=gen))
        xp, xm = logits.clone(), logits.clone()
        xp[b, t, u, v] += h
        xm[b, t, u, v] -= h
        f_plus = rnnt_loss(xp, targets, tl, ul, blank=0, reduction="sum")
        f_minus = rnnt_loss(xm, targets, tl, ul, blank=0, reduction="sum")
        fd = (f_plus - f_minus) / (2 * h)
        assert abs(float(fd) - float(g[b, t, u, v])) < 2e-3


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_clamp_matches_clamped_brute_force(fused, reduction):
    clamp = 0.05
    B = 3
    logits, targets, tl, ul = _make_batch(B, 4, 3, 5, -1, [4, 3, 2], [3, 1, 2], seed=21)
    if not fused:
        logits = torch.log_softmax(logits, -1)
    x = logits.clone().requires_grad_()
    out = rnnt_loss(x, targets, tl, ul, clamp=clamp, reduction=reduction, fused_log_softmax=fused)
    unclamped = rnnt_loss(logits, targets, tl, ul, reduction=reduction, fused_log_softmax=fused)
    torch.testing.assert_close(out, unclamped)  # clamping changes the gradient only
    g_out = torch.tensor([1.0, -2.0, 0.5], dtype=F64) if reduction == "none" else torch.tensor(1.0, dtype=F64)
    (gx,) = torch.autograd.grad(out, x, g_out)

    # Reference: per-utterance gradient of the cost, clamped elementwise, then scaled by the
    # incoming gradient of that utterance's cost (torchaudio's order).
    ref_in = logits.clone().requires_grad_()
    per = brute_force_costs(torch.log_softmax(ref_in, -1) if fused else ref_in, targets, tl, ul, -1)
    (g_per,) = torch.autograd.grad(per.sum(), ref_in)  # utterances do not interact
    assert (g_per.abs() > clamp).any(), "the test must exercise clamping"
    scale = g_out if reduction == "none" else torch.full((B,), 1.0 / B, dtype=F64)
    ref = g_per.clamp(-clamp, clamp) * scale.view(B, 1, 1, 1)
    torch.testing.assert_close(gx, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
def test_padding_is_never_read_and_gets_zero_gradient(fused):
    B, max_t, max_u, V = 3, 5, 3, 4
    logits, targets, tl, ul = _make_batch(B, max_t, max_u, V, 0, [5, 2, 3], [1, 3, 0], seed=8, dtype=torch.float32)
    if not fused:
        logits = torch.log_softmax(logits, -1)
    clean = logits.clone()
    t_pad = torch.arange(max_t)[None, :, None] >= tl[:, None, None]
    u_pad = torch.arange(max_u + 1)[None, None, :] > ul[:, None, None]
    pad = (t_pad | u_pad)[..., None].expand_as(logits)
    dirty = logits.masked_fill(pad, float("nan"))
    x = dirty.clone().requires_grad_()
    loss = rnnt_loss(x, targets, tl, ul, blank=0, reduction="sum", fused_log_softmax=fused)
    ref = rnnt_loss(clean, targets, tl, ul, blank=0, reduction="sum", fused_log_softmax=fused)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(g).all()
    assert (g[pad] == 0).all()
    assert (g[~pad] != 0).any()


def test_u_zero_is_blank_only():
    """With U = 0 the only alignment is T blanks: cost = -sum_t log softmax(blank)."""
    logits = torch.randn(2, 4, 1, 6, dtype=F64)
    targets = torch.zeros(2, 0, dtype=torch.int32)
    tl = torch.tensor([4, 2], dtype=torch.int32)
    ul = torch.zeros(2, dtype=torch.int32)
    costs = rnnt_loss(logits, targets, tl, ul, blank=3, reduction="none")
    lp = torch.log_softmax(logits, -1)[..., 0, 3]
    torch.testing.assert_close(costs, torch.stack([-lp[0].sum(), -lp[1, :2].sum()]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_under_autocast_gives_float32(dtype):
    logits, targets, tl, ul = _make_batch(2, 6, 4, 16, -1, [6, 4], [4, 2], seed=2, dtype=torch.float32)
    low = logits.to(dtype)
    x = low.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = rnnt_loss(x, targets, tl, ul)
    assert loss.dtype == torch.float32
    x32 = low.float().requires_grad_()  # the same values, in float32
    ref = rnnt_loss(x32, targets, tl, ul)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(loss, x)
    (g32,) = torch.autograd.grad(ref, x32)
    assert g.dtype == dtype
    torch.testing.assert_close(g.float(), g32, rtol=2e-2, atol=2e-3)


def test_autocast_joiner_output():
    """Logits produced inside autocast (bf16) by a linear layer: float32 loss, grads flow."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 10)
    h = torch.randn(2, 5, 4, 8)
    targets = torch.tensor([[1, 2, 3], [4, 5, 9]], dtype=torch.int32)
    tl, ul = torch.tensor([5, 3], dtype=torch.int32), torch.tensor([3, 1], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(h)
        assert logits.dtype == torch.bfloat16
        loss = rnnt_loss(logits, targets, tl, ul, blank=0)
    assert loss.dtype == torch.float32
    loss.backward()
    ref = rnnt_loss(logits.detach().float(), targets, tl, ul, blank=0)
    torch.testing.assert_close(loss.detach(), ref)
    assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("clamp", [-1.0, 0.05])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reuse_logits_for_grads_same_gradient(fused, clamp, dtype):
    logits, targets, tl, ul = _make_batch(3, 5, 3, 7, 2, [5, 3, 4], [3, 0, 2], seed=4, dtype=torch.float32)
    if not fused:
        logits = torch.log_softmax(logits, -1)
    logits = logits.to(dtype)
    g_out = torch.tensor([1.0, 0.0, -3.0])  # zero and negative weights exercise the scaling

    a = logits.clone().requires_grad_()
    la = rnnt_loss(a, targets, tl, ul, blank=2, clamp=clamp, reduction="none", fused_log_softmax=fused)
    (ga,) = torch.autograd.grad(la, a, g_out)

    leaf = logits.clone().requires_grad_()
    inner = leaf * 1  # a non-leaf whose storage the loss may overwrite, like a joiner output
    lb = rnnt_loss(inner, targets, tl, ul, blank=2, clamp=clamp, reduction="none",
                   fused_log_softmax=fused, reuse_logits_for_grads=True)
    torch.testing.assert_close(la, lb)
    (gb,) = torch.autograd.grad(lb, leaf, g_out)
    torch.testing.assert_close(gb, ga, rtol=0, atol=0)
    # The documented side effect: the caller's logits now hold the gradient.
    torch.testing.assert_close(inner.detach(), ga, rtol=0, atol=0)


def test_weighted_batch_against_independent_single_calls():
    """A batch with ragged lengths equals the utterances computed one by one, unpadded."""
    logits, targets, tl, ul = _make_batch(4, 6, 4, 9, 0, [6, 2, 5, 1], [2, 4, 0, 3], seed=9, dtype=torch.float32)
    x = logits.clone().requires_grad_()
    costs = rnnt_loss(x, targets, tl, ul, blank=0, reduction="none")
    (g,) = torch.autograd.grad(costs.sum(), x)
    for b in range(4):
        T, U = int(tl[b]), int(ul[b])
        xb = logits[b : b + 1, :T, : U + 1].clone().requires_grad_()
        cb = rnnt_loss(xb, targets[b : b + 1, :U], tl[b : b + 1], ul[b : b + 1], blank=0, reduction="none")
        torch.testing.assert_close(costs[b : b + 1], cb)
        (gb,) = torch.autograd.grad(cb.sum(), xb)
        torch.testing.assert_close(g[b : b + 1, :T, : U + 1], gb)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(logits=torch.randn(2, 3, 4)), "4-D"),
        (dict(targets=torch.zeros(2, 3)), "integer"),
        (dict(logit_lengths=torch.tensor([3, 0], dtype=torch.int32)), "logit_lengths"),
        (dict(logit_lengths=torch.tensor([4, 3], dtype=torch.int32)), "logit_lengths"),
        (dict(target_lengths=torch.tensor([4, 1], dtype=torch.int32)), "target_lengths"),
        (dict(targets=torch.tensor([[1, 2, 9], [1, 1, 1]], dtype=torch.int32)), "outside the vocabulary"),
        (dict(targets=torch.tensor([[1, 4, 2], [1, 1, 1]], dtype=torch.int32)), "blank"),
        (dict(blank=5), "blank"),
        (dict(reduction="avg"), "reduction"),
        (dict(target_lengths=torch.tensor([3], dtype=torch.int32)), "batch sizes"),
    ],
)
def test_bad_input_errors(kwargs, match):
    args = dict(
        logits=torch.randn(2, 3, 4, 5),
        targets=torch.tensor([[1, 2, 3], [1, 1, 1]], dtype=torch.int32),
        logit_lengths=torch.tensor([3, 2], dtype=torch.int32),
        target_lengths=torch.tensor([3, 1], dtype=torch.int32),
    )
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        rnnt_loss(**args)


@pytest.mark.parametrize("chunk", [1, 37, 1 << 30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunking_does_not_change_results(monkeypatch, chunk, dtype):
    """Tiny chunks (one time row per chunk, rows wider than the chunk) and one huge chunk agree
    with the brute force."""
    import just_asr.losses.rnnt as rnnt_mod

    logits, targets, tl, ul = _make_batch(3, 5, 3, 6, -1, [5, 2, 4], [3, 1, 0], seed=31, dtype=torch.float32)
    logits = logits.to(dtype)
    ref_in = logits.double().requires_grad_()
    ref = brute_force_costs(torch.log_softmax(ref_in, -1), targets, tl, ul, -1)
    (g_ref,) = torch.autograd.grad(ref.sum(), ref_in)
    monkeypatch.setattr(rnnt_mod, "_CHUNK_ELEMENTS", chunk)
    x = logits.clone().requires_grad_()
    out = rnnt_loss(x, targets, tl, ul, reduction="none")
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(g.double(), g_ref, rtol=tol, atol=tol)


def test_reuse_logits_second_backward_is_refused():
    logits, targets, tl, ul = _make_batch(2, 3, 2, 4, 0, None, None, seed=1, dtype=torch.float32)
    leaf = logits.clone().requires_grad_()
    loss = rnnt_loss(leaf * 1, targets, tl, ul, blank=0, reuse_logits_for_grads=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace|in-place"):
        loss.backward()
