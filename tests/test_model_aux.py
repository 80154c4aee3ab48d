"""Predictors (the LSTM step, the stateless predictor) and the auxiliary CTC term: values against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from just_asr.decode import decode
from just_asr.model import JustModel
from just_asr.model.transducer import Predictor, StatelessPredictor

from test_model_just import VOCAB, make_batch, make_cfg


def test_stateless_predictor_sees_exactly_its_context_window() -> None:
    torch.manual_seed(0)
    pred = StatelessPredictor(vocab_size=9, embed_dim=8, context_size=3, dropout=0.0).eval()
    y = torch.tensor([[0, 4, 5, 6, 7, 8]])
    out, _ = pred(y)
    # Independent formula: out[s] = relu(sum_k W[:, :, k] @ emb(token[s - 2 + k])) with blank padding.
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), y], 1)
    e = pred.embedding(padded)[0]  # (S+2, E)
    w = pred.conv.weight  # (E, E/groups, 3)
    groups = pred.conv.groups
    gsize = 8 // groups
    for s in range(y.size(1)):
        window = e[s : s + 3]  # (3, E)
        want = torch.zeros(8)
        for o in range(8):
            g = o // gsize
            want[o] = (w[o] * window[:, g * gsize : (g + 1) * gsize].t()).sum()
        torch.testing.assert_close(out[0, s], torch.relu(want), atol=1e-6, rtol=1e-5)
    # Changing a token more than context_size-1 positions back leaves later outputs unchanged.
    y2 = y.clone()
    y2[0, 1] = 2
    out2, _ = pred(y2)
    torch.testing.assert_close(out2[0, 4:], out[0, 4:])
    assert not torch.allclose(out2[0, 1:4], out[0, 1:4])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_predictor_steps_equal_the_whole_sequence(num_layers: int) -> None:
    """``Predictor.step`` writes the LSTM cells out (faster than ``nn.LSTM`` on one time step): a
    chain of steps must give ``forward``'s outputs and final state, from zeros and from a given
    state, and gradients must reach the same parameters."""
    torch.manual_seed(2)
    pred = Predictor(vocab_size=11, embed_dim=6, hidden_dim=7, num_layers=num_layers, dropout=0.0).eval()
    y = torch.tensor([[0, 3, 3, 10, 1, 5], [0, 2, 7, 7, 4, 9], [0, 1, 1, 1, 1, 1]])
    full, (h_full, c_full) = pred(y)
    state = None
    for s in range(y.size(1)):
        o, state = pred.step(y[:, s], state)
        torch.testing.assert_close(o, full[:, s], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[0], h_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state[1], c_full, rtol=1e-5, atol=1e-6)
    assert state[0].shape == (num_layers, 3, 7)
    h0 = (torch.randn(num_layers, 3, 7), torch.randn(num_layers, 3, 7))
    ref, (h_ref, c_ref) = pred(y[:, :1], h0)
    o, (h1, c1) = pred.step(y[:, 0], h0)
    torch.testing.assert_close(o, ref[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c_ref, rtol=1e-5, atol=1e-6)
    o.sum().backward()
    grads = {n for n, p in pred.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads == {n for n, _ in pred.named_parameters()}


def test_stateless_predictor_steps_equal_the_whole_sequence() -> None:
    torch.manual_seed(1)
    pred = StatelessPredictor(vocab_size=9, embed_dim=8, context_size=2, dropout=0.0).eval()
    y = torch.tensor([[0, 3, 3, 8, 1], [0, 2, 7, 7, 4]])
    full, _ = pred(y)
    state = None
    for s in range(y.size(1)):
        o, state = pred.step(y[:, s], state)
        torch.testing.assert_close(o, full[:, s])
    assert state[0].shape == (1, 2, 1) and state[1].shape == (1, 2, 0)


def test_stateless_model_greedy_equals_beam_one_and_trains() -> None:
    torch.manual_seed(0)
    cfg = make_cfg(decoder={"predictor": "stateless", "embed_dim": 8, "joint_dim": 10, "dropout": 0.0},
                   loss={"ssl": 0.0})
    model = JustModel(cfg, VOCAB)
    assert isinstance(model.predictor, StatelessPredictor)
    b = make_batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(b["features"], b["feature_lens"], b["targets"], b["target_lens"], b["has_text"])
        loss = out.compute_loss().total
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        enc, lens = model.encode(b["features"], b["feature_lens"])
        g = decode(model.predictor, model.joiner, enc, lens, blank_id=0, method="greedy")
        k1 = decode(model.predictor, model.joiner, enc, lens, blank_id=0, method="beam", beam=1)
        k4 = decode(model.predictor, model.joiner, enc, lens, blank_id=0, method="beam", beam=4)
    assert g.tokens == k1.tokens
    assert len(k4.tokens) == 3


def test_ctc_term_equals_torch_ctc_on_the_encoder_output() -> None:
    torch.manual_seed(0)
    for branch, ssl in (("unmasked", 0.0), ("masked", 1.0)):
        cfg = make_cfg(loss={"ssl": ssl, "ctc": 0.3}, rnnt_branch=branch)
        model = JustModel(cfg, VOCAB).eval()
        assert model.ctc_head is not None
        b = make_batch()
        b["has_text"][1] = False
        b["target_lens"][1] = 0
        out = model(b["features"], b["feature_lens"], b["targets"], b["target_lens"], b["has_text"])
        res = out.compute_loss()
        rows = [0, 2]
        enc = out.encoder_out
        lp = model.ctc_head(enc).log_softmax(-1)
        want = 0.0
        for i, r in enumerate(rows):
            t = int(out.rnnt_logit_lens[i])
            u = int(b["target_lens"][r])
            want += F.ctc_loss(lp[i : i + 1, :t].transpose(0, 1), b["targets"][r : r + 1, :u],
                               torch.tensor([t]), torch.tensor([u]), blank=0, reduction="sum")
        want = want / b["target_lens"][rows].sum()
        torch.testing.assert_close(res.terms["ctc"], want.float(), rtol=1e-5, atol=1e-6)
        expected_total = res.terms["rnnt"] + 0.3 * res.terms["ctc"]
        if ssl:
            t = res.terms
            expected_total = expected_total + t["contrastive"] + 0.1 * t["diversity"] + t["mlm"]
        torch.testing.assert_close(res.total, expected_total, rtol=1e-5, atol=1e-5)


def test_no_ctc_head_without_weight_and_ctc_needs_rnnt() -> None:
    model = JustModel(make_cfg(loss={"ssl": 0.0}), VOCAB)
    assert model.ctc_head is None
    assert not any(k.startswith("ctc_head") for k in model.state_dict())
    import pytest

    with pytest.raises(ValueError, match="loss.ctc"):
        make_cfg(loss={"rnnt": 0.0, "ssl": 1.0, "ctc": 0.2})
    with pytest.raises(ValueError, match="decoder.predictor|predictor"):
        make_cfg(decoder={"predictor": "gru"})


def test_residual_init_scale_scales_exactly_the_branch_outputs() -> None:
    torch.manual_seed(0)
    ref = JustModel(make_cfg(), VOCAB)
    torch.manual_seed(0)
    small = JustModel(make_cfg(encoder={"residual_init_scale": 0.25}), VOCAB)
    ref_sd, small_sd = ref.state_dict(), small.state_dict()
    scaled = [k for k in ref_sd if k.endswith(("output_dense.weight", "linear_out.weight", "pointwise_conv2.weight"))
              and "_stack." in k]
    # 2 stacks x 1 layer x (2 feed-forwards + attention + conv) = 8 layers
    assert len(scaled) == 8
    for k in ref_sd:
        if k in scaled:
            torch.testing.assert_close(small_sd[k], 0.25 * ref_sd[k])
        else:
            assert torch.equal(small_sd[k], ref_sd[k]), k
    import pytest

    with pytest.raises(ValueError, match="residual_init_scale"):
        make_cfg(encoder={"residual_init_scale": 0.0})


def test_rnnt_ramp_scales_only_the_rnnt_weight_by_step() -> None:
    torch.manual_seed(0)
    cfg = make_cfg(loss={"ssl": 0.0, "ctc": 0.5, "rnnt_ramp_steps": 4})
    model = JustModel(cfg, VOCAB).eval()
    b = make_batch()
    for step, ramp in ((0, 0.0), (1, 0.25), (3, 0.75), (4, 1.0), (10, 1.0)):
        model.set_step(step)
        assert model.rnnt_ramp() == ramp
        res = model(b["features"], b["feature_lens"], b["targets"], b["target_lens"], b["has_text"]).compute_loss()
        torch.testing.assert_close(res.total, ramp * res.terms["rnnt"] + 0.5 * res.terms["ctc"])
    import pytest

    with pytest.raises(ValueError, match="rnnt_ramp_steps"):
        make_cfg(loss={"rnnt_ramp_steps": -1})


def test_ssl_start_and_ramp() -> None:
    torch.manual_seed(0)
    cfg = make_cfg(loss={"ssl": 0.5, "ssl_start_step": 2, "ssl_ramp_steps": 4})
    model = JustModel(cfg, VOCAB).eval()
    b = make_batch()
    for step, ramp in ((0, 0.0), (1, 0.0), (2, 0.0), (3, 0.25), (6, 1.0), (9, 1.0)):
        model.set_step(step)
        assert model.ssl_ramp() == ramp
        out = model(b["features"], b["feature_lens"], b["targets"], b["target_lens"], b["has_text"],
                    generator=torch.Generator().manual_seed(1))
        res = out.compute_loss(generator=torch.Generator().manual_seed(2))
        if ramp == 0.0:
            assert out.mask is None and "contrastive" not in res.terms  # the SSL branch did not run
            torch.testing.assert_close(res.total, res.terms["rnnt"])
        else:
            t = res.terms
            want = t["rnnt"] + 0.5 * ramp * (t["contrastive"] + 0.1 * t["diversity"] + t["mlm"])
            torch.testing.assert_close(res.total, want)
    import pytest

    with pytest.raises(ValueError, match="ssl_start_step"):
        make_cfg(loss={"rnnt": 0.0, "ssl": 1.0, "ssl_start_step": 10})
