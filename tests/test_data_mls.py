"""MLS reader: manifests against lhotse's own reader, limited-supervision subsets, Opus, untranscribed audio."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data_helpers import tone, write_audio, write_mls_corpus
from just_asr.data.audio import load_audio, load_cut_audio
from just_asr.data.languages import get_language
from just_asr.data.mls import find_language_dirs, load_manifests, manifest_path, prepare_mls


def _read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _handles(path: Path) -> list[str]:
    return [l.strip() for l in path.read_text().splitlines() if l.strip()]


def test_tiny_corpus_matches_lhotse_reader(tiny_corpus_dir, tiny_corpus_counts, tiny_corpus_langs, tmp_path):
    """Our reader and lhotse.recipes.prepare_mls agree on ids, texts, speakers, genders and durations."""
    from lhotse.recipes import prepare_mls as lhotse_prepare_mls

    langs = list(tiny_corpus_langs)
    ours = prepare_mls(tiny_corpus_dir, tmp_path / "out", progress=False)
    ref = lhotse_prepare_mls(tiny_corpus_dir, None, opus=False)
    assert sorted(ours) == sorted(langs)
    for iso in langs:
        mls_name = get_language(iso).mls
        for split, n in tiny_corpus_counts.items():
            rec_ref = ref[mls_name][split]["recordings"]
            sup_ref = ref[mls_name][split]["supervisions"]
            cuts = list(ours[iso][split]["cuts"])
            assert len(cuts) == n == len(rec_ref) == len(sup_ref)
            assert sorted(c.id for c in cuts) == sorted(r.id for r in rec_ref)
            by_id = {s.id: s for s in sup_ref}
            for c in cuts:
                s = c.supervisions[0]
                r = by_id[c.id]
                assert s.text == r.text and s.speaker == r.speaker and s.gender == r.gender
                assert s.language == iso and r.language == mls_name
                assert s.custom["gender"] == r.gender
                assert c.duration == pytest.approx(rec_ref[c.id].duration, abs=1e-9)
                assert c.recording.sampling_rate == 16000
        # limited supervision: exactly the handle files' ids
        lim = tiny_corpus_dir / get_language(iso).folder / "train" / "limited_supervision"
        nine = _handles(lim / "9hr" / "handles.txt")
        one = [u for fold in range(6) for u in _handles(lim / "1hr" / str(fold) / "handles.txt")]
        assert sorted(c.id for c in ours[iso]["train-9hr"]["cuts"]) == sorted(nine)
        assert sorted(c.id for c in ours[iso]["train-1hr"]["cuts"]) == sorted(one)
        assert sorted(c.id for c in ours[iso]["train-10hr"]["cuts"]) == sorted(set(nine) | set(one))
    errors = json.loads((tmp_path / "out" / "prepare_errors.json").read_text())
    assert errors["num_skipped"] == 0 and errors["issues"] == []


def test_manifest_files_fields_and_header_durations(tmp_path):
    spec = write_mls_corpus(tmp_path / "corpus", langs=("de", "pl"), splits={"train": 9, "dev": 2, "test": 2})
    out = tmp_path / "out"
    prepare_mls(tmp_path / "corpus", out, jobs=2, progress=False)
    for iso in ("de", "pl"):
        for split, n in (("train", 9), ("dev", 2), ("test", 2)):
            for kind in ("recordings", "supervisions", "cuts"):
                p = out / f"mls-{iso}_{kind}_{split}.jsonl.gz"
                assert p.is_file() and p == manifest_path(out, iso, kind, split)
                assert len(_read_jsonl(p)) == n
        for name in ("train-9hr", "train-1hr", "train-10hr"):
            assert (out / f"mls-{iso}_cuts_{name}.jsonl.gz").is_file()
        assert sorted(c.id for c in load_manifests(out, iso, "train-9hr")) == sorted(spec.handles_9hr[iso])
        assert sorted(c.id for c in load_manifests(out, get_language(iso).mls, "train-1hr")) == sorted(spec.handles_1hr[iso])
        assert len(spec.handles_1hr[iso]) == 6
        sups = _read_jsonl(out / f"mls-{iso}_supervisions_train.jsonl.gz")
        for s in sups:
            assert s["language"] == iso
            assert s["gender"] == spec.genders[s["speaker"]] == s["custom"]["gender"]
            assert s["text"] == spec.texts[s["id"]]
            # segments.txt claims 99 s per utterance; the duration must be the file's
            n_samples = sf.info(str(spec.paths[s["id"]])).frames
            assert s["duration"] == pytest.approx(n_samples / 16000)
            assert s["duration"] < 1.0
    with pytest.raises(ValueError, match="cut manifest not found"):
        load_manifests(out, "fr", "train")


def test_langs_by_name_or_iso_and_unknown(tmp_path):
    write_mls_corpus(tmp_path / "corpus", langs=("pl", "de"), splits={"train": 2, "dev": 1, "test": 1}, limited=False)
    a = prepare_mls(tmp_path / "corpus", tmp_path / "a", langs=["polish"], splits=("dev",), progress=False)
    b = prepare_mls(tmp_path / "corpus", tmp_path / "b", langs="pl", splits=("dev",), progress=False)
    assert list(a) == list(b) == ["pl"]
    assert [c.id for c in a["pl"]["dev"]["cuts"]] == [c.id for c in b["pl"]["dev"]["cuts"]]
    assert not (tmp_path / "a" / "mls-pl_cuts_train.jsonl.gz").exists()
    with pytest.raises(ValueError, match="unknown MLS language 'klingon'"):
        prepare_mls(tmp_path / "corpus", tmp_path / "c", langs=["klingon"], progress=False)
    with pytest.raises(ValueError, match="no folder mls_french"):
        prepare_mls(tmp_path / "corpus", tmp_path / "c", langs=["fr"], progress=False)
    # a single language folder works as the corpus too
    dirs = find_language_dirs(tmp_path / "corpus" / "mls_german")
    assert [d.language.iso for d in dirs] == ["de"]


def test_opus_corpus_decodes_to_16k(tmp_path):
    from lhotse.recipes import prepare_mls as lhotse_prepare_mls

    spec = write_mls_corpus(tmp_path / "corpus", langs=("pt",), fmt="opus", splits={"train": 3, "dev": 2, "test": 2}, limited=False)
    p = next(iter(spec.paths.values()))
    assert p.suffix == ".opus" and sf.info(str(p)).samplerate == 48000
    res = prepare_mls(tmp_path / "corpus", tmp_path / "out", progress=False)
    ref = lhotse_prepare_mls(tmp_path / "corpus", None, opus=True)
    for split in ("train", "dev", "test"):
        assert sorted(c.id for c in res["pt"][split]["cuts"]) == sorted(r.id for r in ref["portuguese"][split]["recordings"])
    cut = next(iter(res["pt"]["train"]["cuts"]))
    assert cut.recording.sampling_rate == 16000
    x = load_cut_audio(cut)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == round(cut.duration * 16000)
    # the tone survives decoding and resampling: utterance 0 is a 200 Hz sine
    y = load_audio(spec.paths[cut.id])
    assert abs(len(y) - 0.4 * 16000) <= 1
    spectrum = np.abs(np.fft.rfft(y))
    peak_hz = np.argmax(spectrum) * 16000 / len(y)
    assert abs(peak_hz - 200.0) < 10.0
    # inference features of the file equal the training batch's (resampled lengths agree exactly)
    from just_asr.data.dataset import AsrDataset
    from just_asr.data.features import extract_fbank

    batch = AsrDataset(None)[res["pt"]["train"]["cuts"]]
    for i, cid in enumerate(batch["cut_ids"]):
        ref = extract_fbank(load_audio(spec.paths[cid]), 16000)
        assert int(batch["feature_lens"][i]) == ref.shape[0]
        assert torch.equal(batch["features"][i, : ref.shape[0]], ref)
    # Opus resampling is the normal case: no notice about the sampling rate
    errors = json.loads((tmp_path / "out" / "prepare_errors.json").read_text())
    assert errors["issues"] == []


def test_cli_prepare_mls(tmp_path, capsys):
    from just_asr.cli.main import main

    write_mls_corpus(tmp_path / "corpus", langs=("pl", "it"), splits={"train": 7, "dev": 2, "test": 2})
    rc = main(["prepare-mls", str(tmp_path / "corpus"), str(tmp_path / "out"), "--langs", "pl", "--splits", "train", "dev", "--quiet", "--jobs", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "pl: train: 7, train-9hr: 3, train-1hr: 4, train-10hr: 7, dev: 2" in out
    assert "no input problems found" in out
    assert (tmp_path / "out" / "prepare_errors.json").is_file()
    assert not list((tmp_path / "out").glob("mls-it_*"))
    assert not (tmp_path / "out" / "mls-pl_cuts_test.jsonl.gz").exists()


def test_prepare_untranscribed(tmp_path):
    from just_asr.data.dataset import AsrDataset
    from just_asr.data.untranscribed import prepare_untranscribed, untranscribed_manifest_path

    audio = tmp_path / "audio"
    write_audio(audio / "a.wav", tone(1.0, 16000), 16000, "wav")
    write_audio(audio / "sub" / "b.flac", tone(0.5, 22050, channels=2), 22050, "flac")
    write_audio(audio / "sub" / "deeper" / "c.opus", tone(0.6, 48000), 48000, "opus")
    write_audio(audio / "long.flac", tone(3.2, 16000), 16000, "flac")
    (audio / "notes.txt").write_text("not audio")
    cuts = prepare_untranscribed(audio, tmp_path / "out", lang="polish", window=1.0, progress=False)
    ids = sorted(c.id for c in cuts)
    # long.flac: 3.2 s in 1 s windows -> 3 full windows + 0.2 s (< min_duration 0.5, dropped)
    assert ids == ["a", "long-0000", "long-0001", "long-0002", "sub__b", "sub__deeper__c"]
    assert untranscribed_manifest_path(tmp_path / "out", "cuts", "pl").is_file()
    for c in cuts:
        assert c.supervisions[0].text is None and c.supervisions[0].language == "pl"
        assert c.recording.sampling_rate == 16000
    issues = json.loads((tmp_path / "out" / "prepare_errors.json").read_text())["issues"]
    problems = {(Path(i["path"]).name, i["problem"]) for i in issues}
    assert problems == {
        ("b.flac", "sampling rate 22050 Hz, not 16000 Hz: resampled to 16000 Hz"),
        ("b.flac", "2 channels, not mono: downmixed (channel average)"),
    }
    batch = AsrDataset(None)[cuts]
    assert batch["has_text"].tolist() == [False] * 6
    assert batch["target_lens"].tolist() == [0] * 6
    assert batch["langs"] == ["pl"] * 6 and batch["texts"] == [""] * 6
    # without --lang the language is unknown
    cuts2 = prepare_untranscribed(audio / "sub", tmp_path / "out2", progress=False)
    assert AsrDataset(None)[cuts2]["langs"] == ["und", "und"]


def test_cli_prepare_untranscribed_skips_bad_files(tmp_path, capsys):
    from just_asr.cli.main import main

    audio = tmp_path / "audio"
    write_audio(audio / "ok1.flac", tone(0.7, 16000), 16000, "flac")
    write_audio(audio / "ok2.wav", tone(0.6, 16000), 16000, "wav")
    (audio / "broken.flac").write_bytes(b"\x00" * 100)
    sf.write(str(audio / "silent.wav"), np.zeros(0, np.float32), 16000)
    write_audio(audio / "ok1.opus", tone(0.5, 48000), 48000, "opus")  # same id as ok1.flac
    write_audio(audio / "blip.wav", tone(0.05, 16000), 16000, "wav")  # under --min-duration (0.5 s)
    rc = main(["prepare-untranscribed", str(audio), str(tmp_path / "out"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 untranscribed cuts" in out and "4 item(s) skipped" in out
    issues = json.loads((tmp_path / "out" / "prepare_errors.json").read_text())["issues"]
    got = sorted((Path(i["path"]).name, i["problem"].split(" (")[0]) for i in issues)
    assert got == [
        ("blip.wav", "too short: 0.050 s, under the minimum of 0.5 s"),
        ("broken.flac", "cannot read audio header"),
        ("ok1.opus", "same recording id 'ok1' as " + str(audio / "ok1.flac")),
        ("silent.wav", "zero-length audio"),
    ]
    rc = main(["prepare-untranscribed", str(audio), str(tmp_path / "out2"), "--quiet", "--on-error", "fail"])
    assert rc == 1
    # windows shorter than --min-duration would all be left out: refused before reading anything
    capsys.readouterr()
    rc = main(["prepare-untranscribed", str(audio), str(tmp_path / "out3"), "--quiet", "--window", "0.3"])
    assert rc == 1 and "--window (0.3 s) is shorter than --min-duration (0.5 s)" in capsys.readouterr().err
    for bad in (["--window", "nan"], ["--window", "inf"], ["--min-duration", "nan"], ["--min-duration", "-1"]):
        assert main(["prepare-untranscribed", str(audio), str(tmp_path / "out3"), "--quiet", *bad]) == 1, bad
        assert "must be a finite number of seconds" in capsys.readouterr().err, bad
    # a folder none of whose files is usable: the report is written, and the exit status says it failed
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "broken.flac").write_bytes(b"\x00" * 100)
    (only_bad / "empty.wav").write_bytes(b"")
    rc = main(["prepare-untranscribed", str(only_bad), str(tmp_path / "out4"), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1 and "no usable audio, every file was left out" in captured.err
    assert "2 item(s) skipped" in captured.out and (tmp_path / "out4" / "prepare_errors.json").is_file()


def test_unreadable_manifests_are_named_lazily_and_eagerly(tmp_path):
    """A bad line or a truncated .gz surfaces only when the (lazy) stream reaches it, deep inside a
    sampler; the error names the file either way. An empty manifest is an empty CutSet."""
    write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 6, "dev": 1, "test": 1})
    prepare_mls(tmp_path / "corpus", tmp_path / "out", splits=("train",), progress=False)
    good = manifest_path(tmp_path / "out", "pl", "cuts", "train")
    lines = gzip.open(good, "rt").read().splitlines()
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    with gzip.open(manifest_path(bad_dir, "pl", "cuts", "train"), "wt") as f:
        f.write("\n".join(lines[:3] + ['{"id": broken'] + lines[3:]) + "\n")
    data = good.read_bytes()
    manifest_path(bad_dir, "pl", "cuts", "dev").write_bytes(data[: len(data) // 2])
    with gzip.open(manifest_path(bad_dir, "pl", "cuts", "test"), "wt") as f:
        f.write("")
    for split, problem in [("train", "at line 4, column \\d+ \\(JSONDecodeError: [^)]*\\)$"),
                           ("dev", "(at line \\d+ )?\\(EOFError")]:
        for lazy in (True, False):
            with pytest.raises(ValueError, match=rf"mls-pl_cuts_{split}\.jsonl\.gz: unreadable cut manifest {problem}"):
                list(load_manifests(bad_dir, "pl", split, lazy=lazy))
    # the recordings and supervisions manifests prepare-mls writes beside the cuts: said so, lazily and eagerly
    from just_asr.data.loader import read_cut_manifests

    for kind in ("recordings", "supervisions"):
        other = manifest_path(tmp_path / "out", "pl", kind, "train")
        manifest_path(bad_dir, "pl", "cuts", "train-1hr").write_bytes(other.read_bytes())
        for lazy in (True, False):
            with pytest.raises(ValueError, match=rf"train-1hr\.jsonl\.gz: not a cut manifest \(line 1 holds {kind}"):
                list(load_manifests(bad_dir, "pl", "train-1hr", lazy=lazy))
        with pytest.raises(ValueError, match=rf"{kind}_train\.jsonl\.gz: not a cut manifest \(it holds {kind}"):
            read_cut_manifests([other])
    assert len(load_manifests(bad_dir, "pl", "test", lazy=False)) == 0
    assert list(load_manifests(bad_dir, "pl", "test")) == []
    lazy = load_manifests(tmp_path / "out", "pl", "train")
    assert lazy.is_lazy and [c.id for c in lazy] == [c.id for c in load_manifests(tmp_path / "out", "pl", "train", lazy=False)]
    assert len(list(lazy.repeat(times=2))) == 2 * len(lines)
