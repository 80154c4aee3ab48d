"""Bad input: each case gets a message naming the file (and line) and the problem; the rest is kept."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_helpers import SENTENCES, tone, write_audio, write_mls_corpus
from just_asr.data.audio import AudioError, load_audio, probe_audio
from just_asr.data.errors import DataError, ErrorCollector
from just_asr.data.mls import load_manifests, prepare_mls

FAST = dict(num_cuts_for_bins_estimate=200, buffer_size=500, shuffle_buffer_size=500)


def _break_corpus(root: Path):
    """A Polish corpus (train 8, dev 3, test 3) with one problem per utterance of train/dev."""
    spec = write_mls_corpus(root, langs=("pl",), splits={"train": 8, "dev": 3, "test": 3})
    ids = spec.ids[("pl", "train")]
    p = spec.paths
    p[ids[0]].unlink()  # missing audio
    p[ids[1]].write_bytes(b"this is not a flac file" * 10)  # corrupt
    data = p[ids[2]].read_bytes()
    p[ids[2]].write_bytes(data[: len(data) // 2])  # truncated FLAC
    p[ids[3]].write_bytes(b"")  # empty file
    sf.write(str(p[ids[4]]), np.zeros(0, np.float32), 16000, format="WAV")  # zero samples
    write_audio(p[ids[5]], tone(0.5, 22050), 22050, "flac")  # wrong sample rate: kept, resampled
    write_audio(p[ids[6]], tone(0.5, 16000, channels=2), 16000, "flac")  # stereo: kept, downmixed
    tr = root / "mls_polish" / "train" / "transcripts.txt"
    lines = tr.read_text(encoding="utf-8").splitlines()
    lines.insert(3, "1000_500_000099 a line without a tab")
    tr.write_text("\n".join(lines) + "\n", encoding="utf-8")
    dev_ids = spec.ids[("pl", "dev")]
    dv = root / "mls_polish" / "dev" / "transcripts.txt"
    dlines = dv.read_text(encoding="utf-8").splitlines()
    dlines[1] = f"{dev_ids[1]}\t   "  # empty transcript
    dv.write_text("\n".join(dlines) + "\n", encoding="utf-8")
    return spec, ids, dev_ids


def test_prepare_reports_each_problem_and_keeps_the_rest(tmp_path):
    spec, ids, dev_ids = _break_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    errors = ErrorCollector("skip")
    res = prepare_mls(tmp_path / "corpus", out, errors=errors, progress=False)
    # exact counts: 5 unusable train files, 1 empty dev transcript; test untouched
    assert sorted(c.id for c in res["pl"]["train"]["cuts"]) == sorted(ids[5:])
    assert sorted(c.id for c in res["pl"]["dev"]["cuts"]) == sorted([dev_ids[0], dev_ids[2]])
    assert len(list(res["pl"]["test"]["cuts"])) == 3
    # limited supervision: 9hr handles are ids[0:3] (all unusable), 1hr handles ids[3:8]
    assert list(res["pl"]["train-9hr"]["cuts"]) == []
    assert sorted(c.id for c in res["pl"]["train-1hr"]["cuts"]) == sorted(ids[5:])

    msgs = [str(i) for i in errors.skipped]
    tr = "mls_polish/train/transcripts.txt"

    def one(*parts):
        hits = [m for m in msgs if all(p in m for p in parts)]
        assert len(hits) == 1, (parts, msgs)
        return hits[0]

    one(f"{tr}:1", f"audio for utterance {ids[0]} not found")
    one(f"{ids[1]}.flac", "cannot read audio header (corrupt file or unsupported format")
    one(f"{ids[2]}.flac", "corrupt or truncated audio")
    one(f"{ids[3]}.flac", "empty file (0 bytes)")
    one(f"{ids[4]}.flac", "zero-length audio")
    one(f"{tr}:4", "no tab between utterance id and transcript (the id must be followed by a tab, not spaces)")
    one("mls_polish/dev/transcripts.txt:2", f"empty transcript for utterance {dev_ids[1]}")
    assert errors.num_skipped == 7
    kept = [str(i) for i in errors.kept]
    assert any(f"{ids[5]}.flac" in m and "sampling rate 22050 Hz, not 16000 Hz: resampled" in m for m in kept)
    assert any(f"{ids[6]}.flac" in m and "2 channels, not mono: downmixed" in m for m in kept)
    assert sum("limited_supervision/9hr/handles.txt" in m and "not among the usable train" in m for m in kept) == 3
    # the JSON report lists the same
    report = json.loads((out / "prepare_errors.json").read_text())
    assert report["num_skipped"] == 7 and len(report["issues"]) == len(errors)
    assert {"path", "line", "problem", "action"} <= set(report["issues"][0])
    summary = errors.summary()
    assert summary.startswith("7 item(s) skipped") and "no tab between utterance id and transcript" in summary
    # the resampled and the downmixed files load as 16 kHz mono of the right length
    cuts = {c.id: c for c in load_manifests(out, "pl", "train")}
    from just_asr.data.audio import load_cut_audio

    assert cuts[ids[5]].recording.sampling_rate == 16000
    assert len(load_cut_audio(cuts[ids[5]])) == 8000
    assert load_cut_audio(cuts[ids[6]]).shape == (8000,)


def test_fail_policy_stops_with_the_first_problem(tmp_path, capsys):
    _break_corpus(tmp_path / "corpus")
    with pytest.raises(DataError, match=r"mls_polish/train/transcripts.txt:4: no tab between utterance id and transcript"):
        prepare_mls(tmp_path / "corpus", tmp_path / "out", on_error="fail", progress=False)
    assert (tmp_path / "out" / "prepare_errors.json").is_file()
    from just_asr.cli.main import main

    rc = main(["prepare-mls", str(tmp_path / "corpus"), str(tmp_path / "out2"), "--on-error", "fail", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "no tab between utterance id and transcript" in captured.err
    # the item it stopped at is not called skipped
    assert "0 item(s) skipped" in captured.out and "the run stopped at " in captured.out
    assert "transcripts.txt:4 (--on-error fail)" in captured.out
    report = json.loads((tmp_path / "out2" / "prepare_errors.json").read_text())
    assert report["num_skipped"] == 0 and report["stopped_at"]["line"] == 4
    assert [i["action"] for i in report["issues"]] == ["stopped"]
    rc = main(["prepare-mls", str(tmp_path / "corpus"), str(tmp_path / "out3"), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "7 item(s) skipped" in out and "pl: train: 3, train-9hr: 0, train-1hr: 3" in out


def test_header_only_mode_misses_truncation_but_training_reports_it(tmp_path):
    spec, ids, _ = _break_corpus(tmp_path / "corpus")
    errors = ErrorCollector()
    prepare_mls(tmp_path / "corpus", tmp_path / "out", verify_audio=False, errors=errors, splits=("train",), progress=False)
    cuts = load_manifests(tmp_path / "out", "pl", "train", lazy=False)
    assert ids[2] in {c.id for c in cuts}  # the truncated file's header is fine
    from just_asr.data.dataset import AsrDataset

    ds_errors = ErrorCollector()
    batch = AsrDataset(None, errors=ds_errors)[cuts]
    assert sorted(batch["cut_ids"]) == sorted(ids[5:])
    assert len(ds_errors.skipped) == 1 and f"{ids[2]}.flac" in str(ds_errors.skipped[0])
    assert "truncated" in ds_errors.skipped[0].problem


def test_cuts_too_short_for_the_model_are_reported_and_left_out(tmp_path):
    """A 50 ms and a 2 ms recording among normal ones: with the model's minimum (``min_frames``) they
    are reported by name and left out, and the batch keeps the others (the model would otherwise
    refuse the whole batch)."""
    spec = write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 4, "dev": 1, "test": 1})
    ids = spec.ids[("pl", "train")]
    write_audio(spec.paths[ids[0]], tone(0.05, 16000), 16000, "flac")
    write_audio(spec.paths[ids[1]], tone(0.002, 16000), 16000, "flac")
    prepare_mls(tmp_path / "corpus", tmp_path / "out", splits=("train",), progress=False)
    cuts = load_manifests(tmp_path / "out", "pl", "train", lazy=False)
    assert {ids[0], ids[1]} <= {c.id for c in cuts}
    from just_asr.data.dataset import AsrDataset
    from just_asr.data.loader import make_eval_dataloader

    errors = ErrorCollector()
    batch = AsrDataset(None, errors=errors, min_frames=7)[cuts]
    assert sorted(batch["cut_ids"]) == sorted(ids[2:])
    problems = {e.path: e.problem for e in errors.skipped}
    assert "5 feature frames, fewer than the model's minimum of 7" in problems[str(spec.paths[ids[0]])]
    assert "no feature frames" in problems[str(spec.paths[ids[1]])]
    assert sorted(AsrDataset(None)[cuts]["cut_ids"]) == sorted(ids[:1] + ids[2:])  # default: 1 frame
    loader = make_eval_dataloader(cuts, None, max_duration=100.0, min_frames=7)
    assert sorted(c for b in loader for c in b["cut_ids"]) == sorted(ids[2:]) and len(loader.errors.skipped) == 2
    with pytest.raises(ValueError, match="min_frames must be >= 1"):
        AsrDataset(None, min_frames=0)


def test_load_audio_errors_and_policies(tmp_path):
    good = write_audio(tmp_path / "good.flac", tone(0.5, 16000), 16000)
    cases = {
        tmp_path / "missing.flac": "audio file not found",
        tmp_path / "empty.flac": "empty file (0 bytes)",
        tmp_path / "corrupt.flac": "cannot read audio",
        tmp_path / "trunc.flac": "truncated audio",
        tmp_path / "zero.wav": "zero-length audio",
    }
    (tmp_path / "empty.flac").write_bytes(b"")
    (tmp_path / "corrupt.flac").write_bytes(b"RIFF-not-really" * 5)
    (tmp_path / "trunc.flac").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    sf.write(str(tmp_path / "zero.wav"), np.zeros(0, np.float32), 16000)
    for path, problem in cases.items():
        with pytest.raises(AudioError) as ei:
            load_audio(path)
        assert isinstance(ei.value, ValueError)
        assert str(path) in str(ei.value) and problem in str(ei.value)
    with pytest.raises(AudioError, match="truncated"):
        probe_audio(tmp_path / "trunc.flac", decode=True)
    assert probe_audio(tmp_path / "trunc.flac").num_frames == 8000  # the header alone looks fine
    # stereo -> channel average; 8 kHz -> resampled
    st = tone(0.25, 16000, channels=2)
    write_audio(tmp_path / "st.wav", st, 16000, "wav")
    y = load_audio(tmp_path / "st.wav")
    assert y.shape == (4000,)
    ref = sf.read(str(tmp_path / "st.wav"), dtype="float32")[0].mean(axis=1)
    assert np.allclose(y, ref, atol=1e-6)
    write_audio(tmp_path / "nb.wav", tone(0.5, 8000), 8000, "wav")
    assert load_audio(tmp_path / "nb.wav").shape == (8000,)
    write_audio(tmp_path / "low.wav", tone(0.5, 4000), 4000, "wav")
    with pytest.raises(AudioError, match="sampling rate 4000 Hz is below the 8000 Hz minimum"):
        load_audio(tmp_path / "low.wav")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from just_asr.data.tokenizer import Tokenizer, train_tokenizer

    texts = {iso: s * 20 for iso, s in SENTENCES.items()}
    return Tokenizer(train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=120))


def _corpus_with_foreign_text(root: Path):
    spec = write_mls_corpus(root / "corpus", langs=("pl",), splits={"train": 6, "dev": 1, "test": 1}, limited=False)
    tr = root / "corpus" / "mls_polish" / "train" / "transcripts.txt"
    lines = tr.read_text(encoding="utf-8").splitlines()
    bad_id = lines[2].split("\t")[0]
    lines[2] = f"{bad_id}\tpowiedział жук €"
    tr.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare_mls(root / "corpus", root / "out", splits=("train",), progress=False)
    return load_manifests(root / "out", "pl", "train", lazy=False), bad_id, spec


def test_unknown_characters_in_the_dataset(tmp_path, tok):
    from just_asr.data.dataset import AsrDataset

    cuts, bad_id, spec = _corpus_with_foreign_text(tmp_path)
    errors = ErrorCollector()
    batch = AsrDataset(tok, errors=errors)[cuts]
    assert len(batch["cut_ids"]) == 5 and bad_id not in batch["cut_ids"]
    assert batch["has_text"].all()
    assert len(errors.skipped) == 1
    msg = str(errors.skipped[0])
    assert f"{bad_id}.flac" in msg and "characters the tokenizer lacks" in msg
    assert "'ж' (U+0436)" in msg and "'€' (U+20AC)" in msg
    # as untranscribed: kept without text
    b2 = AsrDataset(tok, on_unknown_chars="untranscribed")[cuts]
    i = b2["cut_ids"].index(bad_id)
    assert not b2["has_text"][i] and b2["target_lens"][i] == 0 and b2["targets"][i].eq(0).all()
    assert int(b2["has_text"].sum()) == 5
    # as <unk>
    b3 = AsrDataset(tok, on_unknown_chars="unk")[cuts]
    i = b3["cut_ids"].index(bad_id)
    assert tok.unk_id in b3["targets"][i, : b3["target_lens"][i]].tolist()
    with pytest.raises(DataError, match="characters the tokenizer lacks"):
        AsrDataset(tok, on_unknown_chars="fail")[cuts]
    # targets hold exactly the encoded text, padded with blank
    for row, cid in enumerate(batch["cut_ids"]):
        ids = tok.encode(spec.texts[cid])
        n = int(batch["target_lens"][row])
        assert batch["targets"][row, :n].tolist() == ids and batch["targets"][row, n:].eq(0).all()
        assert batch["texts"][row] == spec.texts[cid]


def test_unknown_characters_filtered_by_the_train_loader(tmp_path, tok):
    from just_asr.data.loader import make_train_dataloader

    cuts, bad_id, _ = _corpus_with_foreign_text(tmp_path)
    errors = ErrorCollector()
    dl = make_train_dataloader({"pl": cuts}, tok, max_duration=2.0, num_buckets=1, errors=errors, **FAST)
    seen = set()
    for batch in itertools.islice(dl, 10):
        seen.update(batch["cut_ids"])
    assert bad_id not in seen and len(seen) >= 3
    assert len(errors.skipped) == 1 and bad_id in errors.skipped[0].problem


def test_audio_removed_after_prepare_is_reported_by_the_dataset(tmp_path):
    from just_asr.data.dataset import AsrDataset

    spec = write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 4, "dev": 1, "test": 1}, limited=False)
    prepare_mls(tmp_path / "corpus", tmp_path / "out", splits=("train",), progress=False)
    cuts = load_manifests(tmp_path / "out", "pl", "train", lazy=False)
    gone = spec.ids[("pl", "train")][1]
    spec.paths[gone].unlink()
    errors = ErrorCollector()
    batch = AsrDataset(None, errors=errors)[cuts]
    assert len(batch["cut_ids"]) == 3 and gone not in batch["cut_ids"]
    assert f"{gone}.flac: audio file not found" in str(errors.skipped[0])
    shutil.rmtree(tmp_path / "corpus")
    with pytest.raises(DataError, match="every cut of a batch of 4 was unusable"):
        AsrDataset(None, errors=ErrorCollector())[cuts]
    # the loaders' setting: the batch is reported with its cut ids and comes out as a LeftOutBatch
    # (in the main process it carries no issues: its collector has them)
    from just_asr.data.dataset import LeftOutBatch

    errors = ErrorCollector()
    left = AsrDataset(None, errors=errors, empty_batch="skip")[cuts]
    assert isinstance(left, LeftOutBatch) and left.cut_ids == [c.id for c in cuts] and left.data_issues == []
    last = errors.skipped[-1]
    assert "every cut of a batch of 4 was unusable" in last.problem and "the batch is left out" in last.problem
    assert all(c.id in last.problem for c in cuts)
    with pytest.raises(ValueError, match="empty_batch must be 'raise' or 'skip'"):
        AsrDataset(None, empty_batch="ignore")


class _SomeEmpty(__import__("torch").utils.data.Dataset):
    """Item i is ``None`` where ``empty(i)``, else ``{"i": i}``."""

    def __init__(self, n, empty):
        self.n, self.empty = n, empty

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return None if self.empty(i) else {"i": i}


@pytest.mark.parametrize("workers", [0, 1])
def test_skip_empty_batches_drops_none_and_stops_on_a_long_run(workers):
    from just_asr.data.loader import SkipEmptyBatches

    dl = SkipEmptyBatches(_SomeEmpty(10, lambda i: i in (2, 3, 7)), batch_size=None, num_workers=workers)
    assert [b["i"] for b in dl] == [0, 1, 4, 5, 6, 8, 9]
    dl = SkipEmptyBatches(_SomeEmpty(150, lambda i: i >= 5), batch_size=None, num_workers=workers)
    it = iter(dl)
    assert [next(it)["i"] for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="100 batches in a row had no usable cut"):
        next(it)
    # the count restarts at each usable batch: 150 empty ones, never two in a row, are no error
    dl = SkipEmptyBatches(_SomeEmpty(300, lambda i: i % 2 == 1), batch_size=None, num_workers=workers)
    assert [b["i"] for b in dl] == list(range(0, 300, 2))
    # a finite pass without a limit reports them all and ends; require_a_batch stops an empty pass
    dl = SkipEmptyBatches(_SomeEmpty(150, lambda i: i != 140), batch_size=None, max_empty_in_a_row=None)
    assert [b["i"] for b in dl] == [140]
    dl = SkipEmptyBatches(_SomeEmpty(3, lambda i: True), batch_size=None, max_empty_in_a_row=None,
                          require_a_batch=True)
    with pytest.raises(DataError, match="no batch of this pass had a usable cut"):
        list(dl)
    assert list(SkipEmptyBatches(_SomeEmpty(3, lambda i: True), batch_size=None, max_empty_in_a_row=None)) == []


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_of_one_unreadable_cut_does_not_stop_the_train_loader(tmp_path, workers):
    """One cut per batch (``max_cuts=1``, as long MLS utterances give with a small max_duration):
    the cut whose audio is gone makes a batch with nothing usable. It is reported and the loader
    goes on with the next batch of the stream; the stream indices say which batch was left out."""
    from just_asr.data.loader import make_train_dataloader

    spec = write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 4, "dev": 1, "test": 1})
    ids = spec.ids[("pl", "train")]
    prepare_mls(tmp_path / "corpus", tmp_path / "out", splits=("train",), progress=False)
    spec.paths[ids[2]].unlink()
    cuts = load_manifests(tmp_path / "out", "pl", "train")
    dl = make_train_dataloader({"pl": cuts}, None, max_duration=100.0, max_cuts=1, num_buckets=1,
                               num_workers=workers, **FAST)
    batches = list(itertools.islice(dl, 9))
    got = [b["cut_ids"][0] for b in batches]
    assert len(got) == 9 and ids[2] not in got and set(got) == set(ids) - {ids[2]}
    order = [cuts for _, cuts in itertools.islice(iter(dl.sampler), 40)]
    expected = [i for i, c in enumerate(order) if c[0].id != ids[2]][:9]
    assert [b["stream_index"] for b in batches] == expected  # the left-out batches' indices are missing
    # exact resume across a left-out batch: continuing after the k-th trained batch's index gives the
    # uninterrupted run's next batches
    for k in (1, 2, 3, 5):
        again = make_train_dataloader({"pl": cuts}, None, max_duration=100.0, max_cuts=1, num_buckets=1,
                                      num_workers=workers, **FAST)
        again.sampler.resume_from(batches[k - 1]["stream_index"] + 1)
        rest = list(itertools.islice(again, 4))
        assert [b["stream_index"] for b in rest] == [b["stream_index"] for b in batches[k : k + 4]]
        assert [b["cut_ids"] for b in rest] == [b["cut_ids"] for b in batches[k : k + 4]]
    # the reports reach the main process's collector, from a worker too
    assert any(f"{ids[2]}.flac" in str(e) for e in dl.errors.skipped)
    assert any("the batch is left out" in e.problem for e in dl.errors.skipped)
    assert all("data_issues" not in b for b in batches)


def test_datamodule_gives_its_loaders_the_models_minimum_length(tmp_path):
    """``JustDataModule`` passes the attached model's ``frontend.min_input_frames`` to the train and
    dev loaders (1 without a model), so a too-short cut is reported there, not fatal in the model."""
    from types import SimpleNamespace

    from just_asr.model import JustModel, ModelConfig
    from just_asr.train.datamodule import JustDataModule

    write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 4, "dev": 2, "test": 1})
    prepare_mls(tmp_path / "corpus", tmp_path / "out", progress=False)
    dm = JustDataModule(str(tmp_path / "out"), langs=["pl"], max_duration=20.0, num_buckets=1)
    assert dm._min_frames() == 1
    cfg = ModelConfig.from_dict({"frontend": {"conv_channels": 4, "conv_layers": 3},
                                 "encoder": {"d_model": 16, "num_heads": 2, "ffn_dim": 32}})
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(model=JustModel(cfg, 11)), world_size=1,
                                 global_rank=0)
    assert dm._min_frames() == 15  # 3 stride-2 convolutions
    assert dm.train_dataloader().dataset.min_frames == 15
    assert dm.val_dataloader().dataset.min_frames == 15
    # an empty dev manifest with a per-language cap: no cuts (lhotse's subset refused first=0)
    import gzip

    with gzip.open(tmp_path / "out" / "mls-pl_cuts_dev.jsonl.gz", "wt") as f:
        f.write("")
    capped = JustDataModule(str(tmp_path / "out"), langs=["pl"], max_duration=20.0, max_dev_cuts_per_lang=1)
    assert len(capped.dev_cuts()) == 0


def test_train_loader_filters_too_short_cuts_before_batching(tmp_path):
    """Half the corpus is 50 ms clips (5 frames; the model needs 7): the duration buckets would put
    them together in batches with nothing usable (which stopped fit); they are reported and filtered
    before batching, and every batch holds only usable cuts."""
    import itertools

    from just_asr.data.loader import make_train_dataloader

    spec = write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 8, "dev": 1, "test": 1})
    ids = spec.ids[("pl", "train")]
    for i in ids[:4]:
        write_audio(spec.paths[i], tone(0.05, 16000), 16000, "flac")
    prepare_mls(tmp_path / "corpus", tmp_path / "out", splits=("train",), progress=False)
    cuts = load_manifests(tmp_path / "out", "pl", "train")
    dl = make_train_dataloader({"pl": cuts}, None, max_duration=0.4, num_buckets=2, min_frames=7, **FAST)
    sampled = [c.id for _, batch in itertools.islice(iter(dl.sampler), 12) for c in batch]
    assert sampled and set(sampled) <= set(ids[4:])  # filtered before batching, not inside the batch
    seen = {c for b in itertools.islice(dl, 12) for c in b["cut_ids"]}
    assert seen and seen <= set(ids[4:])
    reported = {e.path for e in dl.errors.skipped}
    assert reported == {str(spec.paths[i]) for i in ids[:4]}
    assert all("fewer than the model's minimum of 7" in e.problem for e in dl.errors.skipped)


def _touch_on_worker_start(where, worker_id):
    (Path(where) / f"worker{worker_id}").write_text("started")


def test_reports_from_workers_reach_the_main_process_once(tmp_path, capfd, caplog):
    """Two DataLoader workers each meet a cut whose audio is gone: both problems end up in the
    main process's ``loader.errors`` (the old loaders left them in the worker), are printed once
    each (by the main process, not again by the worker), and the batches reach the caller without
    the ``data_issues`` they carried. A ``worker_init_fn`` set on the loader still runs."""
    import logging
    import os
    import sys
    from functools import partial

    from lhotse.dataset import SimpleCutSampler

    from just_asr.data.dataset import AsrDataset
    from just_asr.data.loader import SkipEmptyBatches

    spec = write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 1, "dev": 1, "test": 6})
    prepare_mls(tmp_path / "corpus", tmp_path / "out", splits=("test",), progress=False)
    cuts = load_manifests(tmp_path / "out", "pl", "test", lazy=False)
    gone = spec.ids[("pl", "test")][1], spec.ids[("pl", "test")][4]
    for g in gone:
        spec.paths[g].unlink()
    handler = logging.StreamHandler(sys.stderr)  # every process that logs writes to the captured fd 2
    logging.getLogger("just_asr").addHandler(handler)
    try:
        # one cut per batch, so that both workers read one of the missing files
        dl = SkipEmptyBatches(AsrDataset(None, errors=ErrorCollector(), empty_batch="skip"),
                              sampler=SimpleCutSampler(cuts, max_cuts=1), batch_size=None, num_workers=2,
                              max_empty_in_a_row=None)
        assert dl.errors is dl.dataset.errors
        # the attribute stays the caller's (Lightning adds its worker seeding only where it is None),
        # and one set after construction, as Lightning does, still runs in the workers
        assert dl.worker_init_fn is None
        dl.worker_init_fn = partial(_touch_on_worker_start, str(tmp_path))
        batches = list(dl)
    finally:
        logging.getLogger("just_asr").removeHandler(handler)
    err = capfd.readouterr().err
    assert sorted(c for b in batches for c in b["cut_ids"]) == sorted(set(c.id for c in cuts) - set(gone))
    assert all("data_issues" not in b for b in batches)
    for g in gone:
        assert [i for i in dl.errors.skipped if i.path == str(spec.paths[g])], (g, dl.errors.issues)
        # once on fd 2, and that once is the main process's record (so no worker printed it)
        assert err.count(f"{g}.flac: audio file not found") == 1, err
        assert [r.process for r in caplog.records if f"{g}.flac: audio file not found" in r.getMessage()] == [os.getpid()]
        assert err.count(f"batch of 1 was unusable; see the warnings above (cuts {g})") == 1, err
    assert dl.errors.num_skipped == 4  # two files, two left-out batches
    # a second pass forks new workers from a main process that knows these issues: nothing is sent again
    received = []
    extend = dl.errors.extend
    dl.errors.extend = lambda issues: (received.extend(issues), extend(issues))
    assert len(list(dl)) == len(batches) and received == [] and dl.errors.num_skipped == 4
    assert (tmp_path / "worker0").is_file() and (tmp_path / "worker1").is_file()


def test_data_issue_report_file(tmp_path, capsys):
    """``DataIssueReport``: the file with empty lists and no summary without a problem; the file and
    the printed summary otherwise; the list survives a checkpoint (state_dict round trip, each issue
    once when met again); one file per rank under DDP."""
    from types import SimpleNamespace

    from just_asr.train.callbacks import DataIssueReport

    train, dev = ErrorCollector(log=False), ErrorCollector(log=False)
    dm = SimpleNamespace(data_issues=lambda: {"train": train, "dev": dev})
    trainer = SimpleNamespace(datamodule=dm, world_size=1, global_rank=0, default_root_dir=str(tmp_path))
    cb = DataIssueReport(max_listed=1)
    cb.setup(trainer, None, "fit")
    path = cb.write(trainer)
    assert path == tmp_path / "data_issues.json"
    assert json.loads(path.read_text())["train"]["issues"] == [] and capsys.readouterr().out == ""
    train.report("/a.flac", "audio file not found")
    train.report("/b.flac", "corrupt or truncated audio")
    dev.warn("/c.flac", "22050 Hz, resampled")
    cb.write(trainer)
    data = json.loads(path.read_text())
    assert data["train"]["num_skipped"] == 2 and data["dev"]["num_kept_with_notice"] == 1
    assert [i["path"] for i in data["train"]["issues"]] == ["/a.flac", "/b.flac"]
    out = capsys.readouterr().out
    assert str(path) in out and "train: 2 item(s) skipped" in out and "/a.flac: audio file not found" in out
    assert "/b.flac" not in out and "... and 1 more" in out  # max_listed=1
    with pytest.raises(ValueError, match="max_listed must be >= 0"):
        DataIssueReport(max_listed=-1)

    # a resumed run: the checkpoint's list first, then this run's new issues (each once)
    state = cb.state_dict()
    train2 = ErrorCollector(log=False)
    train2.report("/b.flac", "corrupt or truncated audio")
    train2.report("/d.flac", "empty file (0 bytes)")
    resumed = SimpleNamespace(**{**vars(trainer), "datamodule": SimpleNamespace(data_issues=lambda: {"train": train2})})
    cb2 = DataIssueReport()
    cb2.load_state_dict(json.loads(json.dumps(state)))  # plain types only
    cb2.setup(resumed, None, "fit")
    merged = cb2.merged()
    assert [i.path for i in merged["train"].issues] == ["/a.flac", "/b.flac", "/d.flac"]
    assert merged["train"].num_skipped == 3 and [i.path for i in merged["dev"].issues] == ["/c.flac"]
    module = SimpleNamespace(step_metric_queue={})
    cb2.on_train_batch_end(resumed, module, None, None, 0)
    assert module.step_metric_queue["data/skipped_items"][0] == 3.0
    cb2.write(resumed, announce=False)
    assert [i["path"] for i in json.loads(path.read_text())["train"]["issues"]] == ["/a.flac", "/b.flac", "/d.flac"]
    assert capsys.readouterr().out == ""

    # DDP: a file per rank
    ranked = SimpleNamespace(**{**vars(trainer), "world_size": 2, "global_rank": 1})
    assert cb.write(ranked) == tmp_path / "data_issues.rank1.json"
    assert "(rank 1)" in capsys.readouterr().out

    # DDP resume: the checkpoint holds rank 0's list; rank 1 goes on with its own file's, not rank 0's
    ddp_dir = tmp_path / "ddp"
    rank_lists = {0: ["/r0.flac"], 1: ["/r1.flac", "/r1b.flac"]}
    states = {}
    for rank, paths in rank_lists.items():
        c = ErrorCollector(log=False)
        for p in paths:
            c.report(p, "audio file not found")
        t = SimpleNamespace(datamodule=SimpleNamespace(data_issues=lambda c=c: {"train": c}), world_size=2,
                            global_rank=rank, default_root_dir=str(ddp_dir))
        before = DataIssueReport()
        before.setup(t, None, "fit")
        states[rank] = before.state_dict()
        before.on_save_checkpoint(t, None, {})  # each rank writes its file at the checkpoint
    assert states[0]["rank"] == 0 and states[1]["rank"] == 1
    saved = json.loads(json.dumps(states[0]))  # what rank 0 wrote into the checkpoint
    for rank, paths in rank_lists.items():
        t = SimpleNamespace(datamodule=SimpleNamespace(data_issues=lambda: {"train": ErrorCollector(log=False)}),
                            world_size=2, global_rank=rank, default_root_dir=str(ddp_dir))
        after = DataIssueReport()
        after.setup(t, None, "fit")  # Lightning: setup, then the checkpoint's callback state
        after.load_state_dict(saved)
        assert [i.path for i in after.merged()["train"].issues] == paths, rank
    # a checkpoint from before the rank was saved counts as rank 0's
    legacy = DataIssueReport()
    legacy.setup(SimpleNamespace(**{**vars(trainer), "datamodule": None}), None, "fit")
    legacy.load_state_dict({"issues": saved["issues"]})
    assert [i.path for i in legacy.merged()["train"].issues] == ["/r0.flac"]
