"""The recipes: shell syntax of both run.sh scripts, and recipes/synthetic/make_results.py on fabricated
decode reports written in the exact format of ``just-asr decode`` (``report_json`` of a real
``score_by_language`` report), with every derived number checked by hand arithmetic."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from just_asr.evaluate import score_by_language
from just_asr.evaluate.report import report_json

ROOT = Path(__file__).resolve().parents[1]
SYNTH_RUN = ROOT / "recipes" / "synthetic" / "run.sh"
MLS_RUN = ROOT / "recipes" / "mls" / "run.sh"
MAKE_RESULTS = ROOT / "recipes" / "synthetic" / "make_results.py"
LANGS = ["en", "de", "nl", "fr", "es", "it", "pt", "pl"]
WORDS = 20  # reference words per fabricated language report: WER = errors / 20 exactly


def _load_make_results():
    spec = importlib.util.spec_from_file_location("make_results", MAKE_RESULTS)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["make_results"] = mod
    spec.loader.exec_module(mod)
    return mod


mr = _load_make_results()


# ----------------------------------------------------------------------------- shell scripts
@pytest.mark.parametrize("script", [SYNTH_RUN, MLS_RUN], ids=["synthetic", "mls"])
def test_scripts_parse_with_bash_n(script: Path) -> None:
    assert script.is_file(), script
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "--stage" in text and "--stop-stage" in text


def test_synthetic_run_sh_rejects_bad_settings(tmp_path: Path) -> None:
    env = {**os.environ, "WORK": str(tmp_path / "w")}
    res = subprocess.run(["bash", str(SYNTH_RUN), "--bogus"], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr
    res = subprocess.run(["bash", str(SYNTH_RUN)], capture_output=True, text=True, env={**env, "BUDGET_STEPS": "x"})
    assert res.returncode == 1 and "BUDGET_STEPS must be an integer" in res.stderr
    res = subprocess.run(["bash", str(SYNTH_RUN)], capture_output=True, text=True,
                         env={**env, "PRETRAIN_PERCENT": "100"})
    assert res.returncode == 1 and "PRETRAIN_PERCENT" in res.stderr
    assert not (tmp_path / "w").exists()  # refused before creating anything
    res = subprocess.run(["bash", str(SYNTH_RUN), "--help"], capture_output=True, text=True, env=env)
    assert res.returncode == 0 and "BUDGET_STEPS" in res.stdout


def test_mls_dry_run_prints_every_stage(tmp_path: Path) -> None:
    work = tmp_path / "mls-work"
    env = {**os.environ, "DRY_RUN": "1", "WORK": str(work), "MLS_DIR": str(tmp_path / "no-mls")}
    res = subprocess.run(["bash", str(MLS_RUN)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "mls_polish.tar.gz" in res.stderr  # stage 0 names the missing download
    for needle in ("just-asr prepare-mls", "just-asr train-tokenizer", "just-asr compute-cmvn",
                   "just-asr export-shar", "configs/model/w2v-bert-xl.yaml", "configs/supervised.yaml",
                   "configs/w2v-bert-pretrain.yaml", "configs/finetune.yaml", "configs/just.yaml",
                   "configs/just-finetune.yaml", "torch.distributed.run", "--trainer.strategy ddp_find_unused_parameters_true",
                   "make_results.py report"):
        assert needle in out, needle
    for lang in LANGS:
        assert f"--data.langs \\[{lang}\\]" in out and f"=== decode-mono-{lang}-test" in out
    # the two-stage split of the default 200000-step budget, both fine-tunings from the shared pretraining
    assert out.count("--trainer.max_steps 100000") == 3
    assert out.count("--init-from " + str(work / "exp/pretrain/checkpoints/last.ckpt")) == 2
    assert not work.exists()  # a dry run writes nothing
    res = subprocess.run(["bash", str(MLS_RUN), "--stage", "5", "--stop-stage", "5"], capture_output=True, text=True,
                         env={**env, "LAUNCH": "slurm", "NODES": "4", "GPUS": "8"})
    assert res.returncode == 0, res.stderr
    assert "#SBATCH --nodes=4" in res.stdout and "#SBATCH --ntasks-per-node=8" in res.stdout
    assert "--trainer.num_nodes 4" in res.stdout and "sbatch --wait" in res.stdout


# ----------------------------------------------------------------------------- fabricated decode reports
def _write_wer_json(path: Path, errors: dict[str, int]) -> None:
    """A ``wer.json`` exactly as ``just-asr decode`` writes it, for one utterance of WORDS words per
    language of which ``errors[lang]`` are substituted (WER = errors / WORDS)."""
    refs, hyps, langs = [], [], []
    for lang, k in errors.items():
        ref = [f"{lang}w{i}" for i in range(WORDS)]
        hyp = ["zzz"] * k + ref[k:]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
        langs.append(lang)
    report = score_by_language(refs, hyps, langs)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"model": str(path.parent.parent), "method": "greedy", "num_scored": len(refs)}
    path.write_text(json.dumps(report_json(report, info), indent=2) + "\n", encoding="utf-8")


def _all(k: int, **over: int) -> dict[str, int]:
    return {l: over.get(l, k) for l in LANGS}


# test-set substitution counts (out of 20 words) per system
MONO_TEST = {"en": 4, "de": 6, "nl": 6, "fr": 6, "es": 6, "it": 8, "pt": 10, "pl": 16}  # sum 62
SUP_TEST = _all(5, pl=10)        # sum 45
TWO_TEST = _all(4, pl=8)         # sum 36
JUST_TEST = _all(3, en=5, pl=6)  # sum 5 + 6*3 + 6 = 29; worse than monolingual on en
JFT_TEST = _all(2, pl=5)         # sum 19


def _fabricate(work: Path) -> None:
    (work / "settings.json").parent.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps({
        "langs": " ".join(LANGS), "seed": 0, "budget_steps": 800, "max_duration": 20, "pretrain_steps": 400,
        "finetune_steps": 400, "budget_minutes": 20, "decode_args": "--method beam --beam 4 --length-norm",
    }))
    dec = work / "decode"
    for lang in LANGS:
        _write_wer_json(dec / f"mono-{lang}" / "test" / "wer.json", {lang: MONO_TEST[lang]})
        _write_wer_json(dec / f"mono-{lang}" / "dev" / "wer.json", {lang: 12})
    for name, test in (("supervised", SUP_TEST), ("two-stage", TWO_TEST), ("just-finetune", JFT_TEST),
                       ("just-b0.05-unmasked", JUST_TEST)):
        _write_wer_json(dec / name / "test" / "wer.json", test)
    for name in ("supervised", "two-stage", "just-finetune"):
        _write_wer_json(dec / name / "dev" / "wer.json", _all(11))
    # dev: the sweep (masked branch) -> beta 0.05 wins (8 < 9 < 10); its unmasked run is better still (7)
    _write_wer_json(dec / "just-b0.01" / "dev" / "wer.json", _all(10))
    _write_wer_json(dec / "just-b0.05" / "dev" / "wer.json", _all(8))
    _write_wer_json(dec / "just-b0.2" / "dev" / "wer.json", _all(9))
    _write_wer_json(dec / "just-b0.05-unmasked" / "dev" / "wer.json", _all(7, pl=9))  # avg (7*7+9)/160
    # a test report for a losing sweep run must never be read (selection is on dev only)
    _write_wer_json(dec / "just-b0.01" / "test" / "wer.json", _all(0))
    (work / "times.tsv").write_text(
        "synth-corpus\t100.5\t2026-01-01T00:00:00Z\t0\n"
        "fit-supervised\t60.0\t2026-01-01T00:01:00Z\t1\n"
        "fit-supervised\t40.0\t2026-01-01T00:02:00Z\t0\n"
    )
    (work / "machine.txt").write_text("nproc: 2\nModel name: Test CPU\n")
    (work / "commands.sh").write_text("#!/usr/bin/env bash\n.venv/bin/just-asr synth-corpus x --hours 12\n")
    (work / "exp" / "supervised").mkdir(parents=True)
    (work / "exp" / "supervised" / ".planned_steps").write_text("800\n")
    (work / "models" / "supervised").mkdir(parents=True)
    (work / "models" / "supervised" / "config.yaml").write_text("extra:\n  export:\n    global_step: 640\n")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_RESULTS), *args], capture_output=True, text=True)


def test_fabricated_report_has_exact_wers(tmp_path: Path) -> None:
    p = tmp_path / "wer.json"
    _write_wer_json(p, {"en": 3, "pl": 7})
    assert mr.read_wer_json(p) == {"en": pytest.approx(3 / 20), "pl": pytest.approx(7 / 20)}


def test_select_and_report_by_hand_arithmetic(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _fabricate(work)
    betas = "0.01 0.05 0.2"
    res = _cli("select", "--work", str(work), "--betas", betas, "--what", "beta")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0.05"
    res = _cli("select", "--work", str(work), "--betas", betas, "--what", "final")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["just-b0.05-unmasked", "0.05", "unmasked"]
    sel = json.loads((work / "selection.json").read_text())
    assert sel["dev_average_by_beta_masked"] == {"0.01": pytest.approx(0.5), "0.05": pytest.approx(0.4),
                                                  "0.2": pytest.approx(0.45)}
    assert sel["dev_average_by_branch"]["unmasked"] == pytest.approx((7 * 7 + 9) / 160)
    res = _cli("select", "--work", str(work), "--betas", betas, "--what", "show")
    assert res.stdout.split() == ["just-b0.05-unmasked", "0.05", "unmasked"]

    out = tmp_path / "RESULTS.md"
    js = tmp_path / "results.json"
    res = _cli("report", "--work", str(work), "--betas", betas, "--out", str(out), "--json", str(js))
    assert res.returncode == 0, res.stderr
    data = json.loads(js.read_text())
    avg = data["averages"]["test"]
    assert avg["monolingual"] == pytest.approx(62 / 160)
    assert avg["supervised"] == pytest.approx(45 / 160)
    assert avg["two-stage"] == pytest.approx(36 / 160)
    assert avg["just"] == pytest.approx(29 / 160)
    assert avg["just-finetune"] == pytest.approx(19 / 160)
    c4, c5 = data["claims"]["just"], data["claims"]["just-finetune"]
    # relative improvement (base - sys) / base of the averages: the common 1/160 cancels
    assert c4["vs_monolingual"] == pytest.approx(1 - 29 / 62)      # 0.532258...
    assert c5["vs_monolingual"] == pytest.approx(1 - 19 / 62)      # 0.693548...
    assert c4["vs_two_stage"] == pytest.approx(1 - 29 / 36)        # 0.194444...
    assert c5["vs_two_stage"] == pytest.approx(1 - 19 / 36)        # 0.472222...
    assert c4["vs_supervised"] == pytest.approx(1 - 29 / 45)
    assert c4["polish_ratio"] == pytest.approx(6 / 16)
    assert c5["polish_ratio"] == pytest.approx(5 / 16)
    assert c4["not_better_than"] == {"monolingual": ["en"], "supervised": ["en"], "two-stage": ["en"]}
    assert c5["not_better_than"] == {"monolingual": [], "supervised": [], "two-stage": []}
    # the selected run's test report is used, the losing sweep run's (all-correct) one is not
    assert data["tables"]["test"]["just"]["pl"] == pytest.approx(6 / 20)

    md = out.read_text()
    assert "| avg WER reduction vs monolingual average | 33.3% | 53.23% | 69.35% |" in md
    assert "| avg WER reduction vs two-stage | 32% | 19.44% | 47.22% |" in md
    assert "| Polish WER / monolingual Polish WER | < 0.5 | 0.375 | 0.312 |" in md
    # per-language test row of system 1 and its unweighted average 62/160 = 38.75%
    assert "| 1. monolingual supervised RNN-T (one model per language) | 20.00 | 30.00 | 30.00 | 30.00 | 30.00 | " \
           "40.00 | 50.00 | 80.00 | 38.75 |" in md
    assert "| beta | en | de |" in md and "| beta 0.05 (chosen) | 40.00 |" in md and "| beta 0.2 | 45.00 |" in md
    assert "A tie on dev" not in md
    assert "| unmasked (chosen) | 35.00 |" in md and "Winner on dev: **unmasked**" in md
    assert "4. JUST from scratch vs 1. monolingual supervised RNN-T (one model per language): en" in md
    # budget: planned 800, reached 640 -> flagged; wall times summed per stage incl. the failed attempt
    assert "| supervised | 800 | 640 (stopped early: wall-clock cap) |" in md
    assert "| fit-supervised | 100.0 | 2 | 1 |" in md
    assert "| **total** | 200.5 |" in md
    # elapsed: first start 100.5 s before 00:00:00 (synth-corpus) to the last end at 00:02:00
    assert "Elapsed from the first command's start to the last one's end: 220 s (0.06 h)" in md
    assert "RNN-T decoding with `--method beam --beam 4 --length-norm`" in md
    assert "Model name: Test CPU" in md and "synth-corpus x --hours 12" in md


def test_split_budget_monolingual_system_1b(tmp_path: Path) -> None:
    # MONO_SPLIT=1: system 1b (mono-split-<xx>, 10 of 20 words wrong in every language) joins the
    # tables, the claims and the budget table; without it (older runs) nothing about 1b appears
    work = tmp_path / "work"
    _fabricate(work)
    settings = json.loads((work / "settings.json").read_text())
    settings.update({"mono_split": 1, "mono_split_steps": 100})
    (work / "settings.json").write_text(json.dumps(settings))
    for lang in LANGS:
        for split in ("dev", "test"):
            _write_wer_json(work / "decode" / f"mono-split-{lang}" / split / "wer.json", {lang: 10})
    betas = "0.01 0.05 0.2"
    assert _cli("select", "--work", str(work), "--betas", betas, "--what", "final").returncode == 0
    out, js = tmp_path / "RESULTS.md", tmp_path / "results.json"
    res = _cli("report", "--work", str(work), "--betas", betas, "--out", str(out), "--json", str(js))
    assert res.returncode == 0, res.stderr
    data = json.loads(js.read_text())
    assert data["averages"]["test"]["monolingual-split"] == pytest.approx(0.5)
    c4, c5 = data["claims"]["just"], data["claims"]["just-finetune"]
    assert c4["vs_monolingual_split"] == pytest.approx(1 - (29 / 160) / 0.5)   # 0.6375
    assert c5["vs_monolingual_split"] == pytest.approx(1 - (19 / 160) / 0.5)   # 0.7625
    assert c4["polish_ratio_split"] == pytest.approx(0.6) and c5["polish_ratio_split"] == pytest.approx(0.5)
    assert c4["not_better_than"]["monolingual-split"] == []
    md = out.read_text()
    assert "| 1b. monolingual, one system's budget split over the models (100 steps each) | 50.00 |" in md
    assert "| avg WER reduction vs monolingual, split budget (1b) | not reported | 63.75% | 76.25% |" in md
    assert "| Polish WER / Polish WER of 1b | not reported | 0.600 | 0.500 |" in md
    assert "each of system 1b gets 100 (one system's budget split over the 8 models)" in md
    # the same work without the flag: no 1b anywhere
    settings["mono_split"] = 0
    (work / "settings.json").write_text(json.dumps(settings))
    assert _cli("report", "--work", str(work), "--betas", betas, "--out", str(out)).returncode == 0
    assert "1b" not in out.read_text()


def test_dev_curve_reads_tensorboard_and_report_lists_it(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    work = tmp_path / "work"
    _fabricate(work)
    logs = work / "exp" / "supervised" / "lightning_logs"
    w = SummaryWriter(str(logs / "version_0"))
    for step, v in ((99, 90.0), (199, 70.0)):
        w.add_scalar("dev/wer_avg", v, step)
    w.add_scalar("train/loss", 3.0, 199)
    w.close()
    # a resumed run: version_1 repeats step 199 with another value, which wins, and goes on
    w = SummaryWriter(str(logs / "version_1"))
    w.add_scalar("dev/wer_avg", 65.5, 199)
    w.add_scalar("dev/wer_avg", 50.0, 299)
    w.close()
    assert mr.dev_curve(work, "supervised") == [(99, 90.0), (199, 65.5), (299, 50.0)]
    assert mr.dev_curve(work, "two-stage") == []
    betas = "0.01 0.05 0.2"
    assert _cli("select", "--work", str(work), "--betas", betas, "--what", "final").returncode == 0
    out = tmp_path / "RESULTS.md"
    assert _cli("report", "--work", str(work), "--betas", betas, "--out", str(out)).returncode == 0
    assert "| supervised | 99: 90.0, 199: 65.5, 299: 50.0 |" in out.read_text()


def test_ties_go_to_earlier_beta_and_masked_branch(tmp_path: Path) -> None:
    work = tmp_path / "w"
    (work).mkdir()
    for b in ("0.2", "0.05"):
        _write_wer_json(work / "decode" / f"just-b{b}" / "dev" / "wer.json", {"en": 4, "pl": 6})
    _write_wer_json(work / "decode" / "just-b0.2-unmasked" / "dev" / "wer.json", {"en": 6, "pl": 4})
    best, avgs = mr.select_beta(work, ["0.2", "0.05"], ["en", "pl"])
    assert best == "0.2" and avgs == {"0.2": pytest.approx(0.25), "0.05": pytest.approx(0.25)}
    sel = mr.select_final(work, ["0.2", "0.05"], ["en", "pl"])
    assert (sel["run"], sel["branch"]) == ("just-b0.2", "masked")


def test_errors_name_the_file(tmp_path: Path) -> None:
    work = tmp_path / "work"
    _fabricate(work)
    missing = work / "decode" / "mono-pt" / "test" / "wer.json"
    missing.unlink()
    _cli("select", "--work", str(work), "--betas", "0.01 0.05 0.2", "--what", "final")
    res = _cli("report", "--work", str(work), "--betas", "0.01 0.05 0.2", "--out", str(tmp_path / "R.md"))
    assert res.returncode == 1 and str(missing) in res.stderr and "not found" in res.stderr
    bad = work / "decode" / "supervised" / "test" / "wer.json"
    d = json.loads(bad.read_text())
    d["languages"][1]["wer"] = None
    bad.write_text(json.dumps(d))
    with pytest.raises(mr.ResultsError, match="supervised/test/wer.json: language 'de' has no WER"):
        mr.run_wers(work, "supervised", "test", LANGS)
    _write_wer_json(bad, {"en": 1})
    with pytest.raises(mr.ResultsError, match=r"no score for language\(s\) \['de'"):
        mr.run_wers(work, "supervised", "test", LANGS)
    (work / "times.tsv").write_text("fit\tabc\n")
    with pytest.raises(mr.ResultsError, match=r"times.tsv:1: seconds 'abc'"):
        mr.read_times(work)
    res = _cli("select", "--work", str(work), "--betas", "0.01 x", "--what", "beta")
    assert res.returncode == 1 and "'x' is not a number" in res.stderr


def test_relative_improvement_sign() -> None:
    assert mr.relative_improvement(0.4, 0.3) == pytest.approx(0.25)
    assert mr.relative_improvement(0.3, 0.4) == pytest.approx(-1 / 3)
    assert mr.average({"a": 0.1, "b": 0.4, "c": 0.9}, ["a", "b"]) == pytest.approx(0.25)


def test_bash_available() -> None:
    assert shutil.which("bash") is not None
