"""Tests for the w2v-BERT losses: contrastive (against a naive per-frame loop with the same sampled
distractors), diversity / perplexity (hand values), MLM (masked frames only)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from just_asr.losses import (
    average_code_probs,
    codebook_perplexity,
    contrastive_loss,
    diversity_loss,
    mlm_loss,
    sample_distractors,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add OpenMP wake-ups (slow on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _mask(rows: list[list[int]], T: int) -> torch.Tensor:
    m = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, ts in enumerate(rows):
        m[b, ts] = True
    return m


# --------------------------------------------------------------------------- distractor sampling


def test_sample_distractors_draws_only_other_masked_frames_of_same_utterance():
    T, K = 12, 50
    mask = _mask([[1, 2, 3, 7, 8], [4], [], [0, 11]], T)
    g = torch.Generator().manual_seed(0)
    idx = sample_distractors(mask, K, g)
    assert idx.shape == (4, T, K) and idx.dtype == torch.int64
    for b in range(4):
        masked = set(mask[b].nonzero().flatten().tolist())
        for t in range(T):
            row = idx[b, t].tolist()
            if t in masked and len(masked) >= 2:
                assert t not in row
                assert set(row) <= masked - {t}
            else:
                assert row == [-1] * K  # unmasked frame, or utterance with < 2 masked frames
    # Two masked frames: the only distractor of each is the other one.
    assert set(idx[3, 0].tolist()) == {11} and set(idx[3, 11].tolist()) == {0}
    # Same generator seed, same draw.
    torch.testing.assert_close(idx, sample_distractors(mask, K, torch.Generator().manual_seed(0)))


def test_sample_distractors_is_uniform_with_replacement():
    mask = _mask([[0, 3, 5, 9]], 10)
    idx = sample_distractors(mask, 30000, torch.Generator().manual_seed(1))
    counts = torch.bincount(idx[0, 3], minlength=10).float() / 30000
    for t in (0, 5, 9):
        assert abs(float(counts[t]) - 1 / 3) < 0.02
    assert counts[3] == 0


# --------------------------------------------------------------------------- contrastive loss


def _naive_contrastive(c, q, mask, idx, kappa):
    """Per-frame, per-distractor loop with the same distractor indices."""
    losses, correct = [], []
    B, T, _ = c.shape
    for b in range(B):
        for t in range(T):
            if not mask[b, t] or idx[b, t, 0] < 0:
                continue
            ct, qt = c[b, t], q[b, t]

            def cos(x, y):
                return torch.dot(x, y) / (torch.clamp(x.norm(), min=1e-8) * torch.clamp(y.norm(), min=1e-8))

            logits = [cos(ct, qt) / kappa]
            for d in idx[b, t].tolist():
                assert d != t and bool(mask[b, d])
                if torch.equal(q[b, d], qt):
                    logits.append(torch.tensor(float("-inf"), dtype=c.dtype))
                else:
                    logits.append(cos(ct, q[b, d]) / kappa)
            row = torch.stack(logits)
            losses.append(-(row[0] - torch.logsumexp(row, 0)))
            correct.append(bool(row[0] > row[1:].max()))
    return torch.stack(losses).mean(), sum(correct) / len(correct)


def test_contrastive_matches_naive_loop_with_duplicates_excluded():
    torch.manual_seed(0)
    B, T, D, K = 3, 14, 6, 7
    c = torch.randn(B, T, D, dtype=torch.float64)
    q = torch.randn(B, T, D, dtype=torch.float64)
    mask = _mask([[1, 2, 3, 4, 5, 9, 10], [0, 6, 7, 13], [2]], T)
    # Identical quantised targets (same code) inside utterance 0 and across frames of utterance 1.
    q[0, 3] = q[0, 1]
    q[0, 9] = q[0, 1]
    q[1, 7] = q[1, 0]
    idx = sample_distractors(mask, K, torch.Generator().manual_seed(3))
    ci, qi = c.clone().requires_grad_(), q.clone().requires_grad_()
    loss, acc = contrastive_loss(ci, qi, mask, torch.tensor([12, 14, 5]), kappa=0.1, distractors=idx)
    cr, qr = c.clone().requires_grad_(), q.clone().requires_grad_()
    ref_loss, ref_acc = _naive_contrastive(cr, qr, mask, idx, 0.1)
    # The excluded case must actually occur in the draw for the test to mean something.
    hits = [(b, t) for b, t in ((0, 1), (0, 3), (0, 9), (1, 0), (1, 7))
            for d in idx[b, t].tolist() if torch.equal(q[b, d], q[b, t])]
    assert hits
    torch.testing.assert_close(loss, ref_loss)
    assert abs(float(acc) - ref_acc) < 1e-12
    g1 = torch.autograd.grad(loss, (ci, qi))
    g2 = torch.autograd.grad(ref_loss, (cr, qr))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_contrastive_generator_path_equals_explicit_indices():
    torch.manual_seed(1)
    c, q = torch.randn(2, 20, 8), torch.randn(2, 20, 8)
    mask = torch.rand(2, 20) < 0.5
    out = contrastive_loss(c, q, mask, num_distractors=9, generator=torch.Generator().manual_seed(5))
    idx = sample_distractors(mask, 9, torch.Generator().manual_seed(5))
    ref = contrastive_loss(c, q, mask, distractors=idx)
    torch.testing.assert_close(out.loss, ref.loss)
    torch.testing.assert_close(out.accuracy, ref.accuracy)


def test_contrastive_perfect_and_collapsed_cases():
    torch.manual_seed(2)
    q = torch.randn(2, 10, 5)
    mask = _mask([[0, 1, 2, 3, 4, 5], [2, 3, 4]], 10)
    g = torch.Generator().manual_seed(0)
    # Context equal to its own target and targets distinct: positives win everywhere.
    _, acc = contrastive_loss(q.clone(), q, mask, num_distractors=20, generator=g)
    assert float(acc) == 1.0
    # All targets identical: every distractor excluded, loss 0, positive trivially wins.
    same = q[:1, :1].expand(2, 10, 5).contiguous()
    loss, acc = contrastive_loss(torch.randn(2, 10, 5), same, mask, num_distractors=20, generator=g)
    assert float(loss) == 0.0 and float(acc) == 1.0


def test_contrastive_classes_from_code_ids_equal_the_vector_search():
    """Targets built from a small codebook (so many frames share a vector): passing the code ids as
    ``classes`` excludes the same distractors as the exact-equality search, so loss, accuracy and
    both gradients are identical; the model's combined ids for two codebooks behave the same."""
    from just_asr.model.just import code_classes

    g = torch.Generator().manual_seed(7)
    B, T, G, V, d = 3, 16, 2, 3, 4
    ids = torch.randint(0, V, (B, T, G), generator=g)
    book = torch.randn(G, V, d, generator=g)
    q = torch.cat([book[gi][ids[..., gi]] for gi in range(G)], dim=-1)  # (B, T, G*d)
    c = torch.randn(B, T, G * d, generator=g)
    mask = _mask([list(range(0, 12)), list(range(3, 16)), [1, 2, 5, 9]], T)
    dis = sample_distractors(mask, 10, torch.Generator().manual_seed(1))
    classes = code_classes(ids, V)
    assert classes.shape == (B, T)
    assert bool(((classes[..., :, None] == classes[..., None, :])
                 == (ids[..., :, None, :] == ids[..., None, :, :]).all(-1)).all())
    results = []
    for cls in (None, classes):
        cc, qq = c.clone().requires_grad_(), q.clone().requires_grad_()
        out = contrastive_loss(cc, qq, mask, distractors=dis, classes=cls)
        out.loss.backward()
        results.append((out.loss, out.accuracy, cc.grad, qq.grad))
    # the small codebook does produce exclusions (else this would test nothing)
    same_code = classes.gather(1, dis.clamp(min=0).flatten(1)).view_as(dis) == classes[..., None]
    assert bool((same_code & mask[..., None] & (dis >= 0)).any())
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="classes must be"):
        contrastive_loss(c, q, mask, distractors=dis, classes=classes[:, :5])


def test_contrastive_without_eligible_frames_is_zero_and_differentiable():
    c = torch.randn(2, 6, 4, requires_grad=True)
    q = torch.randn(2, 6, 4, requires_grad=True)
    mask = _mask([[3], []], 6)  # one masked frame: no distractor possible
    loss, acc = contrastive_loss(c, q, mask, num_distractors=5)
    assert float(loss.detach()) == 0.0 and float(acc) == 0.0
    loss.backward()
    assert (c.grad == 0).all() and (q.grad == 0).all()


def test_contrastive_bf16_inputs_compute_in_float32():
    torch.manual_seed(4)
    c, q = torch.randn(2, 16, 8).bfloat16(), torch.randn(2, 16, 8).bfloat16()
    mask = torch.rand(2, 16) < 0.6
    idx = sample_distractors(mask, 10, torch.Generator().manual_seed(0))
    loss, acc = contrastive_loss(c, q, mask, distractors=idx)
    assert loss.dtype == torch.float32 and acc.dtype == torch.float32
    ref, _ = contrastive_loss(c.float(), q.float(), mask, distractors=idx)
    torch.testing.assert_close(loss, ref)


def test_contrastive_bad_inputs():
    c = torch.randn(2, 5, 3)
    mask = _mask([[0, 1, 4], [0, 1]], 5)
    with pytest.raises(ValueError, match="padding"):
        contrastive_loss(c, c, mask, torch.tensor([3, 5]))
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(c, c[:, :4], mask)
    with pytest.raises(TypeError, match="bool"):
        contrastive_loss(c, c, mask.float())
    with pytest.raises(ValueError, match="kappa"):
        contrastive_loss(c, c, mask, kappa=0.0)


# --------------------------------------------------------------------------- diversity


def test_diversity_uniform_collapsed_and_hand_value():
    G, V = 2, 8
    uniform = torch.full((G, V), 1.0 / V)
    assert abs(float(codebook_perplexity(uniform)) - G * V) < 1e-4
    assert abs(float(diversity_loss(uniform))) < 1e-6
    collapsed = torch.zeros(G, V)
    collapsed[0, 3] = 1.0
    collapsed[1, 0] = 1.0
    assert abs(float(codebook_perplexity(collapsed)) - G) < 1e-6
    assert abs(float(diversity_loss(collapsed)) - (G * V - G) / (G * V)) < 1e-6
    # One codebook, half on two codes: H = log 2, perplexity 2, loss (4 - 2) / 4.
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert abs(float(codebook_perplexity(half)) - 2.0) < 1e-6
    assert abs(float(diversity_loss(half)) - 0.5) < 1e-6
    # A general value by hand.
    p = torch.tensor([[0.7, 0.2, 0.1]])
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert abs(float(diversity_loss(p)) - (3 - math.exp(h)) / 3) < 1e-6
    assert diversity_loss(half.bfloat16()).dtype == torch.float32


def test_diversity_gradient_pushes_towards_uniform():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5]], requires_grad=True)
    diversity_loss(torch.softmax(logits, -1)).backward()
    # Gradient descent lowers the largest logit and raises the smallest.
    assert logits.grad[0, 0] > 0 and logits.grad[0, 2] < 0


def test_diversity_gradient_finite_when_a_code_probability_underflows_to_zero():
    # A collapsing codebook: the softmax of very unequal logits gives an exact 0 in float32. The
    # entropy's derivative must stay finite there (xlogy's is log 0 = -inf, and the softmax
    # backward then turned every logit's gradient into NaN, which stopped pretraining runs).
    logits = torch.tensor([[0.0, -1e4, 1.0]], requires_grad=True)
    p = torch.softmax(logits, -1)
    assert float(p.detach()[0, 1]) == 0.0
    loss = diversity_loss(p)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # the value is unchanged: the zero code contributes nothing to the entropy
    q0, q2 = float(p.detach()[0, 0]), float(p.detach()[0, 2])
    h = -(q0 * math.log(q0) + q2 * math.log(q2))
    assert abs(float(loss.detach()) - (3 - math.exp(h)) / 3) < 1e-6
    # and the gradient matches finite differences through the two live codes (float64)
    x = torch.tensor([[0.0, -1e4, 1.0]], dtype=torch.float64, requires_grad=True)
    diversity_loss(torch.softmax(x, -1)).backward()
    eps = 1e-6
    for i in (0, 2):
        up, dn = x.detach().clone(), x.detach().clone()
        up[0, i] += eps
        dn[0, i] -= eps
        fd = (float(diversity_loss(torch.softmax(up, -1))) - float(diversity_loss(torch.softmax(dn, -1)))) / (2 * eps)
        assert abs(float(x.grad[0, i]) - fd) < 1e-6
    assert abs(float(x.grad[0, 1])) < 1e-12


def test_average_code_probs_ignores_padding():
    probs = torch.softmax(torch.randn(2, 5, 1, 4), -1)
    lengths = torch.tensor([5, 2])
    dirty = probs.clone()
    dirty[1, 2:] = 100.0  # garbage in padding
    avg = average_code_probs(dirty, lengths)
    ref = torch.cat([probs[0], probs[1, :2]]).mean(0)
    torch.testing.assert_close(avg, ref)
    torch.testing.assert_close(avg.sum(-1), torch.ones(1))


# --------------------------------------------------------------------------- MLM


def test_mlm_matches_manual_ce_at_masked_frames_and_accuracy():
    torch.manual_seed(5)
    B, T, V = 2, 6, 5
    logits = torch.randn(B, T, V, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T))
    mask = _mask([[0, 2, 3], [5]], T)
    # Make two masked frames certainly right and one certainly wrong for the accuracy count.
    logits[0, 0, ids[0, 0]] = 50.0
    logits[0, 2, ids[0, 2]] = 50.0
    logits[1, 5] = 0.0
    logits[1, 5, (ids[1, 5] + 1) % V] = 50.0
    loss, acc = mlm_loss(logits, ids, mask)
    terms = [-torch.log_softmax(logits[b, t], -1)[ids[b, t]] for b, t in ((0, 0), (0, 2), (0, 3), (1, 5))]
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    expected_acc = (2 + int(logits[0, 3].argmax() == ids[0, 3])) / 4
    assert abs(float(acc) - expected_acc) < 1e-12


def test_mlm_ignores_unmasked_frames():
    torch.manual_seed(6)
    logits = torch.randn(2, 7, 9)
    ids = torch.randint(0, 9, (2, 7))
    mask = torch.rand(2, 7) < 0.5
    mask[0, 0] = True
    a = logits.clone().requires_grad_()
    la, _ = mlm_loss(a, ids, mask)
    la.backward()
    changed = logits.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 9) * 10
    b = changed.clone().requires_grad_()
    lb, _ = mlm_loss(b, ids, mask)
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[~mask] == 0).all() and (a.grad[mask] != 0).any()


def test_mlm_multiple_codebooks_is_mean_over_codebooks():
    torch.manual_seed(7)
    logits = torch.randn(2, 5, 3, 6)
    ids = torch.randint(0, 6, (2, 5, 3))
    mask = _mask([[1, 2], [0, 4]], 5)
    loss, acc = mlm_loss(logits, ids, mask)
    per_g = [mlm_loss(logits[:, :, g], ids[:, :, g], mask) for g in range(3)]
    torch.testing.assert_close(loss, torch.stack([p.loss for p in per_g]).mean())
    torch.testing.assert_close(acc, torch.stack([p.accuracy for p in per_g]).mean())


def test_mlm_bf16_empty_mask_and_errors():
    logits = torch.randn(2, 4, 8).bfloat16()
    ids = torch.randint(0, 8, (2, 4))
    mask = _mask([[1], [2, 3]], 4)
    loss, acc = mlm_loss(logits, ids, mask)
    assert loss.dtype == torch.float32
    ref = F.cross_entropy(logits.float()[mask], ids[mask])
    torch.testing.assert_close(loss, ref)
    x = torch.randn(2, 4, 8, requires_grad=True)
    zero, zacc = mlm_loss(x, ids, torch.zeros(2, 4, dtype=torch.bool))
    zero.backward()
    assert float(zero.detach()) == 0.0 and float(zacc) == 0.0 and (x.grad == 0).all()
    with pytest.raises(ValueError, match="target_ids"):
        mlm_loss(logits, ids[:, :3], mask)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        mlm_loss(logits, ids + 8, mask)
