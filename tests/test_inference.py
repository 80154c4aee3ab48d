"""Tests for the model directory (save/load without pickle), the Transcriber and the ``decode`` /
``transcribe`` commands, with a randomly initialised tiny JustModel."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from model_helpers import record_search_threads

from just_asr.cli.main import main
from just_asr.data.audio import load_audio
from just_asr.data.features import GlobalCMVN, extract_fbank
from just_asr.data.tokenizer import train_tokenizer
from just_asr.decode import greedy_search
from just_asr.evaluate import score_by_language
from just_asr.inference import ModelDirError, Transcriber, load_model_dir, save_model_dir, stack_encoded
from just_asr.model import JustModel, ModelConfig

TINY = {
    "frontend": {"conv_channels": 8},
    "encoder": {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 5,
                "left_max_position": 8, "right_max_position": 2},
    "quantizer": {"codebook_size": 16, "code_dim": 32},
    "contrastive": {"num_layers": 1, "final_dim": 16, "num_distractors": 4},
    "mlm": {"num_layers": 1},
    "decoder": {"embed_dim": 16, "hidden_dim": 24, "joint_dim": 24},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny tensor ops: one intra-op thread is much faster on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    texts = {
        "en": ["the quick brown fox jumps over the lazy dog", "hello world this is a test"] * 5,
        "pl": ["zażółć gęślą jaźń", "więc czego chcecie odemnie spytałem"] * 5,
    }
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=60, required_langs=["en", "pl"])


@pytest.fixture(scope="module")
def tiny_model(tokenizer_path):
    from just_asr.data.tokenizer import Tokenizer

    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(TINY)
    model = JustModel(cfg, Tokenizer(tokenizer_path).vocab_size).eval()
    with torch.no_grad():  # make emissions likelier than blank so texts are not all empty
        model.joiner.output.bias[0] -= 1.0
    return model, cfg


@pytest.fixture(scope="module")
def cmvn():
    g = torch.Generator().manual_seed(1)
    return GlobalCMVN(torch.randn(80, generator=g) * 2 - 8, torch.rand(80, generator=g) + 0.5, count=1000)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model, tokenizer_path, cmvn):
    model, cfg = tiny_model
    out = tmp_path_factory.mktemp("model") / "dir"
    save_model_dir(out, model, cfg.to_dict(), tokenizer_path, cmvn=cmvn, extra={"step": 7})
    return out


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """A 16 kHz sine WAV, a 44.1 kHz stereo noise FLAC, a 48 kHz Opus chirp and a 22.05 kHz MP3 tone."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    wav = root / "sine.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    flac = root / "noise.flac"
    sf.write(flac, (0.1 * rng.standard_normal((30870, 2))).astype(np.float32), 44100, subtype="PCM_16")
    t48 = np.arange(24000) / 48000
    opus = root / "chirp.opus"
    sf.write(opus, (0.3 * np.sin(2 * np.pi * (200 + 800 * t48) * t48)).astype(np.float32), 48000,
             format="OGG", subtype="OPUS")
    mp3 = root / "tone.mp3"
    t22 = np.arange(17640) / 22050
    sf.write(mp3, (0.3 * np.sin(2 * np.pi * 440 * t22) * (t22 < 0.5)).astype(np.float32), 22050, format="MP3")
    return [wav, flac, opus, mp3]


def _features(paths):
    feats = [extract_fbank(load_audio(p), 16000) for p in paths]
    lens = torch.tensor([f.shape[0] for f in feats])
    padded = torch.zeros(len(feats), int(lens.max()), 80)
    for i, f in enumerate(feats):
        padded[i, : f.shape[0]] = f
    return padded, lens


# ---------------------------------------------------------------------------------------------
# model directory


def test_save_load_gives_identical_model_and_outputs(model_dir, tiny_model, cmvn, audio_files):
    model, cfg = tiny_model
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["cmvn.json", "config.yaml", "model.safetensors", "tokenizer.json", "tokenizer.model"]
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert config["format_version"] == 1 and config["vocab_size"] == model.vocab_size
    assert config["features"]["num_mel_bins"] == 80 and config["features"]["cmvn"] is True
    assert config["extra"] == {"step": 7} and config["model"] == cfg.to_dict()

    loaded = load_model_dir(model_dir)
    assert not loaded.model.training
    assert loaded.model.cfg == cfg
    ref_state, new_state = model.state_dict(), loaded.model.state_dict()
    assert set(ref_state) == set(new_state)
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)
    assert torch.equal(loaded.cmvn.mean, cmvn.mean) and torch.equal(loaded.cmvn.std, cmvn.std)
    assert loaded.tokenizer.vocab_size == model.vocab_size

    feats, lens = _features(audio_files)
    x = cmvn.apply(feats, lens)
    with torch.no_grad():
        enc_a, lens_a = model.encode(x, lens)
        enc_b, lens_b = loaded.model.encode(x, lens)
    assert torch.equal(lens_a, lens_b) and torch.equal(enc_a, enc_b)
    ref = greedy_search(model.predictor, model.joiner, enc_a, lens_a)
    got = Transcriber(loaded).decode_batch(feats, lens)
    assert got.tokens == ref.tokens and got.scores == ref.scores
    assert sum(len(t) for t in ref.tokens) > 0


def test_pickle_weights_are_refused(model_dir, tmp_path, tiny_model):
    import shutil

    model, _ = tiny_model
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    # a torch.save archive planted under the safetensors name
    torch.save(model.state_dict(), bad / "model.safetensors")
    with pytest.raises(ModelDirError, match=r"model\.safetensors: is a zip archive .*refusing to unpickle"):
        load_model_dir(bad)
    # a plain pickle (which could run code when loaded)
    (bad / "model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    with pytest.raises(ModelDirError, match="is a Python pickle, not safetensors; refusing to unpickle"):
        load_model_dir(bad)
    # random bytes
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + b"\x00" * 20)
    with pytest.raises(ModelDirError, match="not a valid safetensors file"):
        load_model_dir(bad)
    # no safetensors at all, only a pickled checkpoint: refused, and the message says why
    (bad / "model.safetensors").unlink()
    torch.save(model.state_dict(), bad / "model.pt")
    with pytest.raises(ModelDirError, match=r"weights file not found; found model\.pt, which is never loaded"):
        load_model_dir(bad)


def test_config_mismatches_are_clear_errors(model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    cfg_path = bad / "config.yaml"
    config = yaml.safe_load(cfg_path.read_text())

    config["model"]["decoder"]["hidden_dim"] = 20
    cfg_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelDirError, match=r"model\.safetensors: '[a-z_.]+' has shape \(24, 24\), the config needs \(24, 20\)"):
        load_model_dir(bad)

    config["model"]["decoder"]["hidden_dim"] = 24
    config["features"]["frame_shift"] = 0.02
    cfg_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelDirError, match=r"config\.yaml: features\.frame_shift is 0\.02"):
        load_model_dir(bad)

    config["features"]["frame_shift"] = 0.01
    config["format_version"] = 99
    cfg_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelDirError, match="format_version 99 is not supported"):
        load_model_dir(bad)

    config["format_version"] = 1
    config["model"]["encoder"]["bogus"] = 1
    cfg_path.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelDirError, match="unknown key 'encoder.bogus'"):
        load_model_dir(bad)

    with pytest.raises(ModelDirError, match="model directory not found"):
        load_model_dir(tmp_path / "nowhere")
    (tmp_path / "last.ckpt").write_bytes(b"not read")
    with pytest.raises(ModelDirError, match=r"last\.ckpt: a training checkpoint, not a model directory: make one "
                                            r"with `just-asr export .*last\.ckpt MODEL_DIR`"):
        load_model_dir(tmp_path / "last.ckpt")
    cfg_path.write_text("format_version: 1\nmodel: {a: 1\n")
    with pytest.raises(ModelDirError, match=r"config\.yaml: invalid YAML at line \d+, column \d+: ") as info:
        load_model_dir(bad)
    assert "\n" not in str(info.value) and "<unicode string>" not in str(info.value)

    cfg_path.write_bytes(b"\xff\xfe" + bytes(range(256)))
    with pytest.raises(ModelDirError, match=r"config\.yaml: not a UTF-8 text file"):
        load_model_dir(bad)


def test_save_over_an_earlier_export_leaves_no_stale_tokenizer_sidecar(tiny_model, tmp_path, tokenizer_path):
    """A tokenizer without its tokenizer.json sidecar, exported over a folder that has one: the old
    sidecar (another tokenizer's languages and settings) is removed, not kept beside the new model."""
    import shutil

    model, cfg = tiny_model
    out = tmp_path / "m"
    save_model_dir(out, model, cfg, tokenizer_path)
    assert (out / "tokenizer.json").is_file()
    bare = tmp_path / "bare" / "tokenizer.model"
    bare.parent.mkdir()
    shutil.copyfile(tokenizer_path, bare)
    save_model_dir(out, model, cfg, bare)
    assert not (out / "tokenizer.json").exists() and (out / "tokenizer.model").read_bytes() == bare.read_bytes()


def test_save_refuses_wrong_tokenizer(tiny_model, tmp_path, tokenizer_path):
    model, cfg = tiny_model
    other = train_tokenizer({"en": ["abc def ghi"] * 3}, tmp_path / "tok2", vocab_size=35, required_langs=["en"])
    with pytest.raises(ModelDirError, match="tokenizer has .* units but the model has"):
        save_model_dir(tmp_path / "m", model, cfg, other)
    other_cfg = ModelConfig.from_dict({**TINY, "decoder": {**TINY["decoder"], "hidden_dim": 20}})
    with pytest.raises(ModelDirError, match="differs from the configuration the model was built with"):
        save_model_dir(tmp_path / "m", model, other_cfg, tokenizer_path)
    # a directory written without CMVN has no cmvn.json and loads with cmvn None
    out = save_model_dir(tmp_path / "m2", model, cfg, tokenizer_path)
    assert not (out / "cmvn.json").exists()
    assert load_model_dir(out).cmvn is None


# ---------------------------------------------------------------------------------------------
# Transcriber


def test_transcribe_files_returns_one_string_per_file(model_dir, audio_files):
    loaded = load_model_dir(model_dir)
    tr = Transcriber(loaded)
    texts = tr.transcribe_files(audio_files)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    # same as decoding the features of the same files directly (one padded batch)
    feats, lens = _features(audio_files)
    assert texts == tr.transcribe_batch(feats, lens)
    assert any(texts)
    # tiny batches (one file each) give the same texts
    assert Transcriber(loaded, max_batch_frames=1).transcribe_files(audio_files) == texts
    beam_texts = Transcriber(loaded, method="beam", beam=3).transcribe_files(audio_files)
    assert len(beam_texts) == 4 and all(isinstance(t, str) for t in beam_texts)


def test_transcriber_applies_cmvn(model_dir, audio_files, cmvn):
    loaded = load_model_dir(model_dir)
    tr = Transcriber(loaded)
    feats, lens = _features(audio_files[:2])
    raw = tr.decode_batch(feats, lens)
    pre = tr.decode_batch(cmvn.apply(feats, lens), lens, apply_cmvn=False)
    assert raw.tokens == pre.tokens and raw.scores == pytest.approx(pre.scores, abs=1e-4)
    unnormalised = tr.decode_batch(feats, lens, apply_cmvn=False)
    assert unnormalised.scores != pytest.approx(raw.scores, abs=1e-3)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_search_pooled_equals_searching_each_part(model_dir, method):
    """Pooling encoder outputs of different lengths into one search changes nothing in the result:
    rows never interact and padding frames are never read (also for a row with no frames)."""
    tr = Transcriber(load_model_dir(model_dir), method=method, beam=3)
    g = torch.Generator().manual_seed(11)
    d = TINY["encoder"]["d_model"]
    parts = [(3 * torch.randn(3, t, d, generator=g), torch.tensor(lens))
             for t, lens in ((7, [7, 5, 0]), (19, [19, 19, 2]), (1, [1, 1, 1]), (12, [3, 12, 8]))]
    separate = [tr.search(*p) for p in parts]
    pooled = tr.search_pooled(parts)
    assert pooled.tokens == [t for r in separate for t in r.tokens]
    assert pooled.scores == pytest.approx([x for r in separate for x in r.scores], abs=1e-5)
    assert sum(len(t) for t in pooled.tokens) > 10  # the comparison is about real emissions
    enc, lens = stack_encoded(parts)
    assert enc.shape == (12, 19, d) and lens.tolist() == [7, 5, 0, 19, 19, 2, 1, 1, 1, 3, 12, 8]
    assert enc[:3, 7:].abs().sum() == 0 and torch.equal(enc[9:, :12], parts[3][0])
    with pytest.raises(ValueError, match="at least one"):
        tr.search_pooled([])


def test_encode_stream_with_workers_keeps_order_and_values(model_dir, audio_files):
    """Two encoder threads: outputs in input order, tags passed through, values equal to one-by-one
    encoding; a worker's exception surfaces for its batch; bad worker counts are refused."""
    loaded = load_model_dir(model_dir)
    feats, lens = _features(audio_files)
    parts = [(feats[i:i + 1, : int(lens[i])], lens[i:i + 1], f"tag{i}") for i in range(len(audio_files))] * 2
    serial = Transcriber(loaded)
    expected = [serial.encode(f, l) for f, l, _ in parts]
    threaded = Transcriber(loaded, encoder_workers=2)
    got = list(threaded.encode_stream(iter(parts)))
    assert [tag for tag, _, _ in got] == [tag for _, _, tag in parts]
    for (_, enc, enc_lens), (enc_ref, lens_ref) in zip(got, expected, strict=True):
        assert torch.equal(enc_lens, lens_ref)
        torch.testing.assert_close(enc, enc_ref, rtol=0, atol=0)
    assert threaded.timings["encode"] > 0
    # the first batch finishing last must still come out first
    import time as _time

    real_encode = Transcriber.encode

    def slow_first(self, features, lens, apply_cmvn=True):
        if features.shape[1] == parts[0][0].shape[1]:
            _time.sleep(0.3)
        return real_encode(self, features, lens, apply_cmvn)

    three = Transcriber(loaded, encoder_workers=3)
    three.encode = slow_first.__get__(three)
    assert [tag for tag, _, _ in three.encode_stream(iter(parts[:4]))] == ["tag0", "tag1", "tag2", "tag3"]
    bad = [parts[0], (feats[:, :, :40], lens, "bad"), parts[1]]
    stream = threaded.encode_stream(iter(bad))
    assert next(stream)[0] == "tag0"
    with pytest.raises(ValueError, match=r"features must be \(B, T, 80\)"):
        next(stream)
    stream.close()
    import just_asr.inference as inference

    assert inference._ACTIVITY.encoding == 0  # failed and abandoned batches leave no count behind
    with pytest.raises(ValueError, match="encoder_workers must be >= 1"):
        Transcriber(loaded, encoder_workers=0)


def test_search_threads_only_while_nothing_is_encoded(model_dir, audio_files, monkeypatch):
    """``search_threads``: a search that starts with no encoder call running or queued gets that many
    torch threads and restores the setting; one that starts while a batch waits for a worker, or while
    another Transcriber encodes, keeps the current setting (no oversubscription); same units either way."""
    import threading

    import just_asr.inference as inference

    loaded = load_model_dir(model_dir)
    feats, lens = _features(audio_files)
    seen = record_search_threads(monkeypatch)
    assert torch.get_num_threads() == 1  # the module's fixture
    plain = Transcriber(loaded).decode_batch(feats, lens)
    tr = Transcriber(loaded, search_threads=2, encoder_workers=2)
    both = tr.decode_batch(feats, lens)
    assert seen == [1, 2] and torch.get_num_threads() == 1
    assert both.tokens == plain.tokens and both.scores == pytest.approx(plain.scores, abs=1e-5)

    # a stream whose second batch is held until the first one's output has been searched
    release = threading.Event()
    real_encode = tr.encode

    def held_encode(features, lens_, apply_cmvn=True):
        if features.shape[0] == 2:  # the held batch
            assert release.wait(30)
        return real_encode(features, lens_, apply_cmvn=apply_cmvn)

    tr.encode = held_encode
    parts = [(feats[:1], lens[:1], "a"), (feats[:2], lens[:2], "b"), (feats[:1], lens[:1], "c")]
    seen.clear()
    stream = tr.encode_stream(iter(parts))
    try:
        tag, enc, enc_lens = next(stream)
        assert tag == "a"
        tr.search(enc, enc_lens)  # "b" still in a worker: one thread
    finally:
        release.set()
    rest = list(stream)
    assert [t for t, _, _ in rest] == ["b", "c"]
    tr.search_pooled([(e, l) for _, e, l in rest])  # everything encoded: two threads
    assert seen == [1, 2] and torch.get_num_threads() == 1
    assert inference._ACTIVITY.encoding == 0 and inference._ACTIVITY.searching == 0
    # another Transcriber's encoder call, in a thread of the caller's, counts too: torch's thread
    # setting is not per instance
    real_model_encode = loaded.model.encode
    entered = threading.Event()

    def held_model_encode(features, lens_):
        entered.set()
        assert release.wait(30)
        return real_model_encode(features, lens_)

    monkeypatch.setattr(loaded.model, "encode", held_model_encode)
    release.clear()
    worker = threading.Thread(target=lambda: Transcriber(loaded).encode(feats[:2], lens[:2]))
    worker.start()
    try:
        assert entered.wait(30)
        seen.clear()
        Transcriber(loaded, search_threads=2).search(enc, enc_lens)
    finally:
        release.set()
        worker.join()
    assert seen == [1] and inference._ACTIVITY.encoding == 0
    with pytest.raises(ValueError, match="search_threads must be >= 1"):
        Transcriber(loaded, search_threads=0)


def test_bf16_encoder_is_close_to_float32_and_searched_in_float32(model_dir, audio_files):
    loaded = load_model_dir(model_dir)
    feats, lens = _features(audio_files)
    enc32, lens32 = Transcriber(loaded).encode(feats, lens)
    tr16 = Transcriber(loaded, encoder_dtype="bfloat16")
    enc16, lens16 = tr16.encode(feats, lens)
    assert enc16.dtype == torch.float32 and torch.equal(lens16, lens32)
    valid = torch.arange(enc32.shape[1])[None, :] < lens32[:, None]
    rel = (enc16 - enc32)[valid].norm() / enc32[valid].norm()
    assert 0 < rel < 0.05, rel  # bf16 rounding, not a different computation
    assert len(tr16.transcribe_batch(feats, lens)) == len(audio_files)
    with pytest.raises(ValueError, match="unknown encoder dtype 'float16'"):
        Transcriber(loaded, encoder_dtype="float16")


def test_bad_files_are_reported_and_others_continue(model_dir, audio_files, tmp_path):
    bad = tmp_path / "broken.wav"
    bad.write_text("this is not audio")
    missing = tmp_path / "missing.flac"
    short, tiny = tmp_path / "short.wav", tmp_path / "tiny.wav"
    sf.write(short, 0.1 * np.ones(800, np.float32), 16000)  # 50 ms: 5 frames, the model needs 7
    sf.write(tiny, 0.1 * np.ones(16, np.float32), 16000)  # 1 ms: no frame at all
    tr = Transcriber(load_model_dir(model_dir))
    results = tr.transcribe_each([audio_files[0], bad, missing, short, tiny, audio_files[1]])
    assert [r.error is None for r in results] == [True, False, False, False, False, True]
    assert str(bad) in results[1].error and str(missing) in results[2].error
    assert results[3].error == f"{short}: audio too short: 5 feature frames, the model needs at least 7 (70 ms)"
    assert results[4].error.startswith(f"{tiny}: audio too short: 0 feature frames")
    assert results[0].text == tr.transcribe_files([audio_files[0]])[0]
    with pytest.raises(ValueError, match="broken.wav"):
        tr.transcribe_files([audio_files[0], bad])


# ---------------------------------------------------------------------------------------------
# commands


def test_transcribe_command(model_dir, audio_files, tmp_path, capsys):
    expected = Transcriber(load_model_dir(model_dir)).transcribe_files(audio_files)
    rc = main(["transcribe", "--model", str(model_dir), *map(str, audio_files)])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out == [f"{p}\t{t}" for p, t in zip(audio_files, expected)]

    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"\x00" * 100)
    rc = main(["transcribe", "--model", str(model_dir), "--json", str(audio_files[0]), str(bad)])
    captured = capsys.readouterr()
    assert rc == 1
    items = json.loads(captured.out)
    assert items[0] == {"file": str(audio_files[0]), "text": expected[0]}
    assert items[1]["file"] == str(bad) and items[1]["text"] is None and str(bad) in items[1]["error"]
    assert f"error: {bad}" in captured.err

    rc = main(["transcribe", "--model", str(tmp_path / "nope"), str(audio_files[0])])
    assert rc == 2 and "model directory not found" in capsys.readouterr().err


def _write_cuts(path, items):
    """A cut manifest over ``items = [(cut id, audio path, text, language)]``."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    cuts = []
    for cid, audio, text, lang in items:
        rec = Recording.from_file(audio, recording_id=cid)
        sup = SupervisionSegment(id=cid, recording_id=cid, start=0.0, duration=rec.duration, text=text, language=lang)
        cuts.append(MonoCut(id=cid, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup]))
    CutSet.from_cuts(cuts).to_file(path)
    return path


def test_decode_command_writes_hyps_refs_and_reports(model_dir, audio_files, tmp_path, capsys, monkeypatch):
    import shutil

    wavs = []
    for i in range(4):  # 16 kHz mono copies so the manifests' durations are exact
        p = tmp_path / f"utt{i}.wav"
        x, sr = sf.read(audio_files[0]) if i % 2 == 0 else (load_audio(audio_files[1]), 16000)
        sf.write(p, x[: 16000 - 2000 * i], sr)
        wavs.append(p)
    shutil.copy(wavs[0], tmp_path / "extra.wav")
    m_pl = _write_cuts(tmp_path / "mls-pl_cuts_test.jsonl.gz", [
        ("1_2_000001", wavs[0], "więc czego", "pl"),
        ("1_2_000002", wavs[1], "zażółć gęślą jaźń", "polish"),
    ])
    m_en = _write_cuts(tmp_path / "mls-en_cuts_test.jsonl.gz", [
        ("3_4_000001", wavs[2], "hello world", "en"),
        ("3_4_000002", wavs[3], "the lazy dog", "en"),
    ])
    out = tmp_path / "out"
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_pl), str(m_en), "--out", str(out),
               "--max-duration", "2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    texts = Transcriber(load_model_dir(model_dir)).transcribe_files(wavs)
    hyp_pl = (out / "hyp_pl.txt").read_text(encoding="utf-8").splitlines()
    assert hyp_pl == [f"1_2_000001\t{texts[0]}", f"1_2_000002\t{texts[1]}"]
    assert (out / "hyp_en.txt").read_text().splitlines() == [f"3_4_000001\t{texts[2]}", f"3_4_000002\t{texts[3]}"]
    assert (out / "ref_pl.txt").read_text(encoding="utf-8").splitlines() == [
        "1_2_000001\twięc czego", "1_2_000002\tzażółć gęślą jaźń"]
    expected = score_by_language(["więc czego", "zażółć gęślą jaźń", "hello world", "the lazy dog"], texts,
                                 ["pl", "pl", "en", "en"])
    data = json.loads((out / "wer.json").read_text())
    assert [l["language"] for l in data["languages"]] == ["en", "pl"]
    for got, exp in zip(data["languages"], expected.languages):
        assert got["words"]["substitutions"] == exp.words.substitutions
        assert got["words"]["deletions"] == exp.words.deletions
        assert got["words"]["insertions"] == exp.words.insertions
        assert got["wer"] == pytest.approx(exp.wer)
        assert got["cer"] == pytest.approx(exp.cer)
    assert data["average"]["wer"] == pytest.approx(expected.average_wer)
    assert data["info"]["num_scored"] == 4 and data["info"]["failed_cuts"] == []
    assert (out / "wer.png").read_bytes()[:4] == b"\x89PNG"
    assert captured.out == (out / "wer.md").read_text(encoding="utf-8")  # the printed table is the report
    assert captured.out.startswith("## greedy on 4 utterances")
    assert "| pl |" in captured.out and "| en |" in captured.out

    # beam search through the command equals the Transcriber's beam search
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_en), "--out", str(tmp_path / "ob"),
               "--method", "beam", "--beam", "2", "--threads", "1"])
    assert rc == 0 and "## beam (beam 2) on 2 utterances" in capsys.readouterr().out
    beam_texts = Transcriber(load_model_dir(model_dir), method="beam", beam=2).transcribe_files(wavs[2:])
    assert (tmp_path / "ob" / "hyp_en.txt").read_text().splitlines() == [
        f"3_4_000001\t{beam_texts[0]}", f"3_4_000002\t{beam_texts[1]}"]
    assert json.loads((tmp_path / "ob" / "wer.json").read_text())["info"]["beam"] == 2

    # a manifest whose audio went missing: the rest is still scored, exit status 1
    (tmp_path / "extra.wav").rename(tmp_path / "gone.wav")
    m_bad = _write_cuts(tmp_path / "bad.jsonl.gz", [("5_6_000001", tmp_path / "gone.wav", "hello", "en")])
    (tmp_path / "gone.wav").unlink()
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_en), str(m_bad), "--out", str(tmp_path / "o2")])
    captured = capsys.readouterr()
    assert rc == 1 and "gone.wav" in captured.err
    data = json.loads((tmp_path / "o2" / "wer.json").read_text())
    assert data["info"]["failed_cuts"] == ["5_6_000001"] and data["info"]["num_scored"] == 2

    rc = main(["decode", "--model", str(model_dir), "--cuts", str(tmp_path / "none.jsonl.gz"), "--out", str(out)])
    assert rc == 2 and "none.jsonl.gz: cut manifest not found" in capsys.readouterr().err

    # the search batch changes how encoder outputs are pooled for the search, never the result:
    # 0 = one search per encoder batch (4 batches of 1 s here), 3 = pools of 3 utterances or more
    for search_batch in ("0", "3"):
        o = tmp_path / f"sb{search_batch}"
        rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_pl), str(m_en), "--out", str(o),
                   "--max-duration", "1", "--search-batch", search_batch])
        assert rc == 0, capsys.readouterr().err
        assert (o / "hyp_pl.txt").read_text(encoding="utf-8") == (out / "hyp_pl.txt").read_text(encoding="utf-8")
        assert (o / "hyp_en.txt").read_text() == (out / "hyp_en.txt").read_text()
        assert json.loads((o / "wer.json").read_text())["info"]["search_batch"] == int(search_batch)
    o = tmp_path / "workers"
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_pl), str(m_en), "--out", str(o),
               "--max-duration", "1", "--encoder-workers", "2"])
    assert rc == 0, capsys.readouterr().err
    assert (o / "hyp_pl.txt").read_text(encoding="utf-8") == (out / "hyp_pl.txt").read_text(encoding="utf-8")
    assert (o / "hyp_en.txt").read_text() == (out / "hyp_en.txt").read_text()
    assert json.loads((o / "wer.json").read_text())["info"]["encoder_workers"] == 2
    # two workers on one thread each; the one search starts after the last batch: both threads
    seen = record_search_threads(monkeypatch)
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_pl), str(m_en), "--out", str(tmp_path / "w2"),
               "--max-duration", "1", "--encoder-workers", "2", "--threads", "2"])
    assert rc == 0, capsys.readouterr().err
    assert seen == [2] and torch.get_num_threads() == 1
    assert (tmp_path / "w2" / "hyp_en.txt").read_text() == (out / "hyp_en.txt").read_text()
    torch.set_num_threads(1)
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_en), "--out", str(tmp_path / "bf"),
               "--encoder-dtype", "bfloat16"])
    assert rc == 0 and json.loads((tmp_path / "bf" / "wer.json").read_text())["info"]["encoder_dtype"] == "bfloat16"
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_en), "--out", str(out), "--search-batch", "-1"])
    assert rc == 2 and "--search-batch must be >= 0, got -1" in capsys.readouterr().err
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_en), "--out", str(out), "--encoder-workers", "0"])
    assert rc == 2 and "--encoder-workers must be >= 1, got 0" in capsys.readouterr().err
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m_en), "--out", str(out), "--encoder-workers", "2",
               "--threads", "1"])
    assert rc == 2 and "--encoder-workers 2 needs --threads >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--encoder-workers", "2", "--threads", "2"], ["--search-batch", "0"],
                                   ["--encoder-workers", "2", "--threads", "2", "--search-batch", "3"],
                                   ["--num-workers", "1"]])
def test_decode_command_skips_a_batch_whose_audio_is_gone(model_dir, audio_files, tmp_path, capsys, extra):
    """A batch whose only cut cannot be read is reported and skipped under every pooling/worker
    setting; the other cuts are decoded and scored, the exit status is 1."""
    import shutil

    wavs = []
    for i in range(3):
        p = tmp_path / f"utt{i}.wav"
        x, sr = sf.read(audio_files[0])
        sf.write(p, x[: 16000 - 2000 * i], sr)
        wavs.append(p)
    shutil.copy(wavs[0], tmp_path / "gone.wav")
    m = _write_cuts(tmp_path / "mls-en_cuts_test.jsonl.gz", [
        ("3_4_000001", wavs[0], "hello world", "en"),
        ("3_4_000002", tmp_path / "gone.wav", "gone", "en"),
        ("3_4_000003", wavs[1], "the lazy dog", "en"),
        ("3_4_000004", wavs[2], "a b", "en"),
    ])
    (tmp_path / "gone.wav").unlink()
    threads = torch.get_num_threads()
    try:
        rc = main(["decode", "--model", str(model_dir), "--cuts", str(m), "--out", str(tmp_path / "o"),
                   "--max-duration", "1", *extra])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    info = json.loads((tmp_path / "o" / "wer.json").read_text())["info"]
    assert rc == 1 and "gone.wav" in err
    assert info["failed_cuts"] == ["3_4_000002"] and info["num_decoded"] == 3 and info["num_scored"] == 3
    hyps = (tmp_path / "o" / "hyp_en.txt").read_text().splitlines()
    assert [h.split("\t")[0] for h in hyps] == ["3_4_000001", "3_4_000003", "3_4_000004"]


def test_decode_command_skips_cuts_too_short_for_the_model(model_dir, audio_files, tmp_path, capsys):
    """A 50 ms cut (5 frames; the model needs 7) and a 1 ms one among normal cuts: both reported by
    name and listed as failed, the others decoded and scored (the model used to refuse the whole
    batch with a traceback, and lhotse's extractor crashed on the 1 ms one), exit status 1."""
    x, sr = sf.read(audio_files[0])
    sf.write(tmp_path / "ok.wav", x[:16000], sr)
    sf.write(tmp_path / "short.wav", 0.1 * np.ones(800, np.float32), 16000)
    sf.write(tmp_path / "tiny.wav", 0.1 * np.ones(16, np.float32), 16000)
    m = _write_cuts(tmp_path / "mls-en_cuts_test.jsonl.gz", [
        ("3_4_000001", tmp_path / "ok.wav", "hello world", "en"),
        ("3_4_000002", tmp_path / "short.wav", "short", "en"),
        ("3_4_000003", tmp_path / "tiny.wav", "tiny", "en"),
    ])
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(m), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    info = json.loads((tmp_path / "o" / "wer.json").read_text())["info"]
    assert rc == 1 and "short.wav" in err and "fewer than the model's minimum of 7" in err and "tiny.wav" in err
    assert info["failed_cuts"] == ["3_4_000002", "3_4_000003"] and info["num_scored"] == 1


def test_decode_and_transcribe_refuse_bad_options_before_any_work(model_dir, audio_files, tmp_path, capsys):
    """Each mistake is a one-line error naming the option or path, exit status 2, no traceback; an
    --out that cannot be a folder is refused before decoding starts (it used to fail after)."""
    x, sr = sf.read(audio_files[0])
    sf.write(tmp_path / "ok.wav", x[:16000], sr)
    m = _write_cuts(tmp_path / "mls-en_cuts_test.jsonl.gz", [("3_4_000001", tmp_path / "ok.wav", "hello", "en")])
    afile = tmp_path / "afile"
    afile.write_text("")
    (tmp_path / "empty_cuts.jsonl").write_text("")
    base = ["decode", "--model", str(model_dir), "--cuts", str(m)]
    cases = [
        (["--out", str(afile)], f"{afile}: cannot create the output folder"),
        (["--out", str(afile / "sub")], f"{afile / 'sub'}: cannot create the output folder"),
        (["--out", str(tmp_path / "o"), "--max-duration", "nan"], "--max-duration must be positive, got nan"),
        (["--out", str(tmp_path / "o"), "--num-workers", "-1"], "--num-workers must be >= 0, got -1"),
        (["--out", str(tmp_path / "o"), "--max-symbols-per-frame", "0"], "max_symbols_per_frame must be >= 1; got 0"),
        (["--out", str(tmp_path / "o"), "--device", "foo"], "device 'foo' is not a torch device"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--out", str(tmp_path / "o"), "--device", "cuda"], "device 'cuda': this torch has no usable CUDA"))
    if not torch.backends.mps.is_available():
        cases.append((["--out", str(tmp_path / "o"), "--device", "mps"], "device 'mps' is not available (NotImplementedError"))
    cases.append((["--out", str(tmp_path / "o"), "--device", "meta"], "device 'meta' holds no data"))
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not (tmp_path / "o").exists()
    rc = main(["decode", "--model", str(model_dir), "--cuts", str(tmp_path / "empty_cuts.jsonl"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "the manifests hold no cuts" in capsys.readouterr().err
    rc = main(["transcribe", "--model", str(model_dir), str(tmp_path / "ok.wav"), "--max-symbols-per-frame", "-1"])
    assert rc == 2 and "max_symbols_per_frame must be >= 1; got -1" in capsys.readouterr().err
