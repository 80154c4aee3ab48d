"""Bad input end to end: ``prepare-mls --on-error skip`` -> ``fit`` -> ``export`` -> ``decode``.

A Polish corpus in MLS layout gets one broken item of every kind the data layer knows (the kinds of
``test_bad_input.py``), plus a file with a ``.flac`` name that is not audio at all (a JSON
document) and a transcript line in Latin-1 bytes, spread over train, dev and test. Two more
files are unusual but usable (22.05 kHz, stereo): they are resampled/downmixed and kept.

Checks: every command succeeds; ``prepare_errors.json`` lists exactly the N broken items as
skipped, each with its reason (and the two usable ones as kept); the manifests hold exactly every
other utterance; training reads only good cuts and reports no data errors; the decode output covers
exactly the good test utterances.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from data_helpers import tone, write_audio, write_mls_corpus
from just_asr.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]

from data_helpers import SMALL_MODEL_ARGS as SMALL  # a ~50k-parameter model for `fit` runs


def _replace_line(path: Path, utt: str, new: bytes) -> None:
    """Replace the transcript line of ``utt`` by the raw bytes ``new``."""
    lines = path.read_bytes().split(b"\n")
    i = next(k for k, l in enumerate(lines) if l.startswith(utt.encode() + b"\t"))
    lines[i] = new
    path.write_bytes(b"\n".join(lines))


def break_corpus(root: Path) -> tuple[dict, list[tuple[str, str, str]], dict[str, set[str]]]:
    """Write the corpus and break it. Returns (spec, expected skipped items as (split, where, reason),
    good utterance ids per split)."""
    spec = write_mls_corpus(root, langs=("pl",), splits={"train": 14, "dev": 4, "test": 5}, limited=False)
    tr, dv, te = (spec.ids[("pl", s)] for s in ("train", "dev", "test"))
    p = spec.paths
    base = root / "mls_polish"
    expected: list[tuple[str, str, str]] = []
    bad: set[str] = set()

    def broke(split: str, utt: str | None, where: str, reason: str) -> None:
        expected.append((split, where, reason))
        if utt:
            bad.add(utt)

    p[tr[0]].unlink()
    broke("train", tr[0], "mls_polish/train/transcripts.txt:1", f"audio for utterance {tr[0]} not found")
    p[tr[1]].write_bytes(b"this is not a flac file" * 10)
    broke("train", tr[1], f"{tr[1]}.flac", "cannot read audio header (corrupt file or unsupported format")
    data = p[tr[2]].read_bytes()
    p[tr[2]].write_bytes(data[: len(data) // 2])
    broke("train", tr[2], f"{tr[2]}.flac", "corrupt or truncated audio")
    p[tr[3]].write_bytes(b"")
    broke("train", tr[3], f"{tr[3]}.flac", "empty file (0 bytes)")
    sf.write(str(p[tr[4]]), np.zeros(0, np.float32), 16000, format="WAV")
    broke("train", tr[4], f"{tr[4]}.flac", "zero-length audio")
    p[tr[5]].write_text(json.dumps({"this": "is a JSON document", "not": ["audio"]}) + "\n")  # not audio at all
    broke("train", tr[5], f"{tr[5]}.flac", "cannot read audio header (corrupt file or unsupported format")
    _replace_line(base / "train" / "transcripts.txt", tr[6], f"{tr[6]}\tcafé naïve".encode("latin-1"))
    broke("train", tr[6], "mls_polish/train/transcripts.txt:7", "line is not valid UTF-8")
    lines = (base / "train" / "transcripts.txt").read_bytes().split(b"\n")
    lines.insert(9, b"1000_500_000099 a line without a tab")
    (base / "train" / "transcripts.txt").write_bytes(b"\n".join(lines))
    broke("train", None, "mls_polish/train/transcripts.txt:10", "no tab between utterance id and transcript")
    write_audio(p[tr[7]], tone(0.5, 22050), 22050, "flac")  # usable: resampled
    write_audio(p[tr[8]], tone(0.5, 16000, channels=2), 16000, "flac")  # usable: downmixed
    # dev: an empty transcript; test: a truncated file and a Latin-1 line
    _replace_line(base / "dev" / "transcripts.txt", dv[1], f"{dv[1]}\t   ".encode())
    broke("dev", dv[1], "mls_polish/dev/transcripts.txt:2", f"empty transcript for utterance {dv[1]}")
    data = p[te[0]].read_bytes()
    p[te[0]].write_bytes(data[: len(data) // 3])
    broke("test", te[0], f"{te[0]}.flac", "corrupt or truncated audio")
    _replace_line(base / "test" / "transcripts.txt", te[3], f"{te[3]}\tgar\xe7on".encode("latin-1"))
    broke("test", te[3], "mls_polish/test/transcripts.txt:4", "line is not valid UTF-8")
    good = {s: set(spec.ids[("pl", s)]) - bad for s in ("train", "dev", "test")}
    return spec, expected, good


def test_broken_corpus_goes_through_prepare_fit_decode(tmp_path, capsys, monkeypatch):
    from just_asr.data.mls import load_manifests
    from just_asr.data.tokenizer import train_tokenizer
    from just_asr.train.module import JustLightningModule

    spec, expected, good = break_corpus(tmp_path / "corpus")
    out = tmp_path / "manifests"

    # --- prepare
    assert cli(["prepare-mls", str(tmp_path / "corpus"), str(out), "--on-error", "skip", "--quiet"]) == 0
    printed = capsys.readouterr().out
    n = len(expected)
    assert n == 11
    assert f"{n} item(s) skipped" in printed
    report = json.loads((out / "prepare_errors.json").read_text())
    skipped = [i for i in report["issues"] if i["action"] == "skipped"]
    assert report["num_skipped"] == n and len(skipped) == n, json.dumps(skipped, indent=1)

    def where(issue: dict) -> str:
        return f"{issue['path']}:{issue['line']}" if issue.get("line") else str(issue["path"])

    unmatched = list(skipped)
    for split, loc, reason in expected:
        hits = [i for i in unmatched if where(i).endswith(loc) and reason in i["problem"]]
        assert len(hits) == 1, (split, loc, reason, [(where(i), i["problem"]) for i in unmatched])
        unmatched.remove(hits[0])
    assert unmatched == []
    kept = [f"{where(i)}: {i['problem']}" for i in report["issues"] if i["action"] != "skipped"]
    tr = spec.ids[("pl", "train")]
    assert any(f"{tr[7]}.flac" in k and "resampled" in k for k in kept)
    assert any(f"{tr[8]}.flac" in k and "downmixed" in k for k in kept)
    for split in ("train", "dev", "test"):
        ids = {c.id for c in load_manifests(out, "pl", split)}
        assert ids == good[split], (split, sorted(ids ^ good[split]))

    # --- fit a few steps on what was kept (dev WER once at the end); record the cut ids trained on
    texts = {"pl": [spec.texts[u] for u in sorted(good["train"])]}
    tok = train_tokenizer(texts, tmp_path / "tok", vocab_size=100)
    seen: list[str] = []
    step = JustLightningModule.training_step

    def training_step(self, batch, batch_idx):
        seen.extend(batch["cut_ids"])
        return step(self, batch, batch_idx)

    monkeypatch.setattr(JustLightningModule, "training_step", training_step)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = cli([
            "fit", "--config", str(ROOT / "configs/model/tiny.yaml"), "--config", str(ROOT / "configs/just.yaml"),
            *SMALL, "--data.manifest_dir", str(out), "--data.tokenizer", str(tok), "--data.langs", "[pl]",
            "--data.max_duration", "4", "--data.num_workers", "0",
            "--trainer.precision", "32", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.num_sanity_val_steps", "0",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path / "exp"), "--periodic_checkpoint.every_n_train_steps", "4",
            "--model.warmup_steps", "2",
        ])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert seen and set(seen) <= good["train"]
    for bad_word in ("not found", "corrupt", "truncated", "unusable", "lacks"):
        assert bad_word not in printed.out + printed.err, bad_word  # no data error at training time

    # --- export, decode the test manifest: every good test utterance has a hypothesis
    model = tmp_path / "model"
    assert cli(["export", str(tmp_path / "exp" / "checkpoints" / "last.ckpt"), str(model)]) == 0
    dec = tmp_path / "decode"
    assert cli(["decode", "--model", str(model), "--cuts", str(out / "mls-pl_cuts_test.jsonl.gz"),
                "--out", str(dec), "--threads", "1"]) == 0
    hyp_ids = [l.split("\t")[0] for l in (dec / "hyp_pl.txt").read_text(encoding="utf-8").splitlines()]
    ref_lines = (dec / "ref_pl.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(hyp_ids) == sorted(good["test"]) and len(hyp_ids) == len(set(hyp_ids))
    assert sorted(ref_lines) == sorted(f"{u}\t{spec.texts[u]}" for u in good["test"])
    wer = json.loads((dec / "wer.json").read_text())
    assert "pl" in json.dumps(wer)


def test_fit_with_a_worker_lists_what_it_left_out(tmp_path, capsys):
    """Audio removed after ``prepare-mls`` (one training and one dev utterance), ``fit`` with a
    DataLoader worker: the run finishes, prints what it left out, writes every issue to
    ``<root>/data_issues.json`` (train and dev apart; the worker's reports used to stay in the
    worker), and logs ``data/skipped_items`` to TensorBoard. The list is in the checkpoint: a run
    resumed after the files came back still lists (and counts) what the first run left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from just_asr.data.mls import prepare_mls
    from just_asr.data.tokenizer import train_tokenizer

    spec = write_mls_corpus(tmp_path / "corpus", langs=("pl",), splits={"train": 6, "dev": 3, "test": 1})
    out = tmp_path / "manifests"
    prepare_mls(tmp_path / "corpus", out, progress=False)
    gone_train, gone_dev = spec.ids[("pl", "train")][2], spec.ids[("pl", "dev")][0]
    saved = {u: spec.paths[u].read_bytes() for u in (gone_train, gone_dev)}
    for u in saved:
        spec.paths[u].unlink()
    tok = train_tokenizer({"pl": list(spec.texts.values())}, tmp_path / "tok", vocab_size=100)
    root = tmp_path / "exp"

    def fit(steps: int, *extra: str) -> int:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return cli([
                "fit", "--config", str(ROOT / "configs/model/tiny.yaml"), "--config", str(ROOT / "configs/just.yaml"),
                *SMALL, "--data.manifest_dir", str(out), "--data.tokenizer", str(tok), "--data.langs", "[pl]",
                "--data.max_duration", "3", "--data.num_workers", "1", "--data.num_buckets", "1",
                "--trainer.precision", "32", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "4",
                "--trainer.num_sanity_val_steps", "0", "--trainer.log_every_n_steps", "1",
                "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
                "--periodic_checkpoint.every_n_train_steps", "4", "--model.warmup_steps", "2", *extra,
            ])
        finally:
            torch.set_num_threads(threads)

    def skipped_items() -> list[float]:
        values = []
        for f in sorted((root / "lightning_logs").glob("*")):
            ea = EventAccumulator(str(f))
            ea.Reload()
            if "data/skipped_items" in ea.Tags()["scalars"]:
                values += [e.value for e in ea.Scalars("data/skipped_items")]
        return values

    assert fit(8) == 0
    printed = capsys.readouterr().out
    report = json.loads((root / "data_issues.json").read_text())
    assert set(report) == {"train", "dev"}
    assert [i["path"] for i in report["dev"]["issues"]] == [str(spec.paths[gone_dev])]
    assert str(spec.paths[gone_train]) in [i["path"] for i in report["train"]["issues"]]
    assert all("audio file not found" in i["problem"] or "the batch is left out" in i["problem"]
               for part in report.values() for i in part["issues"])
    assert "input problems met by the data loaders" in printed and f"{gone_train}.flac: audio file not found" in printed
    values = skipped_items()
    assert values and values == sorted(values) and values[-1] == report["train"]["num_skipped"]

    # the files come back; the resumed run meets no problem but keeps the first run's list
    for u, data in saved.items():
        spec.paths[u].write_bytes(data)
    assert fit(10, "--resume") == 0
    again = json.loads((root / "data_issues.json").read_text())
    assert again == report
    assert skipped_items()[-1] == report["train"]["num_skipped"]
    # a fresh run in another folder with every file readable: empty lists, nothing printed
    capsys.readouterr()
    root = tmp_path / "exp2"
    assert fit(2) == 0
    clean = json.loads((root / "data_issues.json").read_text())
    assert set(clean) == {"train", "dev"}
    assert all(part["num_skipped"] == 0 and part["issues"] == [] for part in clean.values())
    assert "input problems" not in capsys.readouterr().out
