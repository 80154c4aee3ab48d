"""Pruned RNN-T (k2's approach): simple loss, bounds, pruned loss, warm-up, model switch and the
sub-batched full joiner + loss."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lattice_helpers import alignments

from just_asr.losses.pruned_rnnt import (
    gather_pruned,
    lattice_nll,
    prune_bounds,
    pruned_loss_scales,
    pruned_rnnt_loss,
    pruned_rnnt_loss_from_logits,
    simple_rnnt_loss,
)
from just_asr.losses.rnnt import rnnt_loss
from just_asr.model import JustModel, ModelConfig
from just_asr.model.transducer import Joiner

# ------------------------------------------------------------------------------------------------
# helpers


def rand_problem(seed: int, B: int, T: int, U: int, V: int, t_lens: list[int], u_lens: list[int],
                 dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(1, V, (B, U), generator=g)
    for b, u in enumerate(u_lens):
        targets[b, u:] = 0
    return dict(
        am=torch.randn(B, T, V, generator=g, dtype=dtype),
        lm=torch.randn(B, U + 1, V, generator=g, dtype=dtype),
        targets=targets,
        t_lens=torch.tensor(t_lens),
        u_lens=torch.tensor(u_lens),
    )


def brute_force_nll(logp: torch.Tensor, y: list[int], T: int, U: int, blank: int,
                    allowed=lambda t, u: True) -> float:
    """-log of the summed probability of all alignments whose cells are all ``allowed``.
    ``logp: (T, U+1, V)`` log-probabilities."""
    logp = logp.detach()
    total = []
    for path in alignments(T, U):
        if not all(allowed(t, u) for t, u, _ in path):
            continue
        s = sum(float(logp[t, u, blank if m == "b" else y[u]]) for t, u, m in path)
        total.append(s)
    if not total:
        return math.inf
    return -float(torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0))


def tiny_joiner(seed: int, J: int, V: int, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return Joiner(J, J, J, V).to(dtype)


# ------------------------------------------------------------------------------------------------
# 1. simple loss


@pytest.mark.parametrize("blank", [0, -1])
def test_simple_loss_equals_full_loss_on_am_plus_lm(blank: int) -> None:
    p = rand_problem(0, B=4, T=9, U=5, V=7, t_lens=[9, 6, 4, 1], u_lens=[5, 3, 0, 2])
    if blank == -1:  # labels must avoid the last id, which is blank now
        p["targets"] = p["targets"].clamp(max=5)
        p["targets"][p["targets"] == 0] = 1
    am = p["am"].requires_grad_()
    lm = p["lm"].requires_grad_()
    got = simple_rnnt_loss(am, lm, p["targets"], p["t_lens"], p["u_lens"], blank=blank, reduction="none")
    am2 = p["am"].detach().clone().requires_grad_()
    lm2 = p["lm"].detach().clone().requires_grad_()
    ref = rnnt_loss(am2[:, :, None] + lm2[:, None], p["targets"].int(), p["t_lens"].int(), p["u_lens"].int(),
                    blank=blank, reduction="none", fused_log_softmax=True)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(am.grad, am2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lm.grad, lm2.grad, atol=1e-5, rtol=1e-5)
    # reductions: sum and mean over utterances
    s = simple_rnnt_loss(p["am"], p["lm"], p["targets"], p["t_lens"], p["u_lens"], blank=blank, reduction="sum")
    m = simple_rnnt_loss(p["am"], p["lm"], p["targets"], p["t_lens"], p["u_lens"], blank=blank, reduction="mean")
    torch.testing.assert_close(s, ref.sum(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(m, ref.sum() / 4, atol=1e-5, rtol=1e-5)


def test_simple_loss_survives_underflow_of_the_matrix_product() -> None:
    """am and lm peaked on different symbols: exp-shifted products underflow float32; those cells
    are recomputed exactly (compare against float64 brute force)."""
    p = rand_problem(1, B=2, T=5, U=3, V=6, t_lens=[5, 4], u_lens=[3, 2])
    am = p["am"] * 60.0
    lm = p["lm"] * 60.0
    got = simple_rnnt_loss(am, lm, p["targets"], p["t_lens"], p["u_lens"], reduction="none")
    ref = rnnt_loss((am[:, :, None] + lm[:, None]).double(), p["targets"], p["t_lens"], p["u_lens"], blank=0,
                    reduction="none")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, atol=1e-3, rtol=1e-5)


def test_simple_loss_smoothing_matches_explicit_mixture() -> None:
    p = rand_problem(2, B=3, T=6, U=4, V=5, t_lens=[6, 5, 2], u_lens=[4, 1, 2])
    a, l_ = 0.1, 0.25
    got = simple_rnnt_loss(p["am"], p["lm"], p["targets"], p["t_lens"], p["u_lens"], am_only_scale=a,
                           lm_only_scale=l_, reduction="none")
    joint = torch.log_softmax(p["am"][:, :, None] + p["lm"][:, None], -1)
    mix = (1 - a - l_) * joint + a * torch.log_softmax(p["am"], -1)[:, :, None] + l_ * torch.log_softmax(p["lm"], -1)[:, None]
    ref = rnnt_loss(mix, p["targets"], p["t_lens"], p["u_lens"], blank=0, reduction="none", fused_log_softmax=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_simple_loss_gradients_match_finite_differences() -> None:
    p = rand_problem(3, B=3, T=4, U=3, V=4, t_lens=[4, 3, 2], u_lens=[3, 1, 0], dtype=torch.float64)
    am = p["am"].requires_grad_()
    lm = p["lm"].requires_grad_()

    def f(am: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        return simple_rnnt_loss(am, lm, p["targets"], p["t_lens"], p["u_lens"], am_only_scale=0.1,
                                lm_only_scale=0.2, reduction="mean")

    assert torch.autograd.gradcheck(f, (am, lm), eps=1e-6, atol=1e-6)


def test_occupancy_is_a_posterior() -> None:
    """Node occupancies: each alignment visits T_b + U_b cells, so they sum to T_b + U_b; (0,0) and
    (T_b-1, U_b) have occupancy 1; padding has 0; each frame's occupancy sums to >= 1."""
    p = rand_problem(4, B=3, T=6, U=4, V=5, t_lens=[6, 4, 3], u_lens=[4, 2, 0])
    _, occ = simple_rnnt_loss(p["am"], p["lm"], p["targets"], p["t_lens"], p["u_lens"], return_occupancy=True)
    for b in range(3):
        tb, ub = int(p["t_lens"][b]), int(p["u_lens"][b])
        assert float(occ[b].sum()) == pytest.approx(tb + ub, abs=1e-4)
        assert float(occ[b, 0, 0]) == pytest.approx(1.0, abs=1e-5)
        assert float(occ[b, tb - 1, ub]) == pytest.approx(1.0, abs=1e-5)
        assert float(occ[b, tb:].abs().sum()) == 0.0 and float(occ[b, :, ub + 1:].abs().sum()) == 0.0
        assert (occ[b, :tb].sum(1) >= 1 - 1e-5).all()


# ------------------------------------------------------------------------------------------------
# 2. bounds


def check_bounds(bounds: torch.Tensor, t_lens: torch.Tensor, u_lens: torch.Tensor, S_req: int, U1: int) -> None:
    S = min(S_req, U1)
    for b in range(bounds.size(0)):
        tb, ub = int(t_lens[b]), int(u_lens[b])
        K = max(0, ub + 1 - S)
        s = bounds[b].tolist()
        assert s[0] == 0, s
        assert s[tb - 1] == K, (s, K)
        assert all(0 <= x <= K for x in s), s
        assert all(0 <= s[t + 1] - s[t] <= S - 1 for t in range(tb - 1)), s
        assert all(x == K for x in s[tb:]), s
        # a complete path exists: greedy walk inside the windows
        u = 0
        for t in range(tb):
            lo, hi = s[t], min(s[t] + S - 1, ub)
            assert lo <= u <= hi, (t, u, s)
            u = hi if t == tb - 1 else max(u, s[t + 1])
            assert u <= hi
        assert u == ub


@pytest.mark.parametrize("S", [1, 2, 3, 5, 9])
def test_bounds_are_valid_for_random_inputs(S: int) -> None:
    g = torch.Generator().manual_seed(S)
    for trial in range(25):
        B = 4
        T = int(torch.randint(1, 9, (1,), generator=g))
        U = int(torch.randint(0, 8, (1,), generator=g))
        t_lens = torch.randint(1, T + 1, (B,), generator=g)
        t_lens[0] = T
        u_lens = torch.randint(0, U + 1, (B,), generator=g)
        u_lens[1] = 0
        # feasible: at most S-1 labels per frame (with S clipped to U+1 like prune_bounds does)
        u_lens = torch.minimum(u_lens, (min(S, U + 1) - 1) * t_lens)
        occ = torch.rand(B, T, U + 1, generator=g) ** 4  # arbitrary non-negative scores
        bounds = prune_bounds(occ, t_lens, u_lens, S)
        assert bounds.shape == (B, T) and bounds.dtype == torch.int64
        check_bounds(bounds, t_lens, u_lens, S, U + 1)
        # the pruned loss on these bounds is finite: a complete path is inside the band
        V = 5
        Seff = min(S, U + 1)
        targets = torch.randint(1, V, (B, U), generator=g)
        logits = torch.randn(B, T, Seff, V, generator=g)
        nll = pruned_rnnt_loss_from_logits(logits, targets, bounds, t_lens, u_lens, reduction="none")
        assert torch.isfinite(nll).all(), (trial, nll)


def test_bounds_follow_the_occupancy_when_it_is_feasible() -> None:
    """A diagonal occupancy ridge: the chosen windows are the ones a brute-force search over every
    start picks per frame (and they already satisfy the constraints)."""
    T, U, S = 8, 6, 3
    ridge = [0, 1, 2, 2, 3, 4, 5, 6]
    occ = torch.full((1, T, U + 1), 0.01)
    for t, u in enumerate(ridge):
        occ[0, t, u] = 1.0
        if u + 1 <= U:
            occ[0, t, u + 1] = 0.5
    bounds = prune_bounds(occ, torch.tensor([T]), torch.tensor([U]), S)
    K = U + 1 - S
    brute = []
    for t in range(T):
        sums = [float(occ[0, t, s : s + S].sum()) for s in range(K + 1)]
        best = max(sums)
        brute.append(sums.index(best))
    brute[0], brute[-1] = 0, K
    assert bounds[0].tolist() == brute
    check_bounds(bounds, torch.tensor([T]), torch.tensor([U]), S, U + 1)


def test_bounds_reject_too_many_labels_per_frame() -> None:
    occ = torch.rand(1, 2, 8)
    with pytest.raises(ValueError, match="utterance 0 has U=7 labels in T=2 frames"):
        prune_bounds(occ, torch.tensor([2]), torch.tensor([7]), 3)
    prune_bounds(occ, torch.tensor([2]), torch.tensor([4]), 3)  # 4 <= (3-1)*2: fine


# ------------------------------------------------------------------------------------------------
# 3./4. pruned loss


@pytest.mark.parametrize("S", [4, 6, 10])
def test_pruned_equals_full_when_the_window_covers_everything(S: int) -> None:
    """S >= U+1: nothing is pruned, so the pruned loss is the full RNN-T loss of the same joiner."""
    B, T, U, V, J = 3, 7, 3, 6, 5
    p = rand_problem(5, B, T, U, V, t_lens=[7, 5, 2], u_lens=[3, 1, 0])
    joiner = tiny_joiner(0, J, V)
    g = torch.Generator().manual_seed(7)
    enc = torch.randn(B, T, J, generator=g, requires_grad=True)
    pred = torch.randn(B, U + 1, J, generator=g, requires_grad=True)
    res = pruned_rnnt_loss(joiner.project_encoder(enc), joiner.project_predictor(pred), joiner.join, p["am"], p["lm"],
                           p["targets"], p["t_lens"], p["u_lens"], prune_range=S, reduction="none")
    assert (res.bounds == 0).all()
    enc2 = enc.detach().clone().requires_grad_()
    pred2 = pred.detach().clone().requires_grad_()
    full = rnnt_loss(joiner(enc2[:, :, None], pred2[:, None]), p["targets"], p["t_lens"], p["u_lens"], blank=0,
                     reduction="none")
    torch.testing.assert_close(res.pruned, full, atol=1e-5, rtol=1e-5)
    res.pruned.sum().backward()
    full.sum().backward()
    torch.testing.assert_close(enc.grad, enc2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred.grad, pred2.grad, atol=1e-5, rtol=1e-5)
    # and the simple term is the simple loss
    torch.testing.assert_close(res.simple, simple_rnnt_loss(p["am"], p["lm"], p["targets"], p["t_lens"], p["u_lens"],
                                                            reduction="none"))


def test_pruned_loss_equals_brute_force_over_alignments_inside_the_band() -> None:
    B, T, U, V, J, S = 2, 5, 4, 5, 4, 2
    t_lens, u_lens = [5, 4], [4, 3]
    p = rand_problem(6, B, T, U, V, t_lens=t_lens, u_lens=u_lens)
    joiner = tiny_joiner(1, J, V, torch.float64)
    g = torch.Generator().manual_seed(8)
    enc_p = torch.randn(B, T, J, generator=g, dtype=torch.float64)
    pred_p = torch.randn(B, U + 1, J, generator=g, dtype=torch.float64)
    bounds = torch.tensor([[0, 1, 1, 2, 3], [0, 0, 1, 2, 2]])
    logits = joiner.join(enc_p[:, :, None], gather_pruned(pred_p, bounds, S))  # (B, T, S, V)
    got = pruned_rnnt_loss_from_logits(logits, p["targets"], bounds, p["t_lens"], p["u_lens"], reduction="none")
    full_logp = torch.log_softmax(joiner.join(enc_p[:, :, None], pred_p[:, None]), -1)
    for b in range(B):
        s = bounds[b].tolist()
        ref = brute_force_nll(full_logp[b], p["targets"][b].tolist(), t_lens[b], u_lens[b], 0,
                              allowed=lambda t, u: s[t] <= u < s[t] + S)
        assert float(got[b].detach()) == pytest.approx(ref, rel=1e-9, abs=1e-9)
        unpruned = brute_force_nll(full_logp[b], p["targets"][b].tolist(), t_lens[b], u_lens[b], 0)
        assert ref > unpruned  # pruning removed some probability mass


def test_pruned_loss_gradients_match_finite_differences() -> None:
    """Through the whole pipeline (simple heads, bounds, gather, joiner, pruned lattice), float64."""
    B, T, U, V, J = 2, 5, 4, 5, 3
    p = rand_problem(9, B, T, U, V, t_lens=[5, 3], u_lens=[4, 2], dtype=torch.float64)
    joiner = tiny_joiner(2, J, V, torch.float64)
    g = torch.Generator().manual_seed(10)
    enc = torch.randn(B, T, J, generator=g, dtype=torch.float64, requires_grad=True)
    pred = torch.randn(B, U + 1, J, generator=g, dtype=torch.float64, requires_grad=True)
    am = p["am"].requires_grad_()
    lm = p["lm"].requires_grad_()

    def f(enc, pred, am, lm):
        res = pruned_rnnt_loss(joiner.project_encoder(enc), joiner.project_predictor(pred), joiner.join, am, lm,
                               p["targets"], p["t_lens"], p["u_lens"], prune_range=2, lm_only_scale=0.25)
        return res.simple + res.pruned

    assert torch.autograd.gradcheck(f, (enc, pred, am, lm), eps=1e-6, atol=1e-6)
    # and the lattice alone, with -inf (pruned) cells present
    lpb = torch.randn(2, 4, 3, dtype=torch.float64)
    lpe = torch.randn(2, 4, 3, dtype=torch.float64)
    lpb[0, 1, 0] = float("-inf")
    lpb.requires_grad_()
    lpe.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: lattice_nll(a, b, torch.tensor([4, 3]), torch.tensor([2, 1]))[0].sum(), (lpb, lpe),
        eps=1e-6, atol=1e-6)


def test_reusing_the_logits_storage_for_gradients_changes_nothing() -> None:
    B, T, U, V, J = 3, 6, 4, 7, 5
    p = rand_problem(12, B, T, U, V, t_lens=[6, 4, 5], u_lens=[4, 2, 0])
    joiner = tiny_joiner(3, J, V)
    g = torch.Generator().manual_seed(13)
    enc0 = torch.randn(B, T, J, generator=g)
    pred0 = torch.randn(B, U + 1, J, generator=g)
    grads = []
    for reuse in (False, True):
        joiner.zero_grad()
        enc = enc0.clone().requires_grad_()
        pred = pred0.clone().requires_grad_()
        res = pruned_rnnt_loss(joiner.project_encoder(enc), joiner.project_predictor(pred), joiner.join, p["am"],
                               p["lm"], p["targets"], p["t_lens"], p["u_lens"], prune_range=3,
                               reuse_logits_for_grads=reuse)
        res.pruned.backward()
        grads.append([enc.grad, pred.grad, *[q.grad.clone() for q in joiner.parameters()]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert grads[0][0].abs().sum() > 0


@pytest.mark.parametrize("sub_batch", [1, 2])
def test_pruned_sub_batches_give_identical_loss_and_gradients(sub_batch: int) -> None:
    B, T, U, V, J = 3, 6, 4, 7, 5
    p = rand_problem(21, B, T, U, V, t_lens=[6, 4, 5], u_lens=[4, 2, 0])
    joiner = tiny_joiner(4, J, V)
    g = torch.Generator().manual_seed(22)
    enc0 = torch.randn(B, T, J, generator=g)
    pred0 = torch.randn(B, U + 1, J, generator=g)
    runs = []
    for sb, reuse in ((None, False), (sub_batch, False), (sub_batch, True)):
        joiner.zero_grad()
        enc = enc0.clone().requires_grad_()
        pred = pred0.clone().requires_grad_()
        res = pruned_rnnt_loss(joiner.project_encoder(enc), joiner.project_predictor(pred), joiner.join, p["am"],
                               p["lm"], p["targets"], p["t_lens"], p["u_lens"], prune_range=3,
                               reduction="none", reuse_logits_for_grads=reuse, sub_batch=sb)
        (res.pruned * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        runs.append((res.pruned.detach(), [enc.grad, pred.grad, *[q.grad.clone() for q in joiner.parameters()]]))
    for loss, grads in runs[1:]:
        torch.testing.assert_close(loss, runs[0][0], atol=1e-6, rtol=1e-6)
        for a, b in zip(grads, runs[0][1]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert runs[0][1][0].abs().sum() > 0
    with pytest.raises(ValueError, match="sub_batch"):
        pruned_rnnt_loss(enc0, pred0, joiner.join, p["am"], p["lm"], p["targets"], p["t_lens"], p["u_lens"],
                         prune_range=3, sub_batch=0)


def test_loss_scale_schedule() -> None:
    assert pruned_loss_scales(0, 2000) == (1.0, 0.1)
    s, p = pruned_loss_scales(1000, 2000)
    assert s == pytest.approx(0.75) and p == pytest.approx(0.55)
    assert pruned_loss_scales(2000, 2000) == (0.5, 1.0)
    assert pruned_loss_scales(10**6, 2000, simple_loss_scale=0.3) == (0.3, 1.0)
    assert pruned_loss_scales(0, 0) == (0.5, 1.0)
    with pytest.raises(ValueError):
        pruned_loss_scales(-1, 10)


def test_bad_inputs_are_rejected_clearly() -> None:
    p = rand_problem(11, B=2, T=4, U=3, V=5, t_lens=[4, 3], u_lens=[3, 2])
    with pytest.raises(ValueError, match="targets\\[0, 1\\] = 0 is not a label id"):
        bad = p["targets"].clone()
        bad[0, 1] = 0
        simple_rnnt_loss(p["am"], p["lm"], bad, p["t_lens"], p["u_lens"])
    with pytest.raises(ValueError, match="logit_lengths must lie in"):
        simple_rnnt_loss(p["am"], p["lm"], p["targets"], torch.tensor([5, 3]), p["u_lens"])
    with pytest.raises(ValueError, match="am must be"):
        simple_rnnt_loss(p["am"][0], p["lm"], p["targets"], p["t_lens"], p["u_lens"])
    with pytest.raises(ValueError, match="reduction"):
        simple_rnnt_loss(p["am"], p["lm"], p["targets"], p["t_lens"], p["u_lens"], reduction="avg")


# ------------------------------------------------------------------------------------------------
# model: the rnnt switch and fused_batch_size

VOCAB = 9


def make_cfg(**decoder: Any) -> ModelConfig:
    return ModelConfig.from_dict({
        "frontend": {"conv_channels": 4, "dropout": 0.0},
        "encoder": {"d_model": 16, "num_heads": 2, "ffn_dim": 32, "conv_kernel": 3, "left_max_position": 4,
                    "right_max_position": 2, "dropout": 0.0, "attention_dropout": 0.0},
        "quantizer": {"codebook_size": 8, "code_dim": 8},
        "contrastive": {"num_layers": 1, "final_dim": 8, "num_distractors": 3},
        "mlm": {"num_layers": 1},
        "decoder": {"embed_dim": 8, "hidden_dim": 12, "joint_dim": 10, "dropout": 0.0, **decoder},
        "loss": {"ssl": 0.0},
    })


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feature_lens = torch.tensor([48, 40, 32, 44])
    features = torch.randn(4, 48, 80, generator=g)
    for b in range(4):
        features[b, feature_lens[b]:] = 0.0
    target_lens = torch.tensor([5, 0, 3, 4])
    targets = torch.randint(1, VOCAB, (4, 5), generator=g)
    for b in range(4):
        targets[b, target_lens[b]:] = 0
    return dict(features=features, feature_lens=feature_lens, targets=targets, target_lens=target_lens,
                has_text=torch.tensor([True, False, True, True]))


def test_model_pruned_switch_builds_heads_and_combines_terms() -> None:
    torch.manual_seed(0)
    assert JustModel(make_cfg(), VOCAB).simple_am_proj is None
    model = JustModel(make_cfg(rnnt="pruned", prune_range=2, rnnt_warmup_steps=10), VOCAB).train()
    assert model.simple_am_proj.out_features == VOCAB and model.simple_lm_proj.in_features == 12
    assert "simple_heads" in model.component_parameters()
    batch = make_batch()
    for step, (ss, ps) in ((0, (1.0, 0.1)), (5, (0.75, 0.55)), (10, (0.5, 1.0))):
        model.set_step(step)
        model.zero_grad()
        out = model(**batch)
        assert out.rnnt_logits is None and out.rnnt_scales == pytest.approx((ss, ps))
        loss = out.compute_loss()
        expected = (ss * out.rnnt_simple_nll + ps * out.rnnt_pruned_nll).sum() / 12  # token reduction
        torch.testing.assert_close(loss.terms["rnnt"], expected)
        torch.testing.assert_close(loss.metrics["rnnt_simple"], out.rnnt_simple_nll.sum().detach() / 12)
        torch.testing.assert_close(loss.metrics["rnnt_pruned"], out.rnnt_pruned_nll.sum().detach() / 12)
    loss.total.backward()
    with torch.no_grad():  # validation path: same value without a graph
        again = model(**batch).compute_loss().terms["rnnt"]
    torch.testing.assert_close(again, loss.terms["rnnt"].detach())
    for name, prm in model.named_parameters():
        if name.startswith(("quantizer", "context_proj", "target_proj", "mlm_head", "masker")):
            continue  # ssl is off
        assert prm.grad is not None and torch.isfinite(prm.grad).all() and prm.grad.abs().sum() > 0, name


def test_model_trains_with_pruned_rnnt() -> None:
    torch.manual_seed(0)
    model = JustModel(make_cfg(rnnt="pruned", prune_range=3, rnnt_warmup_steps=0), VOCAB).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = make_batch(1)
    hist = []
    for step in range(25):
        model.set_step(step)
        opt.zero_grad()
        out = model(**batch)
        loss = out.compute_loss()
        loss.total.backward()
        opt.step()
        hist.append((float(loss.total.detach()), float(loss.metrics["rnnt_simple"]), float(loss.metrics["rnnt_pruned"])))
    first, last = hist[0], hist[-1]
    assert last[0] < 0.7 * first[0], hist
    assert last[1] < first[1] and last[2] < first[2], hist


def test_fused_batch_size_gives_identical_loss_and_gradients() -> None:
    torch.manual_seed(0)
    ref_model = JustModel(make_cfg(), VOCAB).eval()
    batch = make_batch(2)
    grads = {}
    losses = {}
    saved_v_tensors = {}
    for fbs in (None, 1, 2):
        model = JustModel(make_cfg(fused_batch_size=fbs), VOCAB).eval()
        model.load_state_dict(ref_model.state_dict())
        seen: list[tuple[int, ...]] = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.dim() == 4 and t.size(-1) == VOCAB:
                seen.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(**batch)
            loss = out.compute_loss().terms["rnnt"]
        loss.backward()
        losses[fbs] = loss.detach()
        grads[fbs] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        saved_v_tensors[fbs] = seen
    for fbs in (1, 2):
        torch.testing.assert_close(losses[fbs], losses[None], atol=1e-6, rtol=1e-6)
        assert grads[fbs].keys() == grads[None].keys() and len(grads[None]) > 10
        for n in grads[None]:
            torch.testing.assert_close(grads[fbs][n], grads[None][n], atol=1e-6, rtol=1e-5)
    # the whole-batch path keeps the (B_text, T', U+1, V) logits for backward; the sub-batched path
    # keeps no vocabulary-sized lattice tensor at all (rebuilt per sub-batch in backward)
    assert any(s[0] == 3 for s in saved_v_tensors[None]), saved_v_tensors[None]
    assert saved_v_tensors[1] == [] and saved_v_tensors[2] == []


JOINER_PATHS = [{}, {"fused_batch_size": 2}, {"rnnt": "pruned", "prune_range": 2, "rnnt_warmup_steps": 0},
                {"rnnt": "pruned", "prune_range": 2, "rnnt_warmup_steps": 0, "fused_batch_size": 1}]


def _rnnt_step(model: JustModel, batch: dict[str, torch.Tensor], bf16: bool):
    """(RNN-T term, joiner output dtypes seen, {param: grad}) of one forward + backward."""
    dtypes: list[torch.dtype] = []
    handle = model.joiner.output.register_forward_hook(lambda _m, _i, o: dtypes.append(o.dtype))
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(**batch)
        loss = out.compute_loss().terms["rnnt"]
    loss.backward()
    handle.remove()
    return loss.detach(), dtypes, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("path", JOINER_PATHS, ids=["full", "full-sub-batched", "pruned", "pruned-sub-batched"])
def test_joiner_precision_autocast_runs_the_joiner_under_the_steps_autocast(path: dict[str, Any]) -> None:
    torch.manual_seed(0)
    ref = JustModel(make_cfg(**path), VOCAB).eval()
    mixed = JustModel(make_cfg(joiner_precision="autocast", **path), VOCAB).eval()
    mixed.load_state_dict(ref.state_dict())
    batch = make_batch(3)
    # without autocast the switch changes nothing: same values, same gradients, float32 joiner
    loss_ref, dt_ref, g_ref = _rnnt_step(ref, batch, bf16=False)
    loss_mix, dt_mix, g_mix = _rnnt_step(mixed, batch, bf16=False)
    assert set(dt_ref) == set(dt_mix) == {torch.float32}
    assert torch.equal(loss_ref, loss_mix)
    assert g_ref.keys() == g_mix.keys() and all(torch.equal(g_ref[n], g_mix[n]) for n in g_ref)
    # under bf16 autocast: the default keeps the joiner in float32, "autocast" runs it in bf16; the
    # loss stays float32 and moves only by bf16 rounding, every joiner gradient is finite and close
    loss_ref, dt_ref, g_ref = _rnnt_step(ref, batch, bf16=True)
    loss_mix, dt_mix, g_mix = _rnnt_step(mixed, batch, bf16=True)
    assert set(dt_ref) == {torch.float32} and set(dt_mix) == {torch.bfloat16}
    assert loss_mix.dtype == torch.float32 and torch.isfinite(loss_mix)
    assert not torch.equal(loss_ref, loss_mix)
    torch.testing.assert_close(loss_mix, loss_ref, rtol=2e-2, atol=0.0)
    for n in g_ref:
        if n.startswith("joiner."):
            assert torch.isfinite(g_mix[n]).all(), n
            cos = torch.nn.functional.cosine_similarity(g_mix[n].flatten(), g_ref[n].flatten(), dim=0)
            assert cos > 0.99, (n, float(cos))


@pytest.mark.parametrize("precision", ["float32", "autocast"])
@pytest.mark.parametrize("path", JOINER_PATHS, ids=["full", "full-sub-batched", "pruned", "pruned-sub-batched"])
def test_encoder_and_predictor_outputs_are_cast_to_float32_at_most_once(path: dict[str, Any], precision: str) -> None:
    """Under bf16 autocast, the float32 consumers of the bf16 encoder/predictor outputs (the float32
    joiner, the pruned loss's simple heads) share one cast: their gradients add up in float32 and
    are rounded to bf16 once (two casts rounded each part and added them in bf16)."""
    torch.manual_seed(0)
    model = JustModel(make_cfg(joiner_precision=precision, **path), VOCAB).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**make_batch(3))
        loss = out.compute_loss().terms["rnnt"]
    assert out.encoder_out.dtype == out.predictor_out.dtype == torch.bfloat16
    casts = {out.encoder_out.grad_fn: 0, out.predictor_out.grad_fn: 0}
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nexts = [n for n, _ in node.next_functions]
        if type(node).__name__ == "ToCopyBackward0":
            for n in nexts:
                if n in casts:
                    casts[n] += 1
        stack.extend(nexts)
    assert set(casts.values()) <= {0, 1}, casts


def test_joiner_precision_autocast_logits_are_the_bf16_joiners_in_float32() -> None:
    """The full path's logits equal the joiner run by hand under bf16 autocast and cast to float32,
    and the RNN-T term is the float32 loss of exactly those logits."""
    torch.manual_seed(0)
    model = JustModel(make_cfg(joiner_precision="autocast"), VOCAB).eval()
    batch = make_batch(4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
        hand = model.joiner(out.encoder_out.unsqueeze(2), out.predictor_out.unsqueeze(1))
        term = out.compute_loss().terms["rnnt"]
    assert hand.dtype == torch.bfloat16 and out.rnnt_logits.dtype == torch.float32
    assert torch.equal(out.rnnt_logits, hand.float())
    nll = rnnt_loss(hand.float(), out.rnnt_targets.int(), out.rnnt_logit_lens.int(), out.rnnt_target_lens.int(),
                    blank=0, reduction="none")
    torch.testing.assert_close(term, nll.sum() / out.rnnt_target_lens.sum(), rtol=1e-6, atol=1e-6)


def test_config_validation_of_new_keys() -> None:
    with pytest.raises(ValueError, match="decoder.prune_range"):
        make_cfg(prune_range=1)
    with pytest.raises(ValueError, match="decoder.fused_batch_size"):
        make_cfg(fused_batch_size=0)
    with pytest.raises(ValueError, match="decoder.rnnt"):
        make_cfg(rnnt="fast")
    with pytest.raises(ValueError, match="decoder.joiner_precision"):
        make_cfg(joiner_precision="bf16")
    cfg = make_cfg(rnnt="pruned", fused_batch_size=4)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
