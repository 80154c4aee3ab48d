"""w2v-BERT pieces: span masking statistics and structure, mask replacement, Gumbel quantiser."""

from __future__ import annotations

import math

import pytest
import torch

from just_asr.model.config import MaskingConfig
from just_asr.model.masking import SpanMasker, compute_span_mask, expected_mask_fraction
from just_asr.model.quantizer import GumbelQuantizer, gumbel_temperature

# ---------------------------------------------------------------------------------------- masking


def test_mask_fraction_matches_theory_at_defaults() -> None:
    g = torch.Generator().manual_seed(0)
    length = 1000
    mask = compute_span_mask(torch.full((300,), length), length, prob=0.065, span=10, min_spans=2, generator=g)
    frac = mask.float().mean().item()
    # 1-(1-p)^span in the interior; the exact expectation accounts for the first span-1 frames
    assert abs(1 - (1 - 0.065) ** 10 - 0.4894) < 1e-3
    assert abs(frac - expected_mask_fraction(length, 0.065, 10)) < 0.005
    assert abs(frac - 0.49) < 0.01
    # interior frames: masked with probability 1-(1-p)^span
    assert abs(mask[:, 100:900].float().mean().item() - (1 - 0.935**10)) < 0.01


def test_mask_structure_against_brute_force_union_of_spans() -> None:
    """With enough starts that no top-up happens, the mask is the union of [s, s+span) cut at length."""
    lens = torch.tensor([40, 25, 33, 40])
    t, p, span = 40, 0.3, 4
    g = torch.Generator().manual_seed(7)
    mask = compute_span_mask(lens, t, prob=p, span=span, min_spans=2, generator=g)
    g = torch.Generator().manual_seed(7)
    u = torch.rand(4, t, generator=g)  # the same first draw
    for b in range(4):
        n = int(lens[b])
        starts = [s for s in range(n) if u[b, s] < p]
        assert len(starts) >= 2  # no top-up in this configuration
        ref = torch.zeros(t, dtype=torch.bool)
        for s in starts:
            ref[s : min(s + span, n)] = True
        assert torch.equal(mask[b], ref)


def test_min_spans_and_valid_length() -> None:
    g = torch.Generator().manual_seed(1)
    lens = torch.tensor([50, 17, 3, 1, 9])
    # prob 0 and span 1: exactly min(min_spans, length) frames, all inside the valid length
    m = compute_span_mask(lens, 50, prob=0.0, span=1, min_spans=4, generator=g)
    assert m.sum(dim=1).tolist() == [4, 4, 3, 1, 4]
    assert not any(m[b, int(lens[b]):].any() for b in range(5))
    # spans of 10 with min 2 spans: between 10 and 20 frames masked when length allows
    for _ in range(20):
        m = compute_span_mask(torch.tensor([200, 60]), 200, prob=0.0, span=10, min_spans=2, generator=g)
        for b, n in enumerate([200, 60]):
            k = int(m[b].sum())
            assert 1 <= k <= 20 and not m[b, n:].any()
    # default prob: nothing beyond valid length, ever
    lens = torch.randint(10, 120, (64,), generator=g)
    m = compute_span_mask(lens, 120, generator=g)
    assert not (m & ~(torch.arange(120)[None] < lens[:, None])).any()
    assert (m.sum(dim=1) >= 2).all()  # two distinct starts each mask at least their own frame


def test_masking_is_deterministic_under_generator() -> None:
    lens = torch.tensor([80, 60])
    a = compute_span_mask(lens, 80, generator=torch.Generator().manual_seed(3))
    b = compute_span_mask(lens, 80, generator=torch.Generator().manual_seed(3))
    c = compute_span_mask(lens, 80, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_span_masker_noise_and_learned_replacement() -> None:
    x = torch.randn(4, 300, 16)
    lens = torch.tensor([300, 200, 250, 100])
    masker = SpanMasker(MaskingConfig(), 16)
    y, mask = masker(x, lens, torch.Generator().manual_seed(0))
    keep = ~mask
    assert torch.equal(y[keep], x[keep])
    noise = y[mask]
    assert noise.numel() > 4_000
    assert abs(noise.std().item() - 0.1) < 0.005 and abs(noise.mean().item()) < 0.005
    learned = SpanMasker(MaskingConfig(replace="learned"), 16)
    y2, mask2 = learned(x, lens, torch.Generator().manual_seed(0))
    assert torch.equal(mask2, mask)
    assert torch.equal(y2[mask2], learned.mask_embedding.expand(int(mask2.sum()), 16))
    (y2.sum()).backward()
    assert learned.mask_embedding.grad is not None
    torch.testing.assert_close(learned.mask_embedding.grad, torch.full((16,), float(mask2.sum())))


# ---------------------------------------------------------------------------------------- quantiser


def test_gumbel_temperature_schedule() -> None:
    assert gumbel_temperature(0) == 2.0
    assert math.isclose(gumbel_temperature(1000), 2.0 * 0.999995**1000)
    assert gumbel_temperature(10_000_000) == 0.1
    assert gumbel_temperature(5, start=1.0, end=0.5, decay=0.5) == 0.5
    qz = GumbelQuantizer(4, 1, 8, 4)
    qz.set_temperature(0.7)
    assert qz.temperature == 0.7
    with pytest.raises(ValueError):
        qz.set_temperature(0.0)


def test_quantizer_straight_through_forward_onehot_backward_soft() -> None:
    torch.manual_seed(0)
    g_, v, code_dim = 2, 6, 8
    qz = GumbelQuantizer(5, g_, v, code_dim, temperature=1.5).train()
    x = torch.randn(3, 7, 5, requires_grad=True)
    lens = torch.tensor([7, 4, 6])
    out = qz(x, lens, torch.Generator().manual_seed(11))
    valid = torch.arange(7)[None] < lens[:, None]
    # forward: exactly the chosen code vectors (hard one-hot), zero at padding
    ref = torch.cat([qz.codevectors[gi][out.ids[..., gi]] for gi in range(g_)], dim=-1)
    torch.testing.assert_close(out.quantized[valid], ref[valid])
    assert torch.all(out.quantized[~valid] == 0)
    # backward: the gradient equals that of the soft (Gumbel-softmax) path with the same noise
    w = torch.randn(3, 7, code_dim)
    grad_st = torch.autograd.grad((out.quantized * w).sum(), qz.weight_proj.weight)[0]
    u = torch.rand(3, 7, g_, v, generator=torch.Generator().manual_seed(11))
    gumbel = -torch.log(-torch.log(u.clamp(min=1e-10, max=1.0 - 1e-7)))
    logits = qz.weight_proj(x).view(3, 7, g_, v)
    soft = torch.softmax((logits + gumbel) / 1.5, dim=-1)
    assert torch.equal(soft.argmax(-1)[valid], out.ids[valid])
    soft_q = torch.einsum("btgv,gvd->btgd", soft, qz.codevectors).reshape(3, 7, code_dim)
    soft_q = soft_q * valid.unsqueeze(-1)
    grad_soft = torch.autograd.grad((soft_q * w).sum(), qz.weight_proj.weight)[0]
    torch.testing.assert_close(grad_st, grad_soft, atol=1e-5, rtol=1e-4)
    assert grad_st.abs().sum() > 0


def test_quantizer_eval_ids_probs_usage_by_brute_force() -> None:
    torch.manual_seed(1)
    qz = GumbelQuantizer(4, 1, 5, 6).eval()
    x = torch.randn(2, 6, 4)
    lens = torch.tensor([6, 3])
    out = qz(x, lens)
    logits = qz.weight_proj(x)
    frames = [(b, t) for b in range(2) for t in range(int(lens[b]))]
    for b, t in frames:
        assert int(out.ids[b, t, 0]) == int(logits[b, t].argmax())
        torch.testing.assert_close(out.quantized[b, t], qz.codevectors[0, int(logits[b, t].argmax())])
    probs = sum(torch.softmax(logits[b, t], -1) for b, t in frames) / len(frames)
    torch.testing.assert_close(out.probs[0], probs)
    used = {int(logits[b, t].argmax()) for b, t in frames}
    assert math.isclose(out.code_usage.item(), len(used) / 5, rel_tol=1e-6)
    # padded frames do not count: appending padding leaves probs unchanged
    x_pad = torch.cat([x, 10 * torch.randn(2, 4, 4)], dim=1)
    torch.testing.assert_close(qz(x_pad, lens).probs, out.probs)
