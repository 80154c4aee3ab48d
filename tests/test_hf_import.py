"""Importing a Hugging Face ``Wav2Vec2BertModel`` (w2v-BERT 2.0) and the SeamlessM4T features.

The reference is ``transformers`` itself: small random ``Wav2Vec2BertModel``s with the public
model's structural options (relative_key positions with left/right clipping, causal depthwise conv,
no conv biases), saved with ``save_pretrained`` (safetensors), imported, and compared on the same
padded batch. Tests that need ``transformers`` skip without it (the ``hf`` extra).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from just_asr.data.seamless_features import (
    FEATURE_TYPE,
    log_mel_fbank,
    mel_filters,
    normalize_per_utterance,
    num_frames,
    pad_batch,
    seamless_fbank,
    stack_frames,
)
from just_asr.hf_import import HfImportError, hf_config_to_model_config, import_w2v_bert, map_hf_key
from just_asr.model import JustModel, load_model_config

REPO = Path(__file__).resolve().parents[1]
#: a scaled-down public config: same structural options, tiny widths, clipping 6 left / 2 right
TINY_HF = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
    conv_depthwise_kernel_size=7, left_max_position_embeddings=6, right_max_position_embeddings=2,
    position_embeddings_type="relative_key", hidden_act="swish", feature_projection_input_dim=160,
)


def _waves(seed: int = 0) -> list[np.ndarray]:
    """Three test waveforms: a tone in noise (1 s), white noise (odd length), a short chirp."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(16000)
    noise = 0.1 * rng.standard_normal(12345)
    tc = np.arange(7001) / 16000
    chirp = 0.2 * np.sin(2 * np.pi * (200 + 3000 * tc) * tc) + 0.005 * rng.standard_normal(7001)
    return [w.astype(np.float32) for w in (tone, noise, chirp)]


def _random_hf_model(tmp_path: Path, name: str = "hf", model_cls: str = "Wav2Vec2BertModel", **overrides):
    """Build, perturb (so norms and biases are not identities) and save a tiny HF model."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2BertConfig(**{**TINY_HF, **overrides})
    model = getattr(transformers, model_cls)(cfg)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "layer_norm" in pname or pname.endswith(".bias"):
                p.add_(0.2 * torch.randn_like(p))
    model.eval()
    out = tmp_path / name
    model.save_pretrained(out, safe_serialization=True)
    assert (out / "model.safetensors").is_file()
    return model, out


# ------------------------------------------------------------------------------------------------
# features


def test_feature_framing_and_one_frame_by_brute_force() -> None:
    """Frame counts follow snip-edges framing, and frame 0 equals an independent loop implementation
    of the recipe (DC removal, pre-emphasis, Povey window, 512-point DFT, Kaldi mel triangles)."""
    assert [num_frames(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
    w = _waves()[1]
    feats = log_mel_fbank(w)
    assert feats.shape == (num_frames(len(w)), 80) == (75, 80)

    x = [float(v) * 32768.0 for v in w[:400]]
    mean = sum(x) / 400
    x = [v - mean for v in x]
    x = [x[0] * (1 - 0.97)] + [x[n] - 0.97 * x[n - 1] for n in range(1, 400)]
    x = [x[n] * (0.5 - 0.5 * math.cos(2 * math.pi * n / 399)) ** 0.85 for n in range(400)]
    n = np.arange(400)
    power = []
    for k in range(257):
        re = float(np.dot(x, np.cos(2 * np.pi * k * n / 512)))
        im = float(np.dot(x, np.sin(2 * np.pi * k * n / 512)))
        power.append(re * re + im * im)

    def mel(f: float) -> float:
        return 1127.0 * math.log(1 + f / 700.0)

    lo, hi = mel(20.0), mel(8000.0)
    step = (hi - lo) / 81
    expected = []
    for m in range(80):
        left, centre, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        energy = 0.0
        for k in range(257):
            b = mel(k * 16000 / 512)
            if left < b < right:
                energy += power[k] * ((b - left) / (centre - left) if b <= centre else (right - b) / (right - centre))
        expected.append(math.log(max(energy, 1.192092955078125e-07)))
    np.testing.assert_allclose(feats[0], expected, rtol=1e-5, atol=1e-5)
    # every filter peaks at 1 only near its centre and is zero outside its two neighbours' centres
    fb = mel_filters()
    assert fb.shape == (257, 80) and fb.max() <= 1.0 and (fb.sum(axis=0) > 0).all()


def test_per_utterance_normalisation_and_stacking() -> None:
    w = _waves()[1]  # noise: every bin well spread, so float32 rounding stays ~1e-6
    raw = log_mel_fbank(w)
    f = seamless_fbank(w, 16000).numpy()
    # (x - mean) / sqrt(unbiased var + 1e-7) per bin, by hand in float64
    mean, var = raw.mean(axis=0), raw.var(axis=0, ddof=1)
    np.testing.assert_allclose(f, (raw - mean) / np.sqrt(var + 1e-7), atol=2e-5)
    np.testing.assert_allclose(f.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(f, normalize_per_utterance(raw), atol=0)
    # resampling and stereo go through the same path as load_audio
    stereo = np.stack([w, w], axis=1)
    np.testing.assert_allclose(seamless_fbank(stereo, 16000).numpy(), f, atol=1e-6)
    assert seamless_fbank(np.repeat(w, 2), 32000).shape[0] == f.shape[0]
    # stacking: frames 2k and 2k+1 side by side, odd tails dropped, lengths halved
    feats, lens = pad_batch([torch.arange(10.0).view(5, 2), torch.arange(8.0).view(4, 2) + 100])
    stacked, slens = stack_frames(feats, lens)
    assert stacked.shape == (2, 2, 4) and slens.tolist() == [2, 2]
    assert stacked[0, 1].tolist() == [4.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="needs at least 560"):
        seamless_fbank(np.zeros(559, dtype=np.float32), 16000)


def test_features_equal_seamless_m4t_feature_extractor() -> None:
    transformers = pytest.importorskip("transformers")
    fe = transformers.SeamlessM4TFeatureExtractor()
    waves = _waves()
    ref = fe(waves, sampling_rate=16000, return_tensors="pt")
    feats, lens = pad_batch([seamless_fbank(w, 16000) for w in waves])
    assert lens.tolist() == [num_frames(len(w)) for w in waves] == [98, 75, 42]
    stacked, slens = stack_frames(feats, lens)
    mask = ref["attention_mask"].bool()
    assert mask.sum(dim=1).tolist() == slens.tolist()
    t = stacked.shape[1]
    assert ref["input_features"].shape[1] >= t and not mask[:, t:].any()
    valid = mask[:, :t]
    diff = (ref["input_features"][:, :t] - stacked).abs()[valid]
    assert diff.max() <= 1e-6, float(diff.max())


# ------------------------------------------------------------------------------------------------
# encoder import


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (9000, 5000, 3321)]
    return pad_batch([seamless_fbank(w, 16000) for w in waves])


def _hf_hidden(model, feats: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    stacked, slens = stack_frames(feats, lens)
    mask = (torch.arange(stacked.shape[1])[None, :] < slens[:, None]).long()
    with torch.no_grad():
        return model(input_features=stacked, attention_mask=mask).last_hidden_state


def test_imported_encoder_equals_hf_on_padded_batch(tmp_path: Path) -> None:
    hf, hf_dir = _random_hf_model(tmp_path)
    feats, lens = _batch()
    res = import_w2v_bert(hf_dir, vocab_size=11, contrastive_layers=2)
    cfg = res.config
    assert (cfg.contrastive.num_layers, cfg.mlm.num_layers) == (2, 2)
    assert cfg.frontend.kind == "stack" and cfg.encoder.conv_causal and not cfg.encoder.conv_bias
    assert (cfg.encoder.left_max_position, cfg.encoder.right_max_position) == (6, 2)
    # every HF tensor found a home; exactly the non-encoder parts are fresh
    assert res.unused == {}
    hf_names = set(hf.state_dict())
    assert set(res.imported.values()) == hf_names
    own = set(res.model.state_dict())
    encoder = ("frontend.", "contrastive_stack.", "mlm_stack.", "masker.")
    assert set(res.fresh) == {k for k in own if not k.startswith(encoder)}
    assert {k.split(".")[0] for k in res.fresh} >= {"quantizer", "context_proj", "target_proj", "mlm_head",
                                                     "predictor", "joiner"}
    torch.testing.assert_close(res.model.masker.mask_embedding.detach(), hf.masked_spec_embed.detach())
    torch.testing.assert_close(
        res.model.mlm_stack.layers[1].self_attn.distance_embedding.weight.detach(),
        hf.encoder.layers[3].self_attn.distance_embedding.weight.detach(),
    )

    ref = _hf_hidden(hf, feats, lens)
    with torch.no_grad():
        ours, our_lens = res.model.encode(feats, lens)
    assert our_lens.tolist() == (lens // 2).tolist() == [27, 14, 9]
    assert our_lens.max() > 6 + 2 + 1  # long enough to exercise both clipping distances
    for b, n in enumerate(our_lens.tolist()):
        err = (ours[b, :n] - ref[b, :n]).abs().max()
        assert err <= 1e-4, (b, float(err))
        # the same utterance alone (no padding) gives the same frames
        with torch.no_grad():
            alone, _ = res.model.encode(feats[b : b + 1, : int(lens[b])], lens[b : b + 1])
        assert (alone[0, :n] - ours[b, :n]).abs().max() <= 1e-5
    # the split only names the stacks: another split computes the same function
    res0 = import_w2v_bert(hf_dir, vocab_size=11, contrastive_layers=0)
    with torch.no_grad():
        ours0, _ = res0.model.encode(feats, lens)
    torch.testing.assert_close(ours0, ours, atol=1e-6, rtol=0)


def test_task_model_prefix_stripped_and_head_reported_unused(tmp_path: Path) -> None:
    ctc, hf_dir = _random_hf_model(tmp_path, "ctc", model_cls="Wav2Vec2BertForCTC", vocab_size=7)
    res = import_w2v_bert(hf_dir, vocab_size=5, mask_replace="noise")
    assert (res.config.contrastive.num_layers, res.config.mlm.num_layers) == (1, 3)  # 4 layers: a third
    assert res.config.masking.replace == "noise"
    assert set(res.unused) == {"lm_head.weight", "lm_head.bias", "wav2vec2_bert.masked_spec_embed"}
    assert "masking.replace is 'noise'" in res.unused["wav2vec2_bert.masked_spec_embed"]
    assert all(v.startswith("wav2vec2_bert.") for v in res.imported.values())
    feats, lens = _batch(1)
    ref = _hf_hidden(ctc.wav2vec2_bert, feats, lens)
    with torch.no_grad():
        ours, n = res.model.encode(feats, lens)
    valid = torch.arange(ours.shape[1])[None, :] < n[:, None]
    assert (ours - ref).abs()[valid].max() <= 1e-4


def test_public_preset_is_the_translation_of_the_public_config() -> None:
    """configs/model/w2v-bert-2.0.yaml == what the import derives from Wav2Vec2BertConfig() (whose
    defaults are facebook/w2v-bert-2.0's), and the encoder has exactly HF's parameter count."""
    transformers = pytest.importorskip("transformers")
    preset = load_model_config(REPO / "configs/model/w2v-bert-2.0.yaml")
    hf_cfg = transformers.Wav2Vec2BertConfig().to_dict()
    translated, notes = hf_config_to_model_config(hf_cfg, 8, base=preset, mask_replace="learned")
    assert translated == preset
    assert any("layerdrop=0.1" in n for n in notes)
    with torch.device("meta"):
        ours = JustModel(preset, vocab_size=1024)
        ref = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig())
    counts = ours.component_parameters()
    encoder = counts["frontend"] + counts["contrastive_stack"] + counts["mlm_stack"] + preset.encoder.d_model
    assert encoder == sum(p.numel() for p in ref.parameters()) == 580_493_120


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("add_adapter", True, "'add_adapter' = True: the adapter"),
        ("use_intermediate_ffn_before_adapter", True, "intermediate_ffn_before_adapter' = True"),
        ("position_embeddings_type", "rotary", "only 'relative_key'"),
        ("position_embeddings_type", "relative", "Transformer-XL"),
        ("hidden_act", "tanh", "supported activations"),
        ("conv_depthwise_kernel_size", 8, "positive odd"),
    ],
)
def test_inexpressible_options_are_refused(key: str, value, match: str) -> None:
    cfg = {"model_type": "wav2vec2-bert", **TINY_HF, key: value}
    with pytest.raises(HfImportError, match=match) as info:
        hf_config_to_model_config(cfg, 1, source="/x/config.json")
    assert str(info.value).startswith("/x/config.json: ")


def test_bad_directories_name_the_file(tmp_path: Path) -> None:
    _, hf_dir = _random_hf_model(tmp_path)
    with pytest.raises(HfImportError, match="nowhere: Hugging Face model directory not found"):
        import_w2v_bert(tmp_path / "nowhere", vocab_size=5)
    # wrong model type
    other = tmp_path / "other"
    shutil.copytree(hf_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "wav2vec2"}))
    with pytest.raises(HfImportError, match=r"other/config\.json: model_type is 'wav2vec2'"):
        import_w2v_bert(other, vocab_size=5)
    (other / "config.json").write_text("{\n  \"model_type\": \n")
    with pytest.raises(HfImportError, match=r"other/config\.json:3: invalid JSON"):
        import_w2v_bert(other, vocab_size=5)
    # pickle only: refused, never loaded
    pick = tmp_path / "pickle"
    pick.mkdir()
    shutil.copy(hf_dir / "config.json", pick / "config.json")
    (pick / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(HfImportError, match=r"no safetensors weights .*pytorch_model\.bin \(pickle\)"):
        import_w2v_bert(pick, vocab_size=5)
    # a truncated checkpoint (one encoder tensor missing) and a misshapen tensor
    from safetensors.torch import load_file, save_file

    state = load_file(str(hf_dir / "model.safetensors"))
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    shutil.copy(hf_dir / "config.json", trunc / "config.json")
    save_file({k: v for k, v in state.items() if k != "encoder.layers.3.ffn2.output_dense.bias"},
              str(trunc / "model.safetensors"))
    with pytest.raises(HfImportError, match=r"model\.safetensors: the checkpoint lacks 1 encoder tensors .*mlm_stack\.layers\.\d\.ffn2\.output_dense\.bias"):
        import_w2v_bert(trunc, vocab_size=5)
    bad = dict(state)
    bad["encoder.layers.0.self_attn.distance_embedding.weight"] = torch.zeros(5, 8)
    save_file(bad, str(trunc / "model.safetensors"))
    with pytest.raises(HfImportError, match=r"distance_embedding\.weight' has shape \(5, 8\) but .*config\.json implies \(9, 8\)"):
        import_w2v_bert(trunc, vocab_size=5)
    with pytest.raises(HfImportError, match="contrastive_layers=5 must be between 0 and num_hidden_layers=4"):
        import_w2v_bert(hf_dir, vocab_size=5, contrastive_layers=5)
    with pytest.raises(HfImportError, match="give a tokenizer or vocab_size"):
        import_w2v_bert(hf_dir)


def test_key_mapping_table() -> None:
    assert map_hf_key("feature_projection.projection.weight", 8, "learned") == ("frontend.projection.weight", "")
    assert map_hf_key("encoder.layers.7.self_attn.linear_q.bias", 8, "noise")[0] == "contrastive_stack.layers.7.self_attn.linear_q.bias"
    assert map_hf_key("wav2vec2_bert.encoder.layers.8.final_layer_norm.weight", 8, "noise")[0] == "mlm_stack.layers.0.final_layer_norm.weight"
    assert map_hf_key("masked_spec_embed", 8, "learned")[0] == "masker.mask_embedding"
    assert map_hf_key("lm_head.weight", 8, "learned") == (None, "no counterpart in JustModel")


# ------------------------------------------------------------------------------------------------
# command line and model directory


def test_cli_writes_a_model_directory(tmp_path: Path, capsys) -> None:
    from just_asr.cli.main import main
    from just_asr.train.module import read_source_weights

    hf, hf_dir = _random_hf_model(tmp_path)
    out = tmp_path / "imported"
    rc = main(["import-w2v-bert", str(hf_dir), str(out), "--vocab-size", "12", "--contrastive-layers", "3", "--verify"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "imported (133 tensors):" in printed  # 2 + 2 front end, 1 mask vector, 4 x 32 per layer
    n_fresh = len(JustModel(load_model_config(out / "model_arch.yaml"), 12).state_dict()) - 133
    assert f"fresh (initialised randomly) ({n_fresh} tensors):" in printed and "  joiner.output.weight" in printed
    assert "unused (in the checkpoint, not loaded) (0 tensors):" in printed
    assert "mlm_stack.layers.0.ffn1.intermediate_dense.weight <- encoder.layers.3.ffn1.intermediate_dense.weight" in printed
    verify = [line for line in printed.splitlines() if line.startswith("verify:")]
    assert len(verify) == 1 and float(verify[0].rsplit("=", 1)[1]) <= 1e-4

    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "import_report.json", "model.safetensors", "model_arch.yaml"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["vocab_size"] == 12 and config["features"]["type"] == FEATURE_TYPE and config["features"]["cmvn"] is False
    assert config["extra"]["import"]["contrastive_layers"] == 3
    report = json.loads((out / "import_report.json").read_text())
    assert len(report["imported"]) == 133 and report["mlm_layers"] == 1
    arch = load_model_config(out / "model_arch.yaml")
    assert arch.to_dict() == config["model"]
    # the weights reload strictly into a model built from the written config (and via init_from's reader)
    model = JustModel(arch, 12).eval()
    model.load_state_dict(read_source_weights(out), strict=True)
    feats, lens = _batch(2)
    ref = _hf_hidden(hf, feats, lens)
    with torch.no_grad():
        ours, n = model.encode(feats, lens)
    valid = torch.arange(ours.shape[1])[None, :] < n[:, None]
    assert (ours - ref).abs()[valid].max() <= 1e-4

    with pytest.raises(SystemExit, match=r"import-w2v-bert: .*config\.json: model_type"):
        bad = tmp_path / "bad"
        shutil.copytree(hf_dir, bad)
        (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
        main(["import-w2v-bert", str(bad), str(tmp_path / "o2"), "--vocab-size", "12"])


def _tokenizer(tmp_path: Path, texts: list[str]) -> Path:
    from just_asr.data.tokenizer import train_tokenizer

    return train_tokenizer({"pl": texts}, tmp_path / "tok", vocab_size=40, required_langs=["pl"])


def test_import_with_tokenizer_copies_it(tmp_path: Path) -> None:
    from just_asr.data.tokenizer import Tokenizer
    from just_asr.hf_import import write_model_dir

    _, hf_dir = _random_hf_model(tmp_path)
    tok = _tokenizer(tmp_path, ["ala ma kota", "kot ma ale", "zażółć gęślą jaźń"] * 20)
    vocab = Tokenizer(tok).vocab_size
    res = import_w2v_bert(hf_dir, tokenizer=tok)
    assert res.vocab_size == vocab and res.model.joiner.output.out_features == vocab
    with pytest.raises(HfImportError, match=f"tokenizer has {vocab} units but vocab_size=3"):
        import_w2v_bert(hf_dir, tokenizer=tok, vocab_size=3)
    out = write_model_dir(res, tmp_path / "with_tok")
    assert (out / "tokenizer.model").read_bytes() == tok.read_bytes()
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["features"]["type"] == FEATURE_TYPE and config["vocab_size"] == vocab
    # the inference layer must never load it as if it took lhotse fbank: it either knows the recipe
    # or refuses, naming the features setting
    from just_asr.inference import ModelDirError, load_model_dir

    try:
        loaded = load_model_dir(out)
    except ModelDirError as exc:
        assert "features.type" in str(exc) and FEATURE_TYPE in str(exc), str(exc)
    else:
        assert loaded.config["features"]["type"] == FEATURE_TYPE


# ------------------------------------------------------------------------------------------------
# fine-tuning from an import (the training layer's CLI)


@pytest.mark.slow
def test_just_finetune_from_small_import_runs(tmp_path: Path, tiny_corpus_dir: Path, capsys) -> None:
    """A few JUST fine-tuning steps on the tiny corpus from a small random import, through
    ``just-asr fit`` with configs/just-finetune-w2v-bert-2.yaml and ``--model.init_from``."""
    from just_asr.cli.fit import main as fit_main
    from just_asr.data.mls import prepare_mls
    from just_asr.hf_import import write_model_dir
    from just_asr.train.averaging import load_lightning_checkpoint, strip_prefix

    manifests = tmp_path / "manifests"
    prepare_mls(tiny_corpus_dir, manifests, langs=["pl"], progress=False)
    texts = [line.split("\t", 1)[1] for line in
             (tiny_corpus_dir / "mls_polish" / "train" / "transcripts.txt").read_text(encoding="utf-8").splitlines()]
    tok = _tokenizer(tmp_path, texts)
    _, hf_dir = _random_hf_model(tmp_path)
    res = import_w2v_bert(hf_dir, tokenizer=tok, contrastive_layers=2)
    out = write_model_dir(res, tmp_path / "import")
    capsys.readouterr()
    root = tmp_path / "run"
    rc = fit_main([
        "--config", str(out / "model_arch.yaml"), "--config", str(REPO / "configs/just-finetune-w2v-bert-2.yaml"),
        "--model.init_from", str(out), "--data.manifest_dir", str(manifests), "--data.tokenizer", str(tok),
        "--data.langs", "pl", "--data.num_workers", "0", "--data.max_duration", "20", "--data.max_dev_cuts_per_lang", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
        "--model.warmup_steps", "2", "--periodic_checkpoint.every_n_train_steps", "3",
    ])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    # init_from loaded everything but the excluded decoder (same arch and vocabulary as the import)
    own = res.model.state_dict()
    decoder = [k for k in own if k.startswith(("predictor.", "joiner."))]
    assert f"loaded  {len(own) - len(decoder)} tensors" in printed.out
    last = root / "checkpoints" / "last.ckpt"
    ckpt = load_lightning_checkpoint(last)
    assert ckpt["global_step"] == 3
    trained = strip_prefix(ckpt["state_dict"])
    encoder = [k for k in res.imported if k != "masker.mask_embedding"]
    moved = [k for k in encoder if not torch.equal(trained[k], own[k])]
    assert len(moved) >= len(encoder) // 2  # the encoder was trained ...
    for k in ("frontend.projection.weight", "mlm_stack.layers.1.self_attn.linear_q.weight"):
        rel = float((trained[k] - own[k]).norm() / own[k].norm())
        assert 0 < rel < 0.05, (k, rel)  # ... starting from the imported weights, not from scratch


# ------------------------------------------------------------------------------------------------
# refused inputs: output folder, config values, index, vocabulary size


def _fake_hf_dir(path: Path, **overrides) -> Path:
    """A folder with a Wav2Vec2BertModel config.json and placeholder weights (never read by the
    checks under test)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "wav2vec2-bert", **TINY_HF, **overrides}))
    (path / "model.safetensors").write_bytes(b"original weights")
    return path


def test_cli_refuses_to_write_into_a_hugging_face_directory(tmp_path: Path) -> None:
    from just_asr.cli.main import main

    hf_dir = _fake_hf_dir(tmp_path / "hf")
    (tmp_path / "link").symlink_to(hf_dir)
    for out in (hf_dir, tmp_path / "hf" / ".", tmp_path / "link"):
        with pytest.raises(SystemExit, match=r"^import-w2v-bert: .*: the output directory is the Hugging Face directory"):
            main(["import-w2v-bert", str(hf_dir), str(out), "--vocab-size", "12"])
    other = _fake_hf_dir(tmp_path / "other")
    with pytest.raises(SystemExit, match=r"^import-w2v-bert: .*other: holds a config\.json"):
        main(["import-w2v-bert", str(hf_dir), str(other), "--vocab-size", "12"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"file: exists and is not a directory"):
        main(["import-w2v-bert", str(hf_dir), str(tmp_path / "file"), "--vocab-size", "12"])
    # nothing was touched
    assert (hf_dir / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes() == b"original weights"
    assert sorted(p.name for p in hf_dir.iterdir()) == ["config.json", "model.safetensors"]
    # a new folder, or an existing just-asr model folder, is fine
    from just_asr.hf_import import check_output_dir

    check_output_dir(hf_dir, tmp_path / "new")
    (tmp_path / "just").mkdir()
    (tmp_path / "just" / "config.yaml").write_text("{}")
    check_output_dir(hf_dir, tmp_path / "just")


def test_import_into_an_existing_model_dir_removes_stale_tokenizer_files(tmp_path: Path) -> None:
    from just_asr.cli.main import main

    _, hf_dir = _random_hf_model(tmp_path)
    out = tmp_path / "exported"
    out.mkdir()
    for name in ("tokenizer.model", "tokenizer.json", "cmvn.json", "model.safetensors"):
        (out / name).write_text("from an earlier export")
    assert main(["import-w2v-bert", str(hf_dir), str(out), "--vocab-size", "12", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "import_report.json", "model.safetensors", "model_arch.yaml"]


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("hidden_size", [32], r"'hidden_size' = \[32\]: expected an integer"),
        ("hidden_size", "abc", r"'hidden_size' = 'abc': expected an integer"),
        ("hidden_size", 32.5, r"'hidden_size' = 32.5: expected an integer"),
        ("num_attention_heads", True, r"'num_attention_heads' = True: expected an integer"),
        ("layer_norm_eps", "1e-5", r"'layer_norm_eps' = '1e-5': expected a finite number"),
        ("hidden_dropout", float("nan"), r"'hidden_dropout' = nan: expected a finite number"),
        ("hidden_act", ["swish"], r"'hidden_act' = \['swish'\]: supported activations"),
    ],
)
def test_mistyped_config_values_name_the_file_and_key(tmp_path: Path, key: str, value, match: str) -> None:
    cfg = {"model_type": "wav2vec2-bert", **TINY_HF, key: value}
    with pytest.raises(HfImportError, match=match) as info:
        hf_config_to_model_config(cfg, 1, source="/x/config.json")
    assert str(info.value).startswith("/x/config.json: ")
    if key == "hidden_size":  # the same through the command line: one line, no traceback
        from just_asr.cli.main import main

        hf_dir = _fake_hf_dir(tmp_path / "hf", **{key: value})
        with pytest.raises(SystemExit, match=rf"^import-w2v-bert: {re.escape(str(hf_dir))}/config\.json: {match}"):
            main(["import-w2v-bert", str(hf_dir), str(tmp_path / "out"), "--vocab-size", "12"])
        assert not (tmp_path / "out").exists()


def test_non_utf8_config_names_the_file(tmp_path: Path) -> None:
    hf_dir = _fake_hf_dir(tmp_path / "hf")
    (hf_dir / "config.json").write_bytes(b'{"model_type": "wav2vec2-bert", "x": "\xff"}')
    with pytest.raises(HfImportError, match=r"hf/config\.json: not a UTF-8 text file \(invalid start byte at byte 38\)"):
        import_w2v_bert(hf_dir, vocab_size=5)


def test_bad_safetensors_index_names_the_file_and_key(tmp_path: Path) -> None:
    hf_dir = _fake_hf_dir(tmp_path / "hf")
    index = hf_dir / "model.safetensors.index.json"
    for weight_map, match in [
        ({"encoder.layers.0.ffn1.output_dense.bias": 3}, r"weight_map\['encoder\.layers\.0\.ffn1\.output_dense\.bias'\] = 3, expected a file name"),
        ({"masked_spec_embed": None}, r"weight_map\['masked_spec_embed'\] = None, expected a file name"),
        (["model.safetensors"], r"'weight_map' is a list, expected an object"),
        ({"masked_spec_embed": "/elsewhere/model.safetensors"}, r"weight_map\['masked_spec_embed'\] = '/elsewhere/model\.safetensors' points outside"),
        ({"masked_spec_embed": "../other/model.safetensors"}, r"weight_map\['masked_spec_embed'\] = '\.\./other/model\.safetensors' points outside"),
    ]:
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        with pytest.raises(HfImportError, match=r"hf/model\.safetensors\.index\.json: " + match):
            import_w2v_bert(hf_dir, vocab_size=5)
    index.write_bytes(b'{"weight_map": {"a": "\xff"}}')
    with pytest.raises(HfImportError, match=r"hf/model\.safetensors\.index\.json: not a safetensors index"):
        import_w2v_bert(hf_dir, vocab_size=5)


def test_a_config_that_does_not_describe_the_weights_is_refused_before_allocating(tmp_path: Path) -> None:
    """A mistyped hidden_size (2**20: its model would need terabytes) is a shape error naming the
    files, found on a meta-device model, not an allocation failure."""
    _, hf_dir = _random_hf_model(tmp_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "hidden_size": 2**20}))
    with pytest.raises(HfImportError, match=r"model\.safetensors: tensor '.*' has shape \(.*\) but .*config\.json implies \(.*1048576"):
        import_w2v_bert(hf_dir, vocab_size=5)


def test_vocab_size_has_an_upper_bound(tmp_path: Path) -> None:
    from just_asr.cli.main import main

    hf_dir = _fake_hf_dir(tmp_path / "hf")
    for n in ("100000000", "10000000000", "1"):
        with pytest.raises(SystemExit, match=r"^import-w2v-bert: --vocab-size must be between 2 and 1,000,000, got "):
            main(["import-w2v-bert", str(hf_dir), str(tmp_path / "out"), "--vocab-size", n])
    assert not (tmp_path / "out").exists()
    with pytest.raises(HfImportError, match=r"vocab_size must be <= 1,000,000 .*got 1,000,001"):
        import_w2v_bert(hf_dir, vocab_size=1_000_001)
