"""``benchmarks/train_step.py`` on the CPU: the one-process table and the data-parallel
``--processes`` mode (DDP over gloo), on a small batch; values checked against each other."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """The script imported as the module ``train_step`` from ``benchmarks/`` on ``sys.path``: the
    spawned ranks of ``--processes`` import it by that name (spawn passes ``sys.path`` on)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    yield importlib.import_module("train_step")
    sys.path.remove(str(ROOT / "benchmarks"))


def _rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| tiny ")]


# --malloc default: the in-process runs leave the pytest process's malloc alone (the script loads its own
# copy of just_asr.runtime, which conftest's fake mallopt does not reach)
SMALL = ["--presets", "tiny", "--only", "bf16,full,just", "--batch", "2", "--seconds", "0.6", "--repeats", "2",
         "--warmup", "1", "--roof-size", "256", "--malloc", "default"]


def test_one_process_and_data_parallel_tables(bench, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        assert bench.main([*SMALL, "--threads", "1"]) == 0
        out_one = capsys.readouterr().out
        (one,) = _rows(out_one)
        assert bench.main([*SMALL, "--threads", "1", "--processes", "2"]) == 0
        out = capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    # each table says what the command left to defaults
    for text in (out_one, out):
        assert "setup: batch 2 x 0.6 s mean per process, RNN-T branch masked, supervised_features copy on" in text
    (ddp,) = _rows(out)
    assert "2 processes x 1 threads (DDP, gloo)" in out
    assert ddp[:5] == ["tiny", "bf16", "full", "just", "2 x 1"]
    # one rank's step does the one-process step's FLOPs (same batch shape): the table sums 2 ranks
    assert float(ddp[8]) == pytest.approx(2 * float(one[8]), abs=0.011)  # one[8] is printed to 2 decimals
    ms, x_rt, gflop, gflops = float(ddp[5]), float(ddp[7]), float(ddp[8]), float(ddp[9])
    audio = 2 * sum(round(d * 100) for d in torch.linspace(1.25 * 0.6, 0.75 * 0.6, 2).tolist()) / 100
    # audio of both ranks / median step; the printed ms (1 decimal) and x real time (1 decimal) are rounded
    lo, hi = audio / ((ms + 0.05) / 1e3), audio / ((ms - 0.05) / 1e3)
    assert lo - 0.05 <= x_rt <= hi + 0.05
    lo, hi = (gflop - 5e-4) / ((ms + 0.05) / 1e3), (gflop + 5e-4) / ((ms - 0.05) / 1e3)
    assert lo - 0.05 <= gflops <= hi + 0.05
    assert 0 < float(ddp[11]) < 100 and int(ddp[12]) == 2


def test_setup_line_names_branch_and_copy(bench, capsys):
    import argparse

    bench.print_command_and_setup(argparse.Namespace(batch=24, seconds=1.6, rnnt_branch="unmasked", spec_augment=False))
    out = capsys.readouterr().out
    assert "setup: batch 24 x 1.6 s mean per process, RNN-T branch unmasked, supervised_features copy off" in out


def test_processes_refuses_what_it_cannot_combine(bench):
    with pytest.raises(SystemExit):
        bench.main([*SMALL, "--processes", "2", "--device", "cuda"])
    with pytest.raises(SystemExit):
        bench.main([*SMALL, "--processes", "2", "--profile"])
    with pytest.raises(SystemExit):
        bench.main([*SMALL, "--processes", "0"])


def test_child_argv_drops_only_the_malloc_options(bench):
    argv = ["--presets", "tiny", "--compare-malloc", "3", "--malloc=default", "--repeats", "4",
            "--result-json", "/tmp/x.json", "--compare-malloc=2", "--only", "bf16"]
    assert bench._child_argv(argv) == ["--presets", "tiny", "--repeats", "4", "--only", "bf16"]


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="the tuned child needs glibc")
def test_compare_malloc_runs_both_settings_in_child_processes(bench, capsys, monkeypatch):
    import platform

    monkeypatch.setenv("JUST_ASR_MALLOC_TUNING", "0")  # not inherited: the tuned child still tunes
    assert bench.main([*SMALL, "--threads", "1", "--compare-malloc", "2"]) == 0
    out = capsys.readouterr().out
    assert "--malloc default|tuned" in out
    if platform.libc_ver()[0] == "glibc":
        assert "tuned children: glibc malloc tuned: mmap threshold 32 MiB, trim threshold 512 MiB" in out
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in out.splitlines()
            if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2
    for row in rows:
        assert row[1:5] == ["tiny", "bf16", "full", "just"]
        d_ms, t_ms = float(row[5].split()[0]), float(row[8].split()[0])
        assert float(row[6]) >= 0 and float(row[9]) >= 0 and float(row[7]) > 100 and float(row[10]) > 100
        # the speed-up is the ratio of the two medians (printed rounded to whole ms and 2 decimals)
        ratio = float(row[11].rstrip("x"))
        assert (d_ms - 0.5) / (t_ms + 0.5) - 0.005 <= ratio <= (d_ms + 0.5) / (t_ms - 0.5) + 0.005
    assert "median speed-up (wall) over 2 rounds" in out


def test_compare_malloc_options_are_not_abbreviated(bench):
    # an abbreviation would reach the children unstripped and make each start its own comparison
    with pytest.raises(SystemExit):
        bench.main([*SMALL, "--compare-m", "1"])
    with pytest.raises(SystemExit):
        bench.main([*SMALL, "--compare-malloc", "1", "--result-json", "x.json"])


def test_result_json_matches_the_table(bench, capsys, tmp_path):
    import json

    out_file = tmp_path / "rows.json"
    assert bench.main([*SMALL, "--threads", "1", "--result-json", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "malloc: glibc malloc defaults (--malloc default)" in out
    (row,) = _rows(out)
    saved = json.loads(out_file.read_text())
    assert saved["malloc_tuned"] is False and saved["malloc"] == "glibc malloc defaults (--malloc default)"
    (r,) = saved["rows"]
    assert (r["preset"], r["precision"], r["rnnt"], r["objective"]) == ("tiny", "bf16", "full", "just")
    assert f"{r['ms']:.0f}" == row[4] and f"{r['faults_per_step']:.0f}" == row[13]
    assert f"{r['max_rss_mib']:.0f}" == row[14] and float(row[14]) > 100


def test_prewarm_batch_runs_first_and_is_refused_where_unused(bench, capsys, tmp_path, monkeypatch):
    import json

    sizes = []
    real_step = bench.train_step

    def recording_step(model, opt, batch, precision, scopes=False):
        sizes.append((batch["features"].size(0), batch["features"].size(1)))
        return real_step(model, opt, batch, precision, scopes)

    monkeypatch.setattr(bench, "train_step", recording_step)
    out_file = tmp_path / "rows.json"
    assert bench.main([*SMALL, "--threads", "1", "--prewarm-batch", "6", "--result-json", str(out_file)]) == 0
    # two steps on 6 utterances of twice the duration, then the warm-up (1) and timed (2) steps on 2
    assert [b for b, _ in sizes] == [6, 6, 2, 2, 2]
    assert sizes[0][1] > sizes[2][1]
    (row,) = _rows(capsys.readouterr().out)
    (r,) = json.loads(out_file.read_text())["rows"]
    # the 6 x 1.2 s prewarm batch is larger than the timed 2 x 0.6 s one and leaves the allocator settled
    assert r["faults_per_step"] >= 0 and r["max_rss_mib"] > 100 and f"{r['ms']:.0f}" == row[4]
    for extra in (["--prewarm-seconds", "2"], ["--prewarm-batch", "-1"], ["--prewarm-batch", "4", "--processes", "2"],
                  ["--prewarm-batch", "4", "--device", "cuda"], ["--prewarm-batch", "4", "--prewarm-seconds", "0"]):
        with pytest.raises(SystemExit):
            bench.main([*SMALL, *extra])
