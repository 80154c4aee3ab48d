"""The JUST model: objective, switches, RNN-T rows, branches, determinism, padding."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from model_helpers import model_config

from just_asr.losses import rnnt_loss
from just_asr.model import JustModel, ModelConfig

VOCAB = 11


def make_cfg(**over: Any) -> ModelConfig:
    base: dict[str, Any] = {
        "frontend": {"conv_channels": 4, "dropout": 0.0},
        "encoder": {"d_model": 16, "num_heads": 2, "ffn_dim": 32, "conv_kernel": 3,
                    "left_max_position": 4, "right_max_position": 2},
        "quantizer": {"num_codebooks": 2, "codebook_size": 12, "code_dim": 8},
        "contrastive": {"num_layers": 1, "final_dim": 8, "num_distractors": 5},
        "mlm": {"num_layers": 1},
        "decoder": {"embed_dim": 8, "hidden_dim": 12, "joint_dim": 10},
    }
    return model_config(base, over)


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feature_lens = torch.tensor([80, 60, 70])
    features = torch.randn(3, 80, 80, generator=g)
    for b in range(3):
        features[b, feature_lens[b]:] = 0.0
    targets = torch.randint(1, VOCAB, (3, 5), generator=g)
    target_lens = torch.tensor([4, 0, 3])
    for b in range(3):
        targets[b, target_lens[b]:] = 0
    has_text = torch.tensor([True, False, True])
    return dict(features=features, feature_lens=feature_lens, targets=targets, target_lens=target_lens,
                has_text=has_text)


def select(batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    idx = torch.tensor(rows)
    out = {k: v.index_select(0, idx) for k, v in batch.items()}
    t = int(out["feature_lens"].max())
    out["features"] = out["features"][:, :t]
    return out


def count_calls(model: JustModel, names: list[str]) -> dict[str, int]:
    counts = {n: 0 for n in names}
    for n in names:
        def hook(_m: torch.nn.Module, _i: Any, _o: Any, n: str = n) -> None:
            counts[n] += 1
        getattr(model, n).register_forward_hook(hook)
    return counts


SSL_MODULES = ["masker", "quantizer", "context_proj", "target_proj", "mlm_head"]
RNNT_MODULES = ["predictor", "joiner"]


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"frontend": {"kind": "stack"}, "masking": {"replace": "learned"}, "encoder": {"conv_norm": "batch"},
         "rnnt_branch": "unmasked"},
    ],
)
def test_every_parameter_gets_a_finite_gradient(over: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = JustModel(make_cfg(**over), VOCAB).train()
    batch = make_batch()
    batch["has_text"] = torch.tensor([True, True, True])
    batch["target_lens"] = torch.tensor([4, 2, 3])
    batch["targets"][1, :2] = torch.tensor([3, 7])
    loss = model(**batch).compute_loss()
    assert set(loss.terms) == {"rnnt", "contrastive", "diversity", "mlm"}
    w = model.cfg.loss
    expected = w.rnnt * loss.terms["rnnt"] + w.ssl * (
        loss.terms["contrastive"] + w.diversity * loss.terms["diversity"] + w.mlm * loss.terms["mlm"])
    torch.testing.assert_close(loss.total, expected)
    for t in [loss.total, *loss.terms.values()]:
        assert t.dtype == torch.float32 and t.dim() == 0 and torch.isfinite(t)
    loss.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient for {zero}"
    for name in ["contrastive_accuracy", "mlm_accuracy", "codebook_perplexity", "code_usage", "masked_fraction"]:
        assert name in loss.metrics and torch.isfinite(loss.metrics[name])


@pytest.mark.parametrize("codebooks", [1, 2])
@pytest.mark.parametrize("bf16", [False, True])
def test_every_gradient_has_its_parameters_strides(codebooks: int, bf16: bool) -> None:
    """DDP's gradient layout contract (its bucket views have the parameters' strides; a gradient
    with other strides is copied, with a "Grad strides do not match bucket view strides" warning):
    the quantiser's codevectors (size-1 group dim) and the depthwise kernel (size-1 channel dim)
    broke it."""
    torch.manual_seed(0)
    over = {"quantizer": {"num_codebooks": codebooks, "codebook_size": 12, "code_dim": 8},
            "encoder": {"conv_kernel": 5}}
    model = JustModel(make_cfg(**over), VOCAB).train()
    batch = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).compute_loss()
    loss.total.backward()
    bad = {n: (p.stride(), p.grad.stride()) for n, p in model.named_parameters() if p.grad.stride() != p.stride()}
    assert not bad, f"gradient strides differ from the parameter's: {bad}"


def test_beta_zero_runs_no_ssl_modules() -> None:
    torch.manual_seed(0)
    model = JustModel(make_cfg(loss={"ssl": 0.0}), VOCAB).train()
    counts = count_calls(model, SSL_MODULES + RNNT_MODULES + ["contrastive_stack", "mlm_stack"])
    out = model(**make_batch())
    loss = out.compute_loss()
    assert all(counts[n] == 0 for n in SSL_MODULES), counts
    assert counts["contrastive_stack"] == counts["mlm_stack"] == 1 and counts["joiner"] == 1
    assert set(loss.terms) == {"rnnt"} and out.mask is None
    torch.testing.assert_close(loss.total, loss.terms["rnnt"])
    # control: with beta > 0 the same hooks do fire
    model2 = JustModel(make_cfg(), VOCAB).train()
    counts2 = count_calls(model2, SSL_MODULES)
    model2(**make_batch())
    assert all(counts2[n] == 1 for n in SSL_MODULES), counts2


@pytest.mark.parametrize("branch", ["masked", "unmasked"])
def test_rnnt_off_runs_no_predictor_or_joiner(branch: str) -> None:
    torch.manual_seed(0)
    model = JustModel(make_cfg(loss={"rnnt": 0.0}, rnnt_branch=branch), VOCAB).train()
    counts = count_calls(model, RNNT_MODULES + ["contrastive_stack"])
    out = model(**make_batch())
    loss = out.compute_loss()
    assert counts["predictor"] == counts["joiner"] == 0
    assert counts["contrastive_stack"] == 1  # no second (unmasked) pass either
    assert set(loss.terms) == {"contrastive", "diversity", "mlm"} and out.rnnt_logits is None
    loss.total.backward()
    assert all(p.grad is None for p in model.predictor.parameters())


@pytest.mark.parametrize("reduction", ["token", "utterance"])
def test_untranscribed_rows_contribute_no_rnnt_loss(reduction: str) -> None:
    torch.manual_seed(0)
    model = JustModel(make_cfg(rnnt_branch="unmasked", loss={"rnnt_reduction": reduction}), VOCAB).eval()
    batch = make_batch()
    batch["targets"][1, :3] = torch.tensor([5, 6, 7])  # text-like ids on a row without text: ignored
    g = torch.Generator()
    with torch.no_grad():
        full = model(**batch, generator=g.manual_seed(1))
        sub = model(**select(batch, [0, 2]), generator=g.manual_seed(1))
        l_full = full.compute_loss(generator=g.manual_seed(2)).terms["rnnt"]
        l_sub = sub.compute_loss(generator=g.manual_seed(2)).terms["rnnt"]
    assert full.rnnt_rows.tolist() == [0, 2] and full.rnnt_logits.shape[0] == 2
    torch.testing.assert_close(l_full, l_sub, atol=1e-5, rtol=1e-5)
    # reduction by brute force, one utterance at a time
    per_utt = []
    for i, b in enumerate([0, 2]):
        t_b = int(full.rnnt_logit_lens[i])
        u_b = int(batch["target_lens"][b])
        per_utt.append(rnnt_loss(full.rnnt_logits[i : i + 1, :t_b, : u_b + 1], batch["targets"][b : b + 1, :u_b],
                                 torch.tensor([t_b]), torch.tensor([u_b]), blank=0, reduction="sum"))
    per_utt_t = torch.stack(per_utt)
    expected = per_utt_t.sum() / 7 if reduction == "token" else per_utt_t.mean()
    torch.testing.assert_close(l_full, expected, atol=1e-5, rtol=1e-5)


def test_no_text_at_all_gives_zero_rnnt_and_skips_decoder() -> None:
    torch.manual_seed(0)
    model = JustModel(make_cfg(), VOCAB).train()
    counts = count_calls(model, RNNT_MODULES)
    batch = make_batch()
    batch["has_text"] = torch.zeros(3, dtype=torch.bool)
    batch["target_lens"] = torch.zeros(3, dtype=torch.long)
    loss = model(**batch).compute_loss()
    assert counts == {"predictor": 0, "joiner": 0}
    assert float(loss.terms["rnnt"]) == 0.0 and float(loss.metrics["rnnt_utterances"]) == 0.0
    loss.total.backward()


def test_masked_and_unmasked_branches_both_work_and_differ() -> None:
    torch.manual_seed(0)
    model_m = JustModel(make_cfg(rnnt_branch="masked"), VOCAB).eval()
    model_u = JustModel(make_cfg(rnnt_branch="unmasked"), VOCAB).eval()
    model_u.load_state_dict(model_m.state_dict())
    batch = make_batch()
    counts_m = count_calls(model_m, ["contrastive_stack"])
    counts_u = count_calls(model_u, ["contrastive_stack"])
    g = torch.Generator()
    out_m = model_m(**batch, generator=g.manual_seed(3))
    out_u = model_u(**batch, generator=g.manual_seed(3))
    assert counts_m["contrastive_stack"] == 1
    assert counts_u["contrastive_stack"] == 1  # the unmasked pass rides in the masked pass's call
    loss_m = out_m.compute_loss(generator=g.manual_seed(4))
    loss_u = out_u.compute_loss(generator=g.manual_seed(4))
    for loss in (loss_m, loss_u):
        assert set(loss.terms) == {"rnnt", "contrastive", "diversity", "mlm"}
        assert all(torch.isfinite(v) for v in loss.terms.values())
    # same SSL pass (same weights, mask and noise), different RNN-T input
    torch.testing.assert_close(loss_m.terms["mlm"], loss_u.terms["mlm"])
    assert not torch.allclose(loss_m.terms["rnnt"], loss_u.terms["rnnt"])
    enc, enc_lens = model_u.encode(batch["features"][[0, 2]], batch["feature_lens"][[0, 2]])
    torch.testing.assert_close(out_u.encoder_out, enc[:, : int(enc_lens.max())])
    assert not torch.allclose(out_m.encoder_out, out_u.encoder_out)
    # the masked branch reads the MLM stack output of the masked pass
    assert out_m.mask[[0, 2]].any()


@pytest.mark.parametrize(("branch", "longest_has_text", "decoder"), [
    ("unmasked", True, {}), ("unmasked", False, {}), ("masked", True, {}),
    ("unmasked", False, {"rnnt": "pruned", "prune_range": 2}), ("unmasked", True, {"fused_batch_size": 1}),
    ("unmasked", False, {"ctc": 0.5}),
])
def test_joint_passes_equal_separate_calls(branch: str, longest_has_text: bool, decoder: dict[str, Any]) -> None:
    """The front-end calls of a step (clean and SpecAugment-like input) and, for the unmasked branch,
    its encoder pass concatenated with the masked pass (one call per module) give the separate
    calls' losses and gradients (train mode, dropout off); also when the longest row has no text
    (the separate unmasked pass then ran on fewer frames)."""
    decoder = dict(decoder)  # (the parametrised dict is shared)
    ctc = {"ctc": decoder.pop("ctc")} if "ctc" in decoder else {}
    off = {"frontend": {"dropout": 0.0}, "encoder": {"dropout": 0.0, "attention_dropout": 0.0},
           "decoder": {"dropout": 0.0, **decoder}, "loss": ctc, "rnnt_branch": branch}
    torch.manual_seed(0)
    joint = JustModel(make_cfg(**copy.deepcopy(off)), VOCAB).train()
    apart = JustModel(make_cfg(**copy.deepcopy(off)), VOCAB).train()
    apart.load_state_dict(joint.state_dict())
    apart.joint_passes = False
    assert joint.joint_stacks_active and not apart.joint_stacks_active
    batch = make_batch()
    if not longest_has_text:  # row 0 (80 frames) untranscribed, rows 1 and 2 (60, 70) with text
        batch["has_text"] = torch.tensor([False, True, True])
        batch["targets"][1, :2] = torch.tensor([3, 4])
        batch["target_lens"] = torch.tensor([0, 2, 3])
    batch["supervised_features"] = batch["features"] * 0.5 + 0.1 * torch.randn(batch["features"].shape)
    results = []
    for model in (joint, apart):
        counts = count_calls(model, ["frontend", "contrastive_stack", "mlm_stack"])
        g = torch.Generator()
        out = model(**batch, generator=g.manual_seed(3))
        loss = out.compute_loss(generator=g.manual_seed(4))
        loss.total.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((counts, out, loss, grads))
    (c_j, out_j, loss_j, g_j), (c_a, out_a, loss_a, g_a) = results
    assert c_j == {"frontend": 1, "contrastive_stack": 1, "mlm_stack": 1}
    two = 2 if branch == "unmasked" else 1
    assert c_a == {"frontend": 2, "contrastive_stack": two, "mlm_stack": two}
    assert out_j.encoder_out.shape == out_a.encoder_out.shape
    torch.testing.assert_close(out_j.encoder_out, out_a.encoder_out, atol=1e-5, rtol=1e-5)
    assert torch.equal(out_j.rnnt_logit_lens, out_a.rnnt_logit_lens) and torch.equal(out_j.mask, out_a.mask)
    assert set(loss_j.terms) == set(loss_a.terms) == {"rnnt", "contrastive", "diversity", "mlm"} | set(ctc)
    for name in loss_j.terms:
        torch.testing.assert_close(loss_j.terms[name], loss_a.terms[name], atol=1e-5, rtol=1e-5)
    assert g_j.keys() == g_a.keys() and "contrastive_stack.layers.0.ffn1.intermediate_dense.weight" in g_j
    for k in g_j:
        torch.testing.assert_close(g_j[k], g_a[k], atol=1e-5, rtol=1e-4, msg=k)


def test_joint_stacks_not_with_batch_norm() -> None:
    """conv_norm: batch would mix the two passes' statistics: the stacks are called apart (the front
    end, which couples no rows, still once), and the encoder output is the unmasked pass's own."""
    torch.manual_seed(0)
    model = JustModel(make_cfg(encoder={"conv_norm": "batch"}, rnnt_branch="unmasked"), VOCAB).train()
    assert model.joint_passes and not model.joint_stacks_active
    counts = count_calls(model, ["frontend", "contrastive_stack", "mlm_stack"])
    batch = make_batch()
    model(**batch).compute_loss().total.backward()
    assert counts == {"frontend": 1, "contrastive_stack": 2, "mlm_stack": 2}
    model.eval()  # running statistics: rows independent, so the pass equals encode() of the text rows
    with torch.no_grad():
        out = model(**batch, generator=torch.Generator().manual_seed(0))
        enc, enc_lens = model.encode(batch["features"][[0, 2]], batch["feature_lens"][[0, 2]])
    torch.testing.assert_close(out.encoder_out, enc[:, : int(enc_lens.max())], atol=1e-5, rtol=1e-5)


def test_determinism_under_seed() -> None:
    def run(seed: int) -> tuple[float, dict[str, float]]:
        torch.manual_seed(0)
        model = JustModel(make_cfg(), VOCAB).train()
        torch.manual_seed(seed)
        loss = model(**make_batch()).compute_loss()
        return float(loss.total.detach()), {k: float(v.detach()) for k, v in loss.terms.items()}

    a, b, c = run(5), run(5), run(6)
    assert a == b
    assert a[0] != c[0]
    # with an explicit generator the SSL draws no longer depend on the global seed (eval: no dropout)
    torch.manual_seed(0)
    model = JustModel(make_cfg(), VOCAB).eval()
    totals = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        g = torch.Generator().manual_seed(9)
        totals.append(float(model(**make_batch(), generator=g).compute_loss(generator=g).total.detach()))
    assert totals[0] == totals[1]


def test_padding_invariance_of_ssl_pieces_and_encode() -> None:
    """Eval mode, no masking: each row's context, targets, MLM logits and code ids equal its own."""
    torch.manual_seed(0)
    model = JustModel(make_cfg(masking={"prob": 0.0, "min_spans": 0}), VOCAB).eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(**batch)
        enc, enc_lens = model.encode(batch["features"], batch["feature_lens"])
        assert not out.mask.any()
        for b in range(3):
            one = model(**select(batch, [b]))
            n = int(out.latent_lens[b])
            assert int(one.latent_lens[0]) == n
            for name in ("context", "quantized", "mlm_logits"):
                torch.testing.assert_close(getattr(out, name)[b, :n], getattr(one, name)[0], atol=1e-5, rtol=1e-5)
            assert torch.equal(out.code_ids[b, :n], one.code_ids[0])
            enc_one, _ = model.encode(batch["features"][b : b + 1, : batch["feature_lens"][b]], batch["feature_lens"][b : b + 1])
            torch.testing.assert_close(enc[b, : enc_lens[b]], enc_one[0], atol=1e-5, rtol=1e-5)
        # code probabilities are averaged over valid frames only
        probs = torch.softmax(model.quantizer.weight_proj(model.frontend(batch["features"], batch["feature_lens"])[0]).view(3, -1, 2, 12), -1)
        valid = torch.arange(probs.size(1))[None] < out.latent_lens[:, None]
        torch.testing.assert_close(out.code_probs, probs[valid].mean(0))


def test_supervised_features_feed_the_supervised_pass_only() -> None:
    torch.manual_seed(0)
    batch = make_batch()
    noisy = batch["features"] + 0.5 * torch.randn_like(batch["features"])
    g = torch.Generator()
    for branch in ("masked", "unmasked"):
        model = JustModel(make_cfg(rnnt_branch=branch), VOCAB).eval()
        with torch.no_grad():
            base = model(**batch, generator=g.manual_seed(0))
            same = model(**batch, supervised_features=batch["features"].clone(), generator=g.manual_seed(0))
            aug = model(**batch, supervised_features=noisy, generator=g.manual_seed(0))
        torch.testing.assert_close(base.encoder_out, same.encoder_out)
        assert torch.equal(base.code_ids, aug.code_ids)  # the quantiser reads the clean features
        torch.testing.assert_close(base.quantized, aug.quantized)
        assert not torch.allclose(base.encoder_out, aug.encoder_out)
        if branch == "unmasked":  # the SSL pass is untouched by the supervised input
            torch.testing.assert_close(base.context, aug.context)
        else:  # one pass: the masked pass reads the supervised features
            assert not torch.allclose(base.context, aug.context)


def test_metrics_temperature_and_errors() -> None:
    torch.manual_seed(0)
    model = JustModel(make_cfg(), VOCAB).train()
    model.set_gumbel_temperature(0.5)
    batch = make_batch()
    out = model(**batch)
    loss = out.compute_loss()
    assert out.gumbel_temperature == 0.5 and float(loss.metrics["gumbel_temperature"]) == 0.5
    frac = out.mask.sum() / out.latent_lens.sum()
    torch.testing.assert_close(loss.metrics["masked_fraction"], frac.float())
    assert 1.0 <= float(loss.metrics["codebook_perplexity"]) <= 24.0
    assert out.code_ids.shape == (3, int(out.latent_lens.max()), 2)
    assert out.mlm_logits.shape == (3, int(out.latent_lens.max()), 2, 12)
    bad = copy.copy(batch)
    bad["has_text"] = torch.tensor([1, 0, 1])
    with pytest.raises(ValueError, match="has_text must be a bool"):
        model(**bad)
    bad = copy.copy(batch)
    bad["feature_lens"] = torch.tensor([80, 60])
    with pytest.raises(ValueError, match="feature_lens"):
        model(**bad)
    with pytest.raises(ValueError, match="supervised_features shape"):
        model(**batch, supervised_features=batch["features"][:, :10])
