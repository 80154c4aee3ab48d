"""The SeamlessM4T feature recipe end to end: data batches (``feature_source="seamless"``), the
loaders, model directories (``features.type: seamless_fbank``), and the ``Transcriber``.

References: :func:`just_asr.data.seamless_features.seamless_fbank` on the same audio (itself
checked bit-exactly against ``SeamlessM4TFeatureExtractor`` in ``test_hf_import.py``), and, when
``transformers`` is installed, the Hugging Face ``Wav2Vec2BertModel`` fed by HF's own feature
extractor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from just_asr.data.audio import load_audio
from just_asr.data.dataset import AsrDataset
from just_asr.data.errors import ErrorCollector
from just_asr.data.features import (
    FEATURE_SOURCES,
    GlobalCMVN,
    check_feature_source,
    compute_and_store_features,
    cut_features,
    cut_num_frames,
    extract_fbank,
)
from just_asr.data.loader import make_eval_dataloader, make_train_dataloader
from just_asr.data.seamless_features import FEATURE_TYPE, num_frames, seamless_feature_settings, seamless_fbank
from just_asr.inference import (
    ModelDirError,
    Transcriber,
    feature_settings,
    feature_settings_for_source,
    load_model_dir,
    save_model_dir,
)

#: a tiny HF w2v-BERT 2.0 config with the public model's structural options (as test_hf_import.py)
TINY_HF = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48,
    conv_depthwise_kernel_size=7, left_max_position_embeddings=6, right_max_position_embeddings=2,
    position_embeddings_type="relative_key", hidden_act="swish", feature_projection_input_dim=160,
)
TEXTS = ["ala ma kota", "kot ma ale", "zażółć gęślą jaźń"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny tensor ops: one intra-op thread is faster on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _wave(n: int, sr: int, seed: int, channels: int = 1) -> np.ndarray:
    """Tone + chirp + noise, ``(n,)`` or ``(n, channels)`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.2 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.1 * np.sin(2 * np.pi * (500 + 900 * t) * t)
    x = x + 0.02 * rng.standard_normal(n)
    if channels > 1:
        x = np.stack([x * (0.6 + 0.3 * c) for c in range(channels)], axis=1)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> dict[str, Path]:
    """Four files: 16 kHz mono wav and flac of different lengths (one odd frame count), a 48 kHz
    stereo wav (resampled and averaged by load_audio), and a 20 ms file (too short: 320 samples).
    Odd frame counts (79, 49) check that the stacking drops the trailing frame."""
    root = tmp_path_factory.mktemp("seamless_audio")
    files = {
        "a": (_wave(13_001, 16000, 0), 16000, "a.wav", "FLOAT"),   # 79 frames
        "b": (_wave(8_123, 16000, 1), 16000, "b.flac", "PCM_16"),  # 49 frames
        "c": (_wave(21_000, 48000, 2, channels=2), 48000, "c.wav", "FLOAT"),  # 7000 samples at 16 kHz: 42 frames
        "short": (_wave(320, 16000, 3), 16000, "short.wav", "FLOAT"),
    }
    out = {}
    for key, (x, sr, name, subtype) in files.items():
        p = root / name
        sf.write(str(p), x, sr, subtype=subtype)
        out[key] = p
    return out


def _cuts(paths: list[Path], texts: list[str | None] | None = None):
    """One lhotse cut per file (the whole recording), with a Polish supervision."""
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts = []
    for i, p in enumerate(paths):
        rec = Recording.from_file(p, recording_id=p.stem)
        cut = rec.to_cut()
        text = (texts or TEXTS)[i % len(texts or TEXTS)]
        cut.supervisions = [SupervisionSegment(id=p.stem, recording_id=p.stem, start=0.0, duration=rec.duration,
                                               text=text, language="pl")]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def _reference(p: Path) -> torch.Tensor:
    return seamless_fbank(load_audio(p, 16000), 16000)


# ------------------------------------------------------------------------------------------------
# data layer


def test_dataset_batch_equals_seamless_fbank(audio) -> None:
    paths = [audio["a"], audio["b"], audio["c"]]
    cuts = _cuts(paths)
    batch = AsrDataset(None, feature_source="seamless")[cuts]
    assert batch["cut_ids"] == ["a", "b", "c"]
    # T = 1 + (N - 400) // 160 at 16 kHz, by hand: 13001 -> 1 + 78, 8123 -> 1 + 48, 21000 @ 48k = 7000 -> 1 + 41
    assert batch["feature_lens"].tolist() == [79, 49, 42]
    assert [cut_num_frames(c, "seamless") for c in cuts] == [79, 49, 42]
    # the lhotse fbank count differs: (N + 80) // 160 -> 81, 51, 44
    assert [cut_num_frames(c) for c in cuts] == [81, 51, 44]
    assert batch["features"].shape == (3, 79, 80) and batch["features"].dtype == torch.float32
    for i, p in enumerate(paths):
        ref = _reference(p)
        n = int(batch["feature_lens"][i])
        assert ref.shape == (n, 80)
        assert torch.equal(batch["features"][i, :n], ref)
        assert torch.all(batch["features"][i, n:] == 0)
        # per-utterance normalisation: each bin has mean ~0 and unbiased std ~1 over valid frames
        # (to float32 rounding, which is large for low-variance bins)
        torch.testing.assert_close(ref.double().mean(0), torch.zeros(80, dtype=torch.float64), atol=1e-3, rtol=0)
        torch.testing.assert_close(ref.double().std(0), torch.ones(80, dtype=torch.float64), atol=1e-3, rtol=0)
    # cut_features gives the same, and is not the lhotse fbank
    torch.testing.assert_close(cut_features(cuts[0], "seamless"), _reference(paths[0]), atol=0, rtol=0)
    assert cut_features(cuts[0], "on-the-fly").shape[0] == 81
    # SpecAugment makes a masked copy for the supervised branch; `features` stays clean
    from just_asr.data.augment import SpecAugment

    aug = AsrDataset(None, feature_source="seamless", spec_augment=SpecAugment(), seed=3)[cuts]
    assert torch.equal(aug["features"], batch["features"])
    assert aug["supervised_features"].shape == batch["features"].shape
    assert not torch.equal(aug["supervised_features"], batch["features"])


def test_seamless_ignores_stored_fbank_and_drops_short_audio(audio, tmp_path) -> None:
    cuts = _cuts([audio["a"], audio["b"]])
    stored = compute_and_store_features(cuts, tmp_path / "feats", jobs=1)
    assert all(c.has_features for c in stored)
    auto = AsrDataset(None, feature_source="auto")[stored]
    assert auto["feature_lens"].tolist() == [81, 51]  # the stored lhotse matrices
    seam = AsrDataset(None, feature_source="seamless")[stored]
    assert seam["feature_lens"].tolist() == [79, 49]
    assert torch.equal(seam["features"][1, :49], _reference(audio["b"]))

    # 320 samples < 560 (two frames): reported naming the cut, dropped; the others are kept
    errors = ErrorCollector("skip")
    batch = AsrDataset(None, feature_source="seamless", errors=errors)[_cuts([audio["short"], audio["b"]])]
    assert batch["cut_ids"] == ["b"]
    assert len(errors.issues) == 1
    msg = str(errors.issues[0])
    assert "cut short" in msg and "320 samples" in msg and "at least 560" in msg, msg


def test_cmvn_with_seamless_is_refused(audio, tmp_path) -> None:
    cmvn = GlobalCMVN(torch.zeros(80), torch.ones(80), count=10)
    with pytest.raises(ValueError, match="global CMVN cannot be combined with feature_source 'seamless'"):
        AsrDataset(None, cmvn=cmvn, feature_source="seamless")
    cuts = _cuts([audio["a"], audio["b"]])
    path = cmvn.save(tmp_path / "cmvn.json")
    with pytest.raises(ValueError, match=r"global CMVN \(.*cmvn\.json\) cannot be combined .*data\.cmvn: null"):
        make_train_dataloader({"pl": cuts}, None, max_duration=5.0, cmvn=str(path), feature_source="seamless")
    with pytest.raises(ValueError, match="global CMVN cannot be combined"):
        make_eval_dataloader(cuts, None, max_duration=5.0, cmvn=cmvn, feature_source="seamless")
    with pytest.raises(ValueError, match="not used with feature_source 'seamless'"):
        GlobalCMVN.from_cuts(cuts, source="seamless")
    # unknown sources are named; every listed source is accepted (CMVN is fine with lhotse fbank)
    with pytest.raises(ValueError, match="feature_source must be one of auto, precomputed, on-the-fly, seamless; got 'hf'"):
        AsrDataset(None, feature_source="hf")
    with pytest.raises(ValueError, match="got 'hf'"):
        cut_features(cuts[0], "hf")
    assert [check_feature_source(s) for s in FEATURE_SOURCES] == list(FEATURE_SOURCES)
    assert check_feature_source("on-the-fly", cmvn) == "on-the-fly"


def test_loaders_pass_the_source_through(audio) -> None:
    paths = [audio["a"], audio["b"], audio["c"]]
    refs = {p.stem: _reference(p) for p in paths}
    cuts = _cuts(paths)
    seen: set[str] = set()
    for batch in make_eval_dataloader(cuts, None, max_duration=100.0, num_buckets=1, feature_source="seamless"):
        for i, cid in enumerate(batch["cut_ids"]):
            n = int(batch["feature_lens"][i])
            assert torch.equal(batch["features"][i, :n], refs[cid])
            seen.add(cid)
    assert seen == {"a", "b", "c"}

    loader = make_train_dataloader({"pl": cuts}, None, max_duration=100.0, num_buckets=1, feature_source="seamless",
                                   seed=1)
    batch = next(iter(loader))
    assert batch["cut_ids"]
    for i, cid in enumerate(batch["cut_ids"]):
        n = int(batch["feature_lens"][i])
        assert n == refs[cid].shape[0]
        assert torch.equal(batch["features"][i, :n], refs[cid])


# ------------------------------------------------------------------------------------------------
# an imported w2v-BERT 2.0 model: encoder, model directory, transcriber


@pytest.fixture(scope="module")
def hf_import(tmp_path_factory):
    """A tiny random HF Wav2Vec2BertModel (norms and biases perturbed), its import with a tokenizer,
    and the written model directory."""
    transformers = pytest.importorskip("transformers")
    from just_asr.data.tokenizer import train_tokenizer
    from just_asr.hf_import import import_w2v_bert, write_model_dir

    root = tmp_path_factory.mktemp("seamless_import")
    torch.manual_seed(0)
    hf = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(**TINY_HF))
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "layer_norm" in name or name.endswith(".bias"):
                p.add_(0.2 * torch.randn_like(p))
    hf.eval()
    hf_dir = root / "hf"
    hf.save_pretrained(hf_dir, safe_serialization=True)
    tok = train_tokenizer({"pl": TEXTS * 20}, root / "tok", vocab_size=40, required_langs=["pl"])
    res = import_w2v_bert(hf_dir, tokenizer=tok, contrastive_layers=2)
    with torch.no_grad():  # emissions likelier than blank, so transcripts are not all empty
        res.model.joiner.output.bias[0] -= 3.0
    out = write_model_dir(res, root / "imported")
    return hf, out, tok


def _hf_hidden_from_audio(hf, p: Path) -> torch.Tensor:
    """HF's own pipeline on one file: SeamlessM4TFeatureExtractor -> Wav2Vec2BertModel, ``(T', D)``."""
    import transformers

    fe = transformers.SeamlessM4TFeatureExtractor()
    inputs = fe(load_audio(p, 16000), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        out = hf(input_features=inputs["input_features"], attention_mask=inputs["attention_mask"])
    n = int(inputs["attention_mask"].sum())
    return out.last_hidden_state[0, :n]


def test_dataset_batch_through_imported_encoder_equals_hf(hf_import, audio) -> None:
    hf, model_dir, _ = hf_import
    loaded = load_model_dir(model_dir)
    paths = [audio["a"], audio["b"], audio["c"]]
    batch = AsrDataset(None, feature_source="seamless")[_cuts(paths)]
    with torch.no_grad():
        enc, enc_lens = loaded.model.encode(batch["features"], batch["feature_lens"])
    assert enc_lens.tolist() == (batch["feature_lens"] // 2).tolist() == [39, 24, 21]
    for i, p in enumerate(paths):
        ref = _hf_hidden_from_audio(hf, p)
        n = int(enc_lens[i])
        assert ref.shape == (n, 32)
        err = float((enc[i, :n] - ref).abs().max())
        assert err <= 1e-4, (p.name, err)
    # the recipe matters: lhotse fbank of the same file gives a clearly different encoding
    fb = extract_fbank(load_audio(paths[0], 16000), 16000)
    with torch.no_grad():
        wrong, wrong_lens = loaded.model.encode(fb[None], torch.tensor([fb.shape[0]]))
    n = min(int(wrong_lens[0]), 39)
    assert float((wrong[0, :n] - _hf_hidden_from_audio(hf, paths[0])[:n]).abs().max()) > 0.1


def test_imported_directory_loads_and_transcribes(hf_import, audio) -> None:
    from just_asr.decode import decode

    hf, model_dir, _ = hf_import
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert config["features"] == {**seamless_feature_settings(), "cmvn": False}
    loaded = load_model_dir(model_dir)
    assert loaded.feature_type == FEATURE_TYPE and loaded.feature_source == "seamless" and loaded.cmvn is None
    tr = Transcriber(loaded)
    # the transcriber featurises files with the SeamlessM4T recipe ...
    feats = tr.file_features(audio["c"])
    assert torch.equal(feats, _reference(audio["c"])) and feats.shape == (num_frames(7000), 80) == (42, 80)
    # ... so its encoder output on the file is HF's
    with torch.no_grad():
        enc, enc_lens = loaded.model.encode(feats[None], torch.tensor([feats.shape[0]]))
    ref = _hf_hidden_from_audio(hf, audio["c"])
    assert int(enc_lens[0]) == ref.shape[0] == 21
    assert float((enc[0] - ref).abs().max()) <= 1e-4
    # and the text is the greedy decoding of HF's encoder output through the imported decoder
    texts = tr.transcribe_files([audio["c"], audio["a"]])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    for p, text in zip([audio["c"], audio["a"]], texts):
        ref = _hf_hidden_from_audio(hf, p)
        with torch.no_grad():
            res = decode(loaded.model.predictor, loaded.model.joiner, ref[None], torch.tensor([ref.shape[0]]),
                         blank_id=0, method="greedy")
        assert res.tokens[0], "the biased joiner should emit something"
        assert text == loaded.tokenizer.decode(res.tokens[0]) != ""
    # a file too short for two frames is an error naming the file; the others are transcribed
    results = tr.transcribe_each([audio["short"], audio["b"]])
    assert results[0].text is None and str(audio["short"]) in results[0].error and "560" in results[0].error
    assert isinstance(results[1].text, str) and results[1].error is None


def test_save_model_dir_round_trips_the_recipe(hf_import, audio, tmp_path) -> None:
    _, model_dir, tok = hf_import
    loaded = load_model_dir(model_dir)
    model, cfg = loaded.model, loaded.model.cfg
    expected = Transcriber(loaded).transcribe_files([audio["a"], audio["b"]])

    # by feature source name (what export passes from the datamodule's feature_source) and by dict
    for i, features in enumerate(["seamless", seamless_feature_settings(), loaded.config["features"]]):
        out = save_model_dir(tmp_path / f"s{i}", model, cfg, tok, features=features)
        config = yaml.safe_load((out / "config.yaml").read_text())
        assert config["features"] == {**seamless_feature_settings(), "cmvn": False}
        again = load_model_dir(out)
        assert again.feature_source == "seamless"
        assert Transcriber(again).transcribe_files([audio["a"], audio["b"]]) == expected

    # the default stays lhotse fbank (a from-scratch model), and loads as such
    out = save_model_dir(tmp_path / "fbank", model, cfg, tok)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["features"] == {**feature_settings(), "cmvn": False}
    fb = load_model_dir(out)
    assert fb.feature_type == "fbank" and fb.feature_source is None
    assert Transcriber(fb).file_features(audio["a"]).shape == (81, 80)
    assert feature_settings_for_source("on-the-fly") == feature_settings_for_source(None) == feature_settings()

    # refusals: CMVN with the seamless recipe, an unknown or altered recipe, an unknown source
    cmvn = GlobalCMVN(torch.zeros(80), torch.ones(80), count=10)
    with pytest.raises(ModelDirError, match="global CMVN cannot be saved with the seamless_fbank features"):
        save_model_dir(tmp_path / "x", model, cfg, tok, cmvn=cmvn, features="seamless")
    with pytest.raises(ModelDirError, match="features: preemphasis is 0.9 but the seamless_fbank recipe has 0.97"):
        save_model_dir(tmp_path / "x", model, cfg, tok, features={**seamless_feature_settings(), "preemphasis": 0.9})
    with pytest.raises(ModelDirError, match="features: type 'mfcc' is not a recipe"):
        save_model_dir(tmp_path / "x", model, cfg, tok, features={"type": "mfcc"})
    with pytest.raises(ModelDirError, match="feature_source must be one of"):
        save_model_dir(tmp_path / "x", model, cfg, tok, features="hf")
    assert not (tmp_path / "x").exists()  # nothing written before the checks


@pytest.mark.parametrize("source", ["seamless", "on-the-fly", None])
def test_export_records_the_recipe_the_run_trained_on(hf_import, tmp_path, source) -> None:
    """``just-asr export`` writes the data module's ``feature_source`` into the model directory (a
    fine-tuned import was exported as lhotse fbank and then decoded with the wrong features)."""
    from just_asr.cli.main import main

    _, model_dir, tok = hf_import
    loaded = load_model_dir(model_dir)
    dm = {"tokenizer": str(tok), "cmvn": None}
    if source is not None:
        dm["feature_source"] = source
    ckpt = {"state_dict": {f"model.{k}": v for k, v in loaded.model.state_dict().items()}, "global_step": 3,
            "hyper_parameters": {"arch": loaded.model.cfg.to_dict(), "vocab_size": loaded.model.vocab_size},
            "datamodule_hyper_parameters": dm}
    torch.save(ckpt, tmp_path / "last.ckpt")
    assert main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "out")]) == 0
    again = load_model_dir(tmp_path / "out")
    if source == "seamless":
        assert again.feature_source == "seamless" and again.config["features"] == loaded.config["features"]
    else:
        assert again.feature_source is None and again.feature_type == "fbank"


def test_altered_seamless_config_is_refused(hf_import, tmp_path) -> None:
    import shutil

    _, model_dir, _ = hf_import
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg_path = bad / "config.yaml"
    config = yaml.safe_load(cfg_path.read_text())

    config["features"]["snip_edges"] = False
    cfg_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelDirError, match=r"config\.yaml: features\.snip_edges is False but this just-asr extracts "
                                            r"True for features\.type 'seamless_fbank'"):
        load_model_dir(bad)

    config["features"]["snip_edges"] = True
    config["features"]["cmvn"] = True
    cfg_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelDirError, match=r"config\.yaml: features\.cmvn is true, but seamless_fbank features"):
        load_model_dir(bad)

    config["features"]["cmvn"] = False
    config["features"]["type"] = "whisper_logmel"
    cfg_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelDirError, match=r"config\.yaml: features\.type is 'whisper_logmel' but this just-asr "
                                            r"extracts only 'fbank' or 'seamless_fbank'"):
        load_model_dir(bad)


def test_finetune_preset_selects_the_recipe() -> None:
    """configs/just-finetune-w2v-bert-2.yaml selects the recipe with keys the data module takes."""
    import inspect

    from just_asr.train.datamodule import JustDataModule

    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/just-finetune-w2v-bert-2.yaml").read_text())
    data = preset["data"]
    assert data["feature_source"] == "seamless" and data["cmvn"] is None
    assert set(data) <= set(inspect.signature(JustDataModule.__init__).parameters)
    check_feature_source(data["feature_source"], data["cmvn"])


def test_decode_command_uses_the_models_recipe(hf_import, audio, tmp_path) -> None:
    """``just-asr decode`` on a seamless model featurises with the model's recipe: its hypotheses equal
    the Transcriber's (which is checked against HF above); a conflicting --feature-source is refused."""
    import json

    from just_asr.cli.main import main

    _, model_dir, _ = hf_import
    paths = [audio["a"], audio["c"]]
    manifest = tmp_path / "cuts.jsonl.gz"
    _cuts(paths).to_file(manifest)
    out = tmp_path / "dec"
    assert main(["decode", "--model", str(model_dir), "--cuts", str(manifest), "--out", str(out), "--threads", "1"]) == 0
    hyps = dict(line.split("\t", 1) for line in (out / "hyp_pl.txt").read_text().splitlines())
    expected = Transcriber(load_model_dir(model_dir)).transcribe_files(paths)
    assert [hyps.get(p.stem, "") for p in paths] == expected
    assert json.loads((out / "wer.json").read_text())
    assert main(["decode", "--model", str(model_dir), "--cuts", str(manifest), "--out", str(tmp_path / "x"),
                 "--feature-source", "on-the-fly"]) == 2
