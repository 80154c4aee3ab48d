"""Features (frame count, inference == training), lilcom storage, global CMVN, SpecAugment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_helpers import tone, write_mls_corpus
from just_asr.data.audio import load_audio
from just_asr.data.augment import SpecAugment
from just_asr.data.dataset import AsrDataset
from just_asr.data.features import (
    FBANK_DIM,
    GlobalCMVN,
    compute_and_store_features,
    cut_features,
    extract_fbank,
    fbank_extractor,
    num_frames,
)
from just_asr.data.mls import load_manifests, prepare_mls


@pytest.fixture(scope="module")
def small_cuts(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    spec = write_mls_corpus(root / "corpus", langs=("pl",), splits={"train": 5, "dev": 1, "test": 1}, limited=False)
    prepare_mls(root / "corpus", root / "out", splits=("train",), progress=False)
    return root, spec, load_manifests(root / "out", "pl", "train", lazy=False)


@pytest.mark.parametrize("n", [400, 799, 1000, 16000, 16079, 16080, 12345])
def test_frame_count_formula(n):
    x = tone(n / 16000, 16000)
    assert len(x) == n
    raw = fbank_extractor().extract(x, 16000)
    assert raw.shape == ((n + 80) // 160, FBANK_DIM) == (num_frames(n), FBANK_DIM)
    assert extract_fbank(x, 16000).shape == (num_frames(n), 80)
    assert num_frames(16000) == 100 and num_frames(16079) == 100 and num_frames(16080) == 101


def test_clips_shorter_than_a_window_give_their_frames():
    """lhotse's extractor failed below ~140 samples (a RuntimeError that crashed whole decoding runs);
    every length now gives ``num_frames(N)`` frames: none under 5 ms, one up to 15 ms."""
    for n in [0, 1, 79, 80, 100, 139, 140, 159, 160, 239, 240, 399]:
        x = tone(n / 16000, 16000) if n else np.zeros(0, np.float32)
        f = extract_fbank(x, 16000)
        assert f.shape == (num_frames(n), FBANK_DIM) and torch.isfinite(f).all(), n
        if n >= 140:  # where lhotse manages alone, its values are kept as they are
            assert torch.equal(f, torch.as_tensor(np.asarray(fbank_extractor().extract(x, 16000)))), n
    assert num_frames(79) == 0 and num_frames(80) == num_frames(239) == 1


def test_inference_features_equal_training_batch(small_cuts, tmp_path):
    root, spec, cuts = small_cuts
    batch = AsrDataset(None, feature_source="on-the-fly")[cuts]
    for i, cid in enumerate(batch["cut_ids"]):
        feats = extract_fbank(load_audio(spec.paths[cid]), 16000)
        n = int(batch["feature_lens"][i])
        assert feats.shape == (n, 80)
        assert torch.equal(batch["features"][i, :n], feats)
        assert torch.all(batch["features"][i, n:] == 0)
    # a 48 kHz stereo file: extract_fbank on the raw samples == features of load_audio's output
    x = tone(0.5, 48000, channels=2)
    p = tmp_path / "s.wav"
    sf.write(str(p), x, 48000, subtype="FLOAT")
    a = extract_fbank(x, 48000)
    b = extract_fbank(load_audio(p), 16000)
    assert a.shape == b.shape == (num_frames(8000), 80)
    assert torch.allclose(a, b, atol=1e-5)


def test_cut_audio_through_lhotse_sources(small_cuts):
    """In-memory and speed-perturbed cuts are read by lhotse and come out like file-backed ones."""
    from lhotse.utils import compute_num_samples

    from just_asr.data.audio import load_cut_audio

    _, spec, cuts = small_cuts
    cut = cuts[0]
    from_file = load_cut_audio(cut)
    assert np.array_equal(from_file, load_audio(spec.paths[cut.id]))
    in_memory = load_cut_audio(cut.move_to_memory(audio_format="flac"))
    assert np.allclose(in_memory, from_file, atol=1e-4)
    fast = cut.perturb_speed(1.1)
    y = load_cut_audio(fast)
    assert len(y) == compute_num_samples(fast.duration, 16000) < len(from_file)


def test_lilcom_precomputed_features(small_cuts, tmp_path):
    _, _, cuts = small_cuts
    stored = compute_and_store_features(cuts, tmp_path / "feats", jobs=1)
    assert len(stored) == len(cuts)
    for c_raw, c in zip(cuts, stored):
        assert c.has_features and c.features.storage_type == "lilcom_chunky"
        a = cut_features(c, "precomputed")
        b = cut_features(c_raw, "on-the-fly")
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=0.05, rtol=0.01)
    # the dataset picks the stored features in "auto" mode and gives identical lengths
    b1 = AsrDataset(None)[stored]
    b2 = AsrDataset(None, feature_source="on-the-fly")[cuts]
    assert torch.equal(b1["feature_lens"], b2["feature_lens"])
    with pytest.raises(ValueError, match="no precomputed features"):
        cut_features(cuts[0], "precomputed")
    # stored features that cannot be read: one line naming the storage, not lhotse's repr of the cut
    from dataclasses import replace

    gone = replace(stored[0], features=replace(stored[0].features, storage_path=str(tmp_path / "moved")))
    with pytest.raises(ValueError) as info:
        cut_features(gone, "precomputed")
    message = str(info.value)
    assert "\n" not in message and f"cut {gone.id}: cannot read stored features ({tmp_path / 'moved'}, key " in message
    assert "MonoCut(" not in message
    # a MixedCut (its features are per track): still a reported, skippable problem, not a crash
    with pytest.raises(ValueError, match=r"cannot read stored features: ") as info:
        cut_features(gone.mix(stored[1]), "precomputed")
    assert "\n" not in str(info.value)


def test_parallel_feature_extraction_equals_serial(small_cuts, tmp_path, monkeypatch):
    """The worker pool (used when each worker gets enough cuts) stores the same matrices in the same
    order as in-process extraction."""
    import just_asr.data.features as features

    _, _, cuts = small_cuts
    serial = compute_and_store_features(cuts, tmp_path / "serial", jobs=2)  # too few cuts: in-process
    monkeypatch.setattr(features, "_AUDIO_SECONDS_PER_WORKER", 0.1)
    pooled = compute_and_store_features(cuts, tmp_path / "pooled", jobs=2)
    assert [c.id for c in pooled] == [c.id for c in serial] == [c.id for c in cuts]
    for a, b in zip(serial, pooled):
        assert torch.equal(cut_features(a, "precomputed"), cut_features(b, "precomputed"))


def test_stored_features_resolve_from_any_directory(small_cuts, tmp_path, monkeypatch):
    """Features computed under a relative path are found after a change of directory."""
    _, _, cuts = small_cuts
    monkeypatch.chdir(tmp_path)
    stored = compute_and_store_features(cuts, "rel/feats", jobs=1)
    assert Path(stored[0].features.storage_path).is_absolute()
    monkeypatch.chdir("/")
    assert cut_features(stored[0], "precomputed").shape[1] == 80


def test_prepare_mls_with_precomputed_features(tmp_path):
    spec = write_mls_corpus(tmp_path / "corpus", langs=("it",), splits={"train": 7, "dev": 1, "test": 1})
    prepare_mls(tmp_path / "corpus", tmp_path / "out", splits=("train",), compute_features=True, progress=False)
    assert not list((tmp_path / "out").glob("*.partial.*"))
    archives = list((tmp_path / "out" / "features").iterdir())
    assert [a.name for a in archives] == ["mls-it_train.lca"]
    for name in ("train", "train-9hr", "train-1hr"):
        cuts = load_manifests(tmp_path / "out", "it", name, lazy=False)
        assert len(cuts) == {"train": 7, "train-9hr": 3, "train-1hr": 4}[name]
        for c in cuts:
            assert c.has_features
            ref = extract_fbank(load_audio(spec.paths[c.id]), 16000)
            got = cut_features(c, "precomputed")
            assert got.shape == ref.shape and torch.allclose(got, ref, atol=0.05, rtol=0.01)


def test_global_cmvn(small_cuts, tmp_path, capsys):
    root, _, cuts = small_cuts
    mats = [cut_features(c, "on-the-fly") for c in cuts]
    allf = torch.cat(mats).double()
    stats = GlobalCMVN.from_cuts(cuts, source="on-the-fly")
    assert stats.count == allf.shape[0]
    assert torch.allclose(stats.mean.double(), allf.mean(0), atol=1e-4)
    assert torch.allclose(stats.std.double(), allf.std(0, unbiased=False), atol=1e-4)
    # save/load round trip
    path = stats.save(tmp_path / "cmvn.json")
    again = GlobalCMVN.load(path)
    assert torch.allclose(again.mean, stats.mean) and torch.allclose(again.std, stats.std)
    # applied in the dataset: valid frames normalised, padding zero
    batch = AsrDataset(None, cmvn=again, feature_source="on-the-fly")[cuts]
    lens = batch["feature_lens"]
    valid = torch.arange(batch["features"].shape[1])[None, :] < lens[:, None]
    x = batch["features"][valid].double()
    assert torch.allclose(x.mean(0), torch.zeros(80, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(80, dtype=torch.float64), atol=1e-3)
    assert torch.all(batch["features"][~valid] == 0)
    # the CLI writes the same statistics
    from just_asr.cli.main import main

    assert main(["compute-cmvn", str(root / "out" / "mls-pl_cuts_train.jsonl.gz"), "--out", str(tmp_path / "cli.json")]) == 0
    data = json.loads((tmp_path / "cli.json").read_text())
    assert data["count"] == stats.count
    assert np.allclose(data["mean"], stats.mean.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="not a CMVN stats file"):
        (tmp_path / "bad.json").write_text("{}")
        GlobalCMVN.load(tmp_path / "bad.json")
    bad = tmp_path / "bad.json"
    cases = {
        json.dumps({"mean": [0.0] * 40, "std": [1.0] * 80}): r"bad CMVN stats \(mean \(40,\) and std \(80,\) differ",
        '{"mean": [NaN, 0.0], "std": [1.0, 1.0]}': r"bad CMVN stats \(mean and std must be finite",
        json.dumps({"mean": [0.0, 0.0], "std": [1.0, -1.0]}): r"bad CMVN stats \(std must not be negative",
        json.dumps({"mean": [[0.0], [0.0, 1.0]], "std": [1.0, 1.0]}): "bad CMVN stats",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ValueError, match=rf"{bad.name}: {message}"):
            GlobalCMVN.load(bad)
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=rf"{bad.name}: not a CMVN stats file"):
        GlobalCMVN.load(bad)
    # compute-cmvn: bad inputs are one-line errors naming the file or option
    (tmp_path / "notman.jsonl").write_text('{"a": 1}\n')
    for argv, message in [
        ([str(tmp_path / "nope.jsonl.gz")], "nope.jsonl.gz: cut manifest not found"),
        ([str(tmp_path / "notman.jsonl")], "notman.jsonl: not a lhotse cut manifest"),
        ([str(root / "out" / "mls-pl_cuts_train.jsonl.gz"), "--max-cuts", "0"], "--max-cuts must be >= 1, got 0"),
    ]:
        assert main(["compute-cmvn", *argv, "--out", str(tmp_path / "x.json")]) == 1
        assert message in capsys.readouterr().err
    # an input that contributes nothing is named
    (tmp_path / "empty_cuts.jsonl").write_text("")
    assert main(["compute-cmvn", str(root / "out" / "mls-pl_cuts_train.jsonl.gz"), str(tmp_path / "empty_cuts.jsonl"),
                 "--out", str(tmp_path / "y.json")]) == 0
    err = capsys.readouterr().err
    assert "empty_cuts.jsonl: the cut manifest holds no cuts" in err and "mls-pl_cuts_train" not in err


def _batch(lens, t=120, f=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lens), t, f, generator=g) + 5.0  # no cell is 0 before masking
    lens_t = torch.tensor(lens)
    pad = torch.arange(t)[None, :] >= lens_t[:, None]
    x[pad] = 7.0  # a padding sentinel
    return x, lens_t, pad


def test_specaugment_masks_structure_and_padding():
    x, lens, pad = _batch([120, 90, 37])
    sa = SpecAugment(num_freq_masks=2, freq_mask_width=10, num_time_masks=3, time_mask_ratio=0.1).train()
    y = sa(x, lens, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and not torch.equal(y, x)
    assert torch.equal(y[pad], x[pad])  # padding untouched
    masked = (y == 0) & ~pad[..., None]
    for b, n in enumerate(lens.tolist()):
        m = masked[b, :n]
        full_cols = m.all(dim=1)  # time-masked frames
        full_rows = m.all(dim=0)  # frequency-masked channels
        # every masked cell belongs to a time mask or a frequency mask
        assert torch.equal(m, full_cols[:, None] | full_rows[None, :])
        assert int(full_rows.sum()) <= 2 * 10
        assert int(full_cols.sum()) <= 3 * int(0.1 * n)
    # input untouched, eval mode is the identity
    assert not (x == 0).any()
    assert sa.eval()(x, lens) is x


def test_specaugment_deterministic_and_adaptive_count():
    x, lens, _ = _batch([200, 20], t=200)
    sa = SpecAugment(num_freq_masks=0, num_time_masks=10, time_mask_ratio=0.05, time_masks_per_frame=0.05).train()
    a = sa(x, lens, generator=torch.Generator().manual_seed(3))
    b = sa(x, lens, generator=torch.Generator().manual_seed(3))
    c = sa(x, lens, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    most_long, most_short = 0, 0
    for seed in range(30):
        y = sa(x, lens, generator=torch.Generator().manual_seed(seed))
        cols = (y == 0).all(dim=2)
        # len 200: min(10, floor(0.05*200)=10) masks of width <= 10; len 20: 1 mask of width <= 1
        assert int(cols[0].sum()) <= 100 and int(cols[1].sum()) <= 1
        most_long = max(most_long, int(cols[0].sum()))
        most_short = max(most_short, int(cols[1].sum()))
    assert most_long > 10  # several masks on the long utterance
    assert most_short == 1
    zero = SpecAugment(num_freq_masks=0, time_masks_per_frame=0.0).train()
    assert torch.equal(zero(x, lens), x)


def test_specaugment_time_warp():
    x, lens, pad = _batch([100, 60])
    off = SpecAugment(num_freq_masks=0, num_time_masks=0).train()
    assert torch.equal(off(x, lens), x)  # warp is off by default
    warp = SpecAugment(num_freq_masks=0, num_time_masks=0, time_warp=5).train()
    y1 = warp(x, lens, generator=torch.Generator().manual_seed(0))
    y2 = warp(x, lens, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y1, y2)
    assert torch.equal(y1[pad], x[pad])
    assert not torch.equal(y1, x)
    # interpolation keeps values inside each channel's range
    for b, n in enumerate(lens.tolist()):
        lo = x[b, :n].min(0).values - 1e-5
        hi = x[b, :n].max(0).values + 1e-5
        assert torch.all(y1[b, :n] >= lo) and torch.all(y1[b, :n] <= hi)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resampled_length_matches_lhotse_manifest_count(sr):
    """A whole file resampled by load_audio has exactly the sample count lhotse's resampled
    Recording declares, so manifests and inference agree frame for frame."""
    from lhotse import AudioSource, Recording

    from just_asr.data.audio import resample

    for n in (sr, sr + 1, sr + 2, 3 * sr // 2 + 1, 7):
        rec = Recording("r", [AudioSource("file", [0], "x.wav")], sr, n, n / sr).resample(16000)
        x = np.sin(np.arange(n, dtype=np.float32) * 0.01)
        assert len(resample(x, sr, 16000)) == rec.num_samples
    # the polyphase filter keeps a tone in band: 1 kHz stays 1 kHz
    x = np.sin(2 * np.pi * 1000 * np.arange(sr) / sr).astype(np.float32)
    y = resample(x, sr, 16000)
    assert abs(np.argmax(np.abs(np.fft.rfft(y))) * 16000 / len(y) - 1000) < 2
