"""Encoder pieces: config, front ends, Shaw relative attention, conformer padding invariance, presets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from just_asr.model.config import EncoderConfig, ModelConfig, load_model_config, save_model_config
from just_asr.model.conformer import (
    ConformerStack,
    ConvModule,
    MaskedBatchNorm1d,
    RelativeSelfAttention,
    clipped_relative_gather,
    relative_position_index,
)
from just_asr.model.frontend import ConvSubsampling, StackedProjection

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "model"


def small_encoder(**kw) -> EncoderConfig:
    base = dict(d_model=16, num_heads=2, ffn_dim=24, conv_kernel=5, dropout=0.0, attention_dropout=0.0,
                left_max_position=4, right_max_position=2)
    base.update(kw)
    return EncoderConfig(**base)


# ---------------------------------------------------------------------------------------- config


def test_config_roundtrip_and_unknown_keys(tmp_path: Path) -> None:
    cfg = ModelConfig.from_dict({"encoder": {"d_model": 32, "num_heads": 4}, "rnnt_branch": "unmasked"})
    assert cfg.encoder.d_model == 32 and cfg.rnnt_branch == "unmasked" and cfg.masking.prob == 0.065
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown key 'encoder\.d_modle'"):
        ModelConfig.from_dict({"encoder": {"d_modle": 3}})
    with pytest.raises(ValueError, match=r"'rnnt_branch' must be one of"):
        ModelConfig.from_dict({"rnnt_branch": "both"})
    with pytest.raises(ValueError, match=r"'encoder\.num_heads' must be an integer"):
        ModelConfig.from_dict({"encoder": {"num_heads": 2.5}})
    with pytest.raises(ValueError, match=r"'encoder\.num_heads' must divide"):
        ModelConfig.from_dict({"encoder": {"d_model": 30, "num_heads": 4}})
    with pytest.raises(ValueError, match=r"cannot both be 0"):
        ModelConfig.from_dict({"loss": {"rnnt": 0.0, "ssl": 0}})
    # YAML layout: under model: arch:, errors name the file
    path = tmp_path / "m.yaml"
    save_model_config(cfg, path)
    assert load_model_config(path) == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch:\n    masking:\n      spam: 3\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:4: unknown key .masking\.spam."):
        load_model_config(bad)


@pytest.mark.parametrize("name", ["tiny", "base", "w2v-bert-xl"])
def test_presets_load(name: str) -> None:
    cfg = load_model_config(PRESETS / f"{name}.yaml")
    assert cfg.encoder.pos_encoding == "shaw"
    if name == "w2v-bert-xl":
        assert (cfg.encoder.d_model, cfg.encoder.num_heads, cfg.encoder.ffn_dim, cfg.encoder.conv_kernel) == (1024, 8, 4096, 5)
        assert (cfg.contrastive.num_layers, cfg.mlm.num_layers) == (12, 12)
        assert (cfg.decoder.num_layers, cfg.decoder.hidden_dim) == (2, 640)
        assert (cfg.quantizer.num_codebooks, cfg.quantizer.codebook_size) == (1, 1024)


def test_model_info_counts_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from just_asr.cli.main import main
    from just_asr.cli.model_info import count_parameters

    xl = count_parameters(str(PRESETS / "w2v-bert-xl.yaml"), 1024)
    assert 0.55e9 <= xl["total"] <= 0.65e9
    parts = ["frontend", "contrastive_stack", "mlm_stack", "quantizer", "heads", "predictor", "joiner"]
    assert sum(xl[p] for p in parts) == xl["total"]
    # 12 identical blocks per stack
    assert xl["contrastive_stack"] == xl["mlm_stack"]
    base = count_parameters(str(PRESETS / "base.yaml"), 1024)
    assert 0.08e9 <= base["total"] <= 0.13e9
    tiny = count_parameters(str(PRESETS / "tiny.yaml"), 256)
    assert 1e6 <= tiny["total"] <= 8e6
    assert main(["model-info", "--config", str(PRESETS / "tiny.yaml"), "--vocab-size", "256"]) == 0
    text = capsys.readouterr().out
    assert "mlm_stack" in text and f"{tiny['total']:,}" in text


def test_model_info_names_an_unreadable_config(tmp_path) -> None:
    from just_asr.cli.main import main

    binary = tmp_path / "audio.flac"
    binary.write_bytes(b"fLaC\x00\xff\xfe" * 8)
    for path, message in [(binary, "audio.flac: not a UTF-8 text file"), (tmp_path, "is a folder, not a model config")]:
        with pytest.raises(SystemExit) as exit_info:  # model-info exits with the message (status 1)
            main(["model-info", "--config", str(path)])
        assert message in str(exit_info.value.code)


# ---------------------------------------------------------------------------------------- front ends


def test_conv_frontend_lengths_match_outputs() -> None:
    torch.manual_seed(0)
    fe = ConvSubsampling(input_dim=80, channels=4, d_model=8).eval()
    for t in range(7, 40):
        y, n = fe(torch.randn(1, t, 80), torch.tensor([t]))
        assert y.shape[1] == int(n) == ((t - 1) // 2 - 1) // 2  # formula = actual conv output length
        # each conv: floor((n - 3) / 2) + 1
        assert int(n) == ((t - 3) // 2 + 1 - 3) // 2 + 1
    with pytest.raises(ValueError, match="at least 7"):
        fe(torch.randn(2, 10, 80), torch.tensor([10, 6]))
    with pytest.raises(ValueError, match="bins per frame"):
        fe(torch.randn(2, 10, 40), torch.tensor([10, 10]))


def test_conv_frontend_three_layers_subsample_8x() -> None:
    torch.manual_seed(0)
    fe = ConvSubsampling(input_dim=80, channels=4, d_model=8, num_layers=3).eval()
    assert fe.subsampling == 8 and fe.min_input_frames == 15 and fe.freq_out == 9  # 80 -> 39 -> 19 -> 9
    for t in range(15, 80):
        y, n = fe(torch.randn(1, t, 80), torch.tensor([t]))
        assert y.shape[1] == int(n) == (((t - 1) // 2 - 1) // 2 - 1) // 2  # three convs, as actually computed
    assert fe.output_lengths(torch.tensor([800, 14, 0])).tolist() == [99, 0, 0]
    with pytest.raises(ValueError, match="at least 15"):
        fe(torch.randn(2, 20, 80), torch.tensor([20, 14]))
    with pytest.raises(ValueError, match="must be 2 or 3"):
        ConvSubsampling(80, 4, 8, num_layers=4)
    with pytest.raises(ValueError, match=r"'frontend\.conv_layers' must be 2"):
        ModelConfig.from_dict({"frontend": {"conv_layers": 4}})
    with pytest.raises(ValueError, match=r"'frontend\.input_dim' must be >= 15"):
        ModelConfig.from_dict({"frontend": {"conv_layers": 3, "input_dim": 10}})


def test_stack_frontend_is_layernorm_plus_projection_of_stacked_frames() -> None:
    torch.manual_seed(0)
    fe = StackedProjection(input_dim=80, stack_frames=2, d_model=8).eval()
    x = torch.randn(1, 11, 80)
    y, n = fe(x, torch.tensor([11]))
    assert y.shape[1] == int(n) == 5
    stacked = torch.cat([x[0, 0::2][:5], x[0, 1::2][:5]], dim=-1)  # frame 2t and 2t+1 side by side
    ref = fe.projection(torch.nn.functional.layer_norm(stacked, (160,), fe.layer_norm.weight, fe.layer_norm.bias))
    torch.testing.assert_close(y[0], ref)


@pytest.mark.parametrize("kind", ["conv2d", "conv2d-8x", "stack"])
@pytest.mark.parametrize("conv_norm,causal", [("layer", False), ("batch", True)])
def test_encoder_padding_invariance(kind: str, conv_norm: str, causal: bool) -> None:
    """Eval mode: an utterance's outputs in a padded batch equal its outputs alone."""
    torch.manual_seed(1)
    ecfg = small_encoder(conv_norm=conv_norm, conv_causal=causal)
    fe = {
        "conv2d": lambda: ConvSubsampling(80, 4, 16),
        "conv2d-8x": lambda: ConvSubsampling(80, 4, 16, num_layers=3),
        "stack": lambda: StackedProjection(80, 2, 16),
    }[kind]().eval()
    stack = ConformerStack(ecfg, 2).eval()
    if conv_norm == "batch":  # non-trivial running statistics
        for layer in stack.layers:
            bn = layer.conv_module.depthwise_batch_norm
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    lens = torch.tensor([61, 30, 45])
    feats = torch.randn(3, 61, 80)
    for b in range(3):
        feats[b, lens[b]:] = 100.0  # padded garbage must not leak
    with torch.no_grad():
        x, xl = fe(feats, lens)
        y = stack(x, xl)
        for b in range(3):
            xa, xla = fe(feats[b : b + 1, : lens[b]], lens[b : b + 1])
            ya = stack(xa, xla)
            assert int(xla) == int(xl[b])
            torch.testing.assert_close(y[b, : xl[b]], ya[0], atol=1e-5, rtol=1e-5)
            assert torch.all(y[b, xl[b]:] == 0)


def test_masked_batch_norm_training_is_padding_invariant() -> None:
    """Training mode with conv_norm=batch: extra padding does not change valid outputs, and the
    statistics equal those of nn.BatchNorm1d over the concatenated valid frames."""
    torch.manual_seed(2)
    c = 6
    x = torch.randn(3, c, 9)
    lens = torch.tensor([9, 4, 7])
    valid = torch.arange(9)[None] < lens[:, None]
    mbn = MaskedBatchNorm1d(c)
    ref = torch.nn.BatchNorm1d(c)
    y = mbn(x, valid)
    flat = torch.cat([x[b, :, : lens[b]] for b in range(3)], dim=1).unsqueeze(0)  # (1, C, N)
    y_ref = ref(flat)[0]
    torch.testing.assert_close(torch.cat([y[b, :, : lens[b]] for b in range(3)], dim=1), y_ref)
    torch.testing.assert_close(mbn.running_mean, ref.running_mean)
    torch.testing.assert_close(mbn.running_var, ref.running_var)
    # more padding with garbage: identical valid outputs
    x2 = torch.cat([x, torch.full((3, c, 5), 50.0)], dim=2)
    valid2 = torch.arange(14)[None] < lens[:, None]
    y2 = MaskedBatchNorm1d(c)(x2, valid2)
    torch.testing.assert_close(y2[:, :, :9][valid.unsqueeze(1).expand(-1, c, -1)], y[valid.unsqueeze(1).expand(-1, c, -1)])

    ecfg = small_encoder(conv_norm="batch")
    stack = ConformerStack(ecfg, 2).train()
    h = torch.randn(2, 10, 16)
    hl = torch.tensor([10, 6])
    out = stack(h, hl)
    out_pad = stack(torch.cat([h, torch.randn(2, 7, 16) * 30], dim=1), hl)
    for b in range(2):
        torch.testing.assert_close(out[b, : hl[b]], out_pad[b, : hl[b]], atol=1e-5, rtol=1e-5)


def test_conv_module_zeroes_padding_before_depthwise() -> None:
    torch.manual_seed(3)
    mod = ConvModule(8, kernel_size=7, bias=True).eval()
    x = torch.randn(1, 12, 8)
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[:, 9:] = False
    y1 = mod(x, valid)
    x2 = x.clone()
    x2[:, 9:] = 1e3
    y2 = mod(x2, valid)
    torch.testing.assert_close(y1[:, :9], y2[:, :9])
    # equals running the 9 valid frames alone (zero padding at the sequence end)
    y3 = mod(x[:, :9], torch.ones(1, 9, dtype=torch.bool))
    torch.testing.assert_close(y1[:, :9], y3)


# ---------------------------------------------------------------------------------------- attention


def naive_shaw_attention(attn: RelativeSelfAttention, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Explicit loops over batch, head, query and key (HF relative_key formulation)."""
    b, t, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    q = attn.linear_q(x).view(b, t, h, dh)
    k = attn.linear_k(x).view(b, t, h, dh)
    v = attn.linear_v(x).view(b, t, h, dh)
    emb = attn.distance_embedding.weight
    out = torch.zeros(b, t, h, dh)
    for bi in range(b):
        n = int(lens[bi])
        for hi in range(h):
            for i in range(t):
                scores = []
                for j in range(n):
                    dist = min(max(j - i, -attn.left_max_position), attn.right_max_position)
                    r = emb[dist + attn.left_max_position]
                    scores.append((q[bi, i, hi] @ k[bi, j, hi] + q[bi, i, hi] @ r) / math.sqrt(dh))
                p = torch.softmax(torch.stack(scores), dim=0)
                out[bi, i, hi] = sum(p[j] * v[bi, j, hi] for j in range(n))
    return attn.linear_out(out.reshape(b, t, d))


def test_shaw_attention_matches_naive_loop() -> None:
    torch.manual_seed(4)
    attn = RelativeSelfAttention(8, 2, 0.0, "shaw", left_max_position=3, right_max_position=2).eval()
    torch.nn.init.normal_(attn.distance_embedding.weight, std=1.0)
    x = torch.randn(2, 9, 8)
    lens = torch.tensor([9, 6])
    valid = torch.arange(9)[None] < lens[:, None]
    y = attn(x, valid)
    y_ref = naive_shaw_attention(attn, x, lens)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    # gradients w.r.t. the distance table agree too (the Shaw term goes through SDPA's float mask)
    w = torch.randn_like(y)
    g1 = torch.autograd.grad((y * w).sum(), attn.distance_embedding.weight)[0]
    g2 = torch.autograd.grad((y_ref * w).sum(), attn.distance_embedding.weight)[0]
    torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)
    assert g1.abs().sum() > 0
    # clipping matters: positions beyond +-clip share one embedding
    assert g1.shape == (3 + 2 + 1, 4)


@pytest.mark.parametrize(
    "t,left,right",
    [(7, 2, 1), (5, 8, 3), (9, 3, 12), (4, 0, 2), (4, 2, 0), (6, 0, 0), (33, 4, 2), (1, 3, 2), (12, 64, 8)],
)
def test_clipped_relative_gather_backward_equals_scatter(t: int, left: int, right: int) -> None:
    """The atomic-free backward (running sums for the clipped slots) gives the gradient of the plain
    gather, whose backward is a scatter_add: short sequences, clip distances beyond T, zero clips."""
    g = torch.Generator().manual_seed(t * 100 + left * 10 + right)
    rel = torch.randn(2, 3, t, left + right + 1, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, t, t, generator=g, dtype=torch.float64)
    out = clipped_relative_gather(rel, left, right, atomic_free=True)  # the default on GPUs
    (grad,) = torch.autograd.grad((out * w).sum(), rel)
    idx = relative_position_index(t, t, left, right, rel.device)
    ref_out = rel.gather(-1, idx.expand(2, 3, t, t))
    (ref,) = torch.autograd.grad((ref_out * w).sum(), rel)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad, ref, atol=1e-12, rtol=1e-12)
    # by hand: the first slot collects every key at distance <= -left from its query
    i = t - 1
    by_hand = sum(float(w[0, 0, i, j]) for j in range(t) if j - i <= -left)
    if left + right > 0:
        assert abs(float(grad[0, 0, i, 0]) - by_hand) < 1e-12
    if t > 2:
        assert torch.autograd.gradcheck(lambda r: clipped_relative_gather(r, left, right, atomic_free=True),
                                        (rel[:1, :1, :3].detach().clone().requires_grad_(),))


def test_clipped_relative_gather_function_needs_two_slots() -> None:
    """With one slot both clipped sums would be the same slot: the Function refuses, the public
    wrapper takes the plain gather (whose gradient is then the row sum)."""
    from just_asr.model.conformer import _ClippedRelativeGather

    rel = torch.randn(1, 1, 3, 1, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="P >= 2"):
        _ClippedRelativeGather.apply(rel, 0, 0)
    (grad,) = torch.autograd.grad(clipped_relative_gather(rel, 0, 0, atomic_free=True).sum(), rel)
    assert torch.equal(grad, torch.full_like(rel, 3.0))


def test_clipped_relative_gather_picks_the_backward_by_device() -> None:
    """CPU: the plain gather (its backward is the scatter); asked for, or on a GPU: the Function."""
    rel = torch.randn(1, 2, 5, 4, requires_grad=True)
    assert clipped_relative_gather(rel, 2, 1).grad_fn.name() == "GatherBackward0"
    assert "ClippedRelativeGather" in clipped_relative_gather(rel, 2, 1, atomic_free=True).grad_fn.name()


def test_no_position_attention_matches_naive_loop() -> None:
    torch.manual_seed(5)
    attn = RelativeSelfAttention(8, 2, 0.0, "none").eval()
    x = torch.randn(2, 5, 8)
    lens = torch.tensor([5, 3])
    y = attn(x, torch.arange(5)[None] < lens[:, None])
    for b in range(2):
        n = int(lens[b])
        q = attn.linear_q(x[b, :]).view(5, 2, 4).transpose(0, 1)
        k = attn.linear_k(x[b, :n]).view(n, 2, 4).transpose(0, 1)
        v = attn.linear_v(x[b, :n]).view(n, 2, 4).transpose(0, 1)
        p = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1)
        ref = attn.linear_out((p @ v).transpose(0, 1).reshape(5, 8))
        torch.testing.assert_close(y[b], ref, atol=1e-5, rtol=1e-5)


def test_block_parameters_use_hf_w2v_bert_names_and_shapes() -> None:
    """A w2v-BERT 2.0-style block (causal conv, no conv bias) has exactly the parameter names and
    shapes of HF ``Wav2Vec2BertEncoderLayer`` (relative_key), so its weights load by renaming."""
    d, heads, ffn, k = 32, 4, 64, 31
    cfg = EncoderConfig(d_model=d, num_heads=heads, ffn_dim=ffn, conv_kernel=k, conv_causal=True, conv_bias=False,
                        left_max_position=64, right_max_position=8)
    block = ConformerStack(cfg, 1).layers[0]
    expected = {
        "ffn1_layer_norm.weight": (d,), "ffn1_layer_norm.bias": (d,),
        "ffn1.intermediate_dense.weight": (ffn, d), "ffn1.intermediate_dense.bias": (ffn,),
        "ffn1.output_dense.weight": (d, ffn), "ffn1.output_dense.bias": (d,),
        "self_attn_layer_norm.weight": (d,), "self_attn_layer_norm.bias": (d,),
        **{f"self_attn.linear_{n}.weight": (d, d) for n in "qkv"},
        **{f"self_attn.linear_{n}.bias": (d,) for n in "qkv"},
        "self_attn.linear_out.weight": (d, d), "self_attn.linear_out.bias": (d,),
        "self_attn.distance_embedding.weight": (64 + 8 + 1, d // heads),
        "conv_module.layer_norm.weight": (d,), "conv_module.layer_norm.bias": (d,),
        "conv_module.pointwise_conv1.weight": (2 * d, d, 1),
        "conv_module.depthwise_conv.weight": (d, 1, k),
        "conv_module.depthwise_layer_norm.weight": (d,), "conv_module.depthwise_layer_norm.bias": (d,),
        "conv_module.pointwise_conv2.weight": (d, d, 1),
        "ffn2_layer_norm.weight": (d,), "ffn2_layer_norm.bias": (d,),
        "ffn2.intermediate_dense.weight": (ffn, d), "ffn2.intermediate_dense.bias": (ffn,),
        "ffn2.output_dense.weight": (d, ffn), "ffn2.output_dense.bias": (d,),
        "final_layer_norm.weight": (d,), "final_layer_norm.bias": (d,),
    }
    got = {name: tuple(t.shape) for name, t in block.state_dict().items()}
    assert got == expected
    # causal depthwise conv: output at frame t does not depend on frames after t
    block.eval()
    x = torch.randn(1, 12, d)
    valid = torch.ones(1, 12, dtype=torch.bool)
    y1 = block.conv_module(x, valid)
    x2 = x.clone()
    x2[:, 7:] += 5.0
    y2 = block.conv_module(x2, valid)
    torch.testing.assert_close(y1[:, :7], y2[:, :7])
    assert not torch.allclose(y1[:, 7:], y2[:, 7:])


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad2.yaml"
    bad.write_text("model:\n  arch:\n    encoder:\n      d_model: 64\n      num_heads: 5\n    rnnt_branch: sideways\n")
    with pytest.raises(ValueError, match=r"bad2\.yaml:6: 'rnnt_branch' must be one of"):
        load_model_config(bad)
    bad.write_text("model:\n  arch:\n    encoder:\n      d_model: 64\n      num_heads: 5\n")
    with pytest.raises(ValueError, match=r"bad2\.yaml:5: 'encoder\.num_heads' must divide"):
        load_model_config(bad)
    bad.write_text("model:\n  arch:\n    encoder: [1, 2\n")
    with pytest.raises(ValueError, match=r"bad2\.yaml: invalid YAML at line 4, column 1: ") as info:
        load_model_config(bad)
    assert "\n" not in str(info.value) and "<unicode string>" not in str(info.value)
    bad.write_text("model:\n  arch: \x07\n")  # a character YAML does not accept: a ReaderError
    with pytest.raises(ValueError, match=r"bad2\.yaml: invalid YAML at character 16: unacceptable character") as info:
        load_model_config(bad)
    assert "\n" not in str(info.value) and "<unicode string>" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_model_config(tmp_path / "nope.yaml")
