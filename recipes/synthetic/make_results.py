#!/usr/bin/env python
"""Tables for the miniature experiment of ``recipes/synthetic/run.sh``, computed from its decode reports.

Reads the ``wer.json`` files that ``just-asr decode`` wrote under ``WORK/decode/<run>/<split>/`` (see
:mod:`just_asr.evaluate.report`: ``languages[*].language``/``wer`` as fractions), plus the run's
``settings.json``, ``times.tsv``, ``commands.sh`` and ``machine.txt``. Nothing is typed in by hand.

Subcommands::

    make_results.py select --work W --betas "0.02 0.05 0.2" --what beta   # best beta on dev (masked branch)
    make_results.py select --work W --betas "..." --what final            # + branch choice -> W/selection.json
    make_results.py select --work W --betas "..." --what show             # "RUN BETA BRANCH" of selection.json
    make_results.py report --work W --betas "..." --out W/RESULTS.md

Run names (folders under ``WORK/decode``): ``mono-<iso>`` (system 1, one model per language),
``mono-split-<iso>`` (system 1b, when ``settings.json`` has ``mono_split: 1``),
``supervised`` (2), ``two-stage`` (3), ``just-b<beta>`` and ``just-b<beta>-unmasked`` (the sweep; system
4 is the dev winner named in ``selection.json``), ``just-finetune`` (5).

Averages are unweighted means over the languages of the run (``settings.json``'s ``langs``), as the
paper reports. Relative improvement of a system over a baseline: ``(base - sys) / base`` of their
average WERs; the Polish ratio: ``WER_pl(sys) / WER_pl(monolingual)``. Selection uses dev only; ties
go to the earlier beta in ``--betas`` and to the masked branch (one forward pass, the cheaper).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

#: the paper's headline claims (JUST, Bai et al. 2022, abstract): relative WER reductions of the
#: best JUST system's 8-language average, and the Polish ratio
PAPER_VS_MONO = 0.333
PAPER_VS_TWO_STAGE = 0.32
PAPER_POLISH_RATIO = 0.5

SYSTEMS: list[tuple[str, str]] = [
    ("monolingual", "1. monolingual supervised RNN-T (one model per language)"),
    ("monolingual-split", "1b. monolingual, one system's budget split over the models"),
    ("supervised", "2. multilingual supervised-only RNN-T"),
    ("two-stage", "3. two-stage: w2v-BERT pretraining, then RNN-T fine-tuning"),
    ("just", "4. JUST from scratch"),
    ("just-finetune", "5. JUST fine-tuning from system 3's pretrained checkpoint"),
]


class ResultsError(Exception):
    """A missing or malformed input file; the message names it."""


# ----------------------------------------------------------------------------- reading
def read_wer_json(path: Path) -> dict[str, float]:
    """Per-language WER (fractions) from one ``just-asr decode`` ``wer.json``."""
    if not path.is_file():
        raise ResultsError(f"{path}: decode report not found (run the decode stage of run.sh)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None
    langs = data.get("languages") if isinstance(data, dict) else None
    if not isinstance(langs, list):
        raise ResultsError(f"{path}: no 'languages' list (is this a just-asr decode wer.json?)")
    out: dict[str, float] = {}
    for i, entry in enumerate(langs):
        if not isinstance(entry, dict) or "language" not in entry or "wer" not in entry:
            raise ResultsError(f"{path}: languages[{i}] lacks 'language' or 'wer'")
        wer = entry["wer"]
        if wer is None:
            raise ResultsError(f"{path}: language {entry['language']!r} has no WER (its references hold no words)")
        if not isinstance(wer, (int, float)) or not math.isfinite(wer) or wer < 0:
            raise ResultsError(f"{path}: language {entry['language']!r} has an invalid WER {wer!r}")
        out[str(entry["language"])] = float(wer)
    return out


def run_wers(work: Path, run: str, split: str, langs: list[str]) -> dict[str, float]:
    """WER per language of decode run ``run`` on ``split``; ``run == "monolingual"`` gathers each
    language from its own model's report (``mono-<iso>``), ``"monolingual-split"`` likewise from
    ``mono-split-<iso>`` (system 1b)."""
    if run in ("monolingual", "monolingual-split"):
        prefix = "mono-" if run == "monolingual" else "mono-split-"
        out = {}
        for lang in langs:
            path = work / "decode" / f"{prefix}{lang}" / split / "wer.json"
            wers = read_wer_json(path)
            if lang not in wers:
                raise ResultsError(f"{path}: no score for language {lang!r} (has {sorted(wers)})")
            out[lang] = wers[lang]
        return out
    path = work / "decode" / run / split / "wer.json"
    wers = read_wer_json(path)
    missing = [l for l in langs if l not in wers]
    if missing:
        raise ResultsError(f"{path}: no score for language(s) {missing} (has {sorted(wers)})")
    return {l: wers[l] for l in langs}


def average(wers: dict[str, float], langs: list[str]) -> float:
    """Unweighted mean WER over ``langs``."""
    return sum(wers[l] for l in langs) / len(langs)


def relative_improvement(base: float, system: float) -> float:
    """``(base - system) / base``: the relative WER reduction of ``system`` over ``base`` (negative
    when the system is worse). ``nan`` when the base is 0."""
    return (base - system) / base if base > 0 else float("nan")


def parse_betas(text: str) -> list[str]:
    betas = [b for b in text.replace(",", " ").split() if b]
    if not betas:
        raise ResultsError("--betas is empty")
    for b in betas:
        try:
            float(b)
        except ValueError:
            raise ResultsError(f"--betas: {b!r} is not a number") from None
    return betas


def read_settings(work: Path) -> dict[str, Any]:
    path = work / "settings.json"
    if not path.is_file():
        raise ResultsError(f"{path}: not found (run.sh writes it at every invocation)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None


def settings_langs(settings: dict[str, Any], work: Path) -> list[str]:
    langs = str(settings.get("langs", "")).replace(",", " ").split()
    if not langs:
        raise ResultsError(f"{work / 'settings.json'}: 'langs' is empty")
    return langs


# ----------------------------------------------------------------------------- selection (dev only)
def select_beta(work: Path, betas: list[str], langs: list[str]) -> tuple[str, dict[str, float]]:
    """The beta whose masked-branch JUST run has the lowest dev average WER; ties: the earlier beta.
    Returns ``(beta, {beta: dev average})``."""
    avgs = {b: average(run_wers(work, f"just-b{b}", "dev", langs), langs) for b in betas}
    best = min(betas, key=lambda b: (avgs[b], betas.index(b)))
    return best, avgs


def select_final(work: Path, betas: list[str], langs: list[str]) -> dict[str, Any]:
    """System 4: the best beta (masked branch), then masked vs unmasked at that beta on dev (ties:
    masked). Returns the selection record written to ``selection.json``."""
    beta, sweep = select_beta(work, betas, langs)
    masked = sweep[beta]
    unmasked = average(run_wers(work, f"just-b{beta}-unmasked", "dev", langs), langs)
    branch = "unmasked" if unmasked < masked else "masked"
    run = f"just-b{beta}" + ("-unmasked" if branch == "unmasked" else "")
    return {
        "run": run, "beta": beta, "branch": branch,
        "dev_average_by_beta_masked": sweep,
        "dev_average_by_branch": {"masked": masked, "unmasked": unmasked},
        "rule": "lowest unweighted dev average WER; ties to the earlier beta and to the masked branch",
    }


def read_selection(work: Path) -> dict[str, Any]:
    path = work / "selection.json"
    if not path.is_file():
        raise ResultsError(f"{path}: not found (run stage 7 of run.sh)")
    try:
        sel = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None
    for key in ("run", "beta", "branch"):
        if key not in sel:
            raise ResultsError(f"{path}: missing key {key!r}")
    return sel


# ----------------------------------------------------------------------------- the numbers
def has_mono_split(settings: dict[str, Any]) -> bool:
    """Whether the run trained system 1b (``MONO_SPLIT=1`` in run.sh; absent in older runs)."""
    return str(settings.get("mono_split", 0)) == "1"


def compute_results(work: Path, betas: list[str]) -> dict[str, Any]:
    """Every number of RESULTS.md as a dict (rates are fractions)."""
    settings = read_settings(work)
    langs = settings_langs(settings, work)
    sel = read_selection(work)
    runs = {"monolingual": "monolingual", "supervised": "supervised", "two-stage": "two-stage",
            "just": sel["run"], "just-finetune": "just-finetune"}
    if has_mono_split(settings):
        runs = {"monolingual": "monolingual", "monolingual-split": "monolingual-split", **runs}
    tables: dict[str, dict[str, dict[str, float]]] = {"test": {}, "dev": {}}
    for split in ("test", "dev"):
        for key, run in runs.items():
            tables[split][key] = run_wers(work, run, split, langs)
    avgs = {split: {k: average(v, langs) for k, v in t.items()} for split, t in tables.items()}
    claims: dict[str, Any] = {}
    for sys_key in ("just", "just-finetune"):
        c = {
            "vs_monolingual": relative_improvement(avgs["test"]["monolingual"], avgs["test"][sys_key]),
            "vs_two_stage": relative_improvement(avgs["test"]["two-stage"], avgs["test"][sys_key]),
            "vs_supervised": relative_improvement(avgs["test"]["supervised"], avgs["test"][sys_key]),
        }
        if "monolingual-split" in runs:
            c["vs_monolingual_split"] = relative_improvement(avgs["test"]["monolingual-split"], avgs["test"][sys_key])
        if "pl" in langs:
            mono_pl = tables["test"]["monolingual"]["pl"]
            c["polish_ratio"] = tables["test"][sys_key]["pl"] / mono_pl if mono_pl > 0 else float("nan")
            if "monolingual-split" in runs:
                split_pl = tables["test"]["monolingual-split"]["pl"]
                c["polish_ratio_split"] = tables["test"][sys_key]["pl"] / split_pl if split_pl > 0 else float("nan")
        # languages where this JUST system does not beat a baseline (test)
        bases = [k for k in ("monolingual", "monolingual-split", "supervised", "two-stage") if k in runs]
        c["not_better_than"] = {
            base: [l for l in langs if tables["test"][sys_key][l] >= tables["test"][base][l]] for base in bases
        }
        claims[sys_key] = c
    sweep = {b: run_wers(work, f"just-b{b}", "dev", langs) for b in betas}
    branch = {
        "masked": run_wers(work, f"just-b{sel['beta']}", "dev", langs),
        "unmasked": run_wers(work, f"just-b{sel['beta']}-unmasked", "dev", langs),
    }
    return {"settings": settings, "langs": langs, "selection": sel, "runs": runs, "tables": tables,
            "averages": avgs, "claims": claims, "sweep": sweep, "branch": branch}


TimesRow = tuple[str, float, "float | None", bool]  # name, seconds, end (POSIX seconds, or None), failed


def times_rows(work: Path) -> list[TimesRow]:
    """The rows of ``times.tsv`` (``NAME<TAB>SECONDS[<TAB>END<TAB>EXIT]``, one per command run.sh ran),
    checked; ``[]`` when there is no file."""
    path = work / "times.tsv"
    if not path.is_file():
        return []
    rows: list[TimesRow] = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ResultsError(f"{path}:{i}: expected NAME<TAB>SECONDS[<TAB>END<TAB>EXIT], got {line!r}")
        try:
            sec = float(parts[1])
            failed = len(parts) >= 4 and int(parts[3]) != 0
        except ValueError:
            raise ResultsError(f"{path}:{i}: seconds {parts[1]!r} or exit status is not a number") from None
        end = None
        if len(parts) >= 3 and parts[2].strip():
            try:
                end = _utc_seconds(parts[2].strip())
            except ValueError:
                raise ResultsError(f"{path}:{i}: end time {parts[2]!r} is not YYYY-MM-DDTHH:MM:SSZ") from None
        rows.append((parts[0], sec, end, failed))
    return rows


def _utc_seconds(stamp: str) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def sum_times(rows: list[TimesRow]) -> list[tuple[str, float, int, int]]:
    """``times.tsv`` rows summed per stage name, in first-seen order: ``(name, seconds, attempts,
    failed attempts)``. A resumed stage has several rows; failed attempts' time is included (it was spent)."""
    totals: dict[str, list[float]] = {}
    for name, sec, _, failed in rows:
        entry = totals.setdefault(name, [0.0, 0, 0])
        entry[0] += sec
        entry[1] += 1
        entry[2] += int(failed)
    return [(name, v[0], int(v[1]), int(v[2])) for name, v in totals.items()]


def elapsed(rows: list[TimesRow]) -> float | None:
    """Seconds from the first command's start to the last one's end (rows with an end time): the
    elapsed time of the whole experiment, which the per-stage sum overstates when training lanes ran
    side by side. ``None`` when no row has an end time."""
    spans = [(end - sec, end) for _, sec, end, _ in rows if end is not None]
    return max(e for _, e in spans) - min(s for s, _ in spans) if spans else None


def read_times(work: Path) -> list[tuple[str, float, int, int]]:
    """:func:`sum_times` of ``work``'s ``times.tsv``."""
    return sum_times(times_rows(work))


def steps_reached(work: Path, run: str) -> tuple[int | None, int | None]:
    """``(planned, reached)`` optimiser steps of training run ``run``: the plan from
    ``exp/<run>/.planned_steps``, the steps reached from the exported model's ``config.yaml``
    (``extra.export.global_step``), else from ``exp/<run>/checkpoints/last.ckpt``; ``None`` when unknown."""
    planned = None
    p = work / "exp" / run / ".planned_steps"
    if p.is_file():
        try:
            planned = int(p.read_text().strip())
        except ValueError:
            raise ResultsError(f"{p}: not an integer") from None
    reached = None
    cfg = work / "models" / run / "config.yaml"
    if cfg.is_file():
        import yaml

        data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        step = ((data.get("extra") or {}).get("export") or {}).get("global_step")
        reached = int(step) if step is not None else None
    if reached is None and (work / "exp" / run / "checkpoints" / "last.ckpt").is_file():
        import torch

        ck = torch.load(work / "exp" / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        reached = int(ck.get("global_step", -1))
    return planned, reached


def dev_curve(work: Path, run: str, tag: str = "dev/wer_avg") -> list[tuple[int, float]]:
    """``(step, value)`` of scalar ``tag`` from training run ``run``'s TensorBoard logs
    (``exp/<run>/lightning_logs/version_*/events*``, every version in order, a later value for the
    same step replacing an earlier one: a resumed run); ``[]`` when there are none."""
    def order(f: Path) -> tuple[int, str]:  # version_10 after version_9
        number = f.parent.name.removeprefix("version_")
        return (int(number) if number.isdigit() else 0, f.name)

    files = sorted((work / "exp" / run / "lightning_logs").glob("version_*/events*"), key=order)
    if not files:
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            for e in acc.Scalars(tag):
                points[int(e.step)] = float(e.value)
    return sorted(points.items())


def machine_text(work: Path) -> str:
    """What run.sh recorded about the machine (``machine.txt``), else this machine's ``nproc``/``lscpu``."""
    path = work / "machine.txt"
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    lines = []
    for cmd in (["nproc"], ["lscpu"]):
        if shutil.which(cmd[0]):
            out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
            lines.append(f"{cmd[0]}: {out}" if cmd[0] == "nproc" else out)
    return "\n".join(lines) + "\n(recorded now: machine.txt was missing)"


# ----------------------------------------------------------------------------- Markdown
def pct(x: float | None) -> str:
    """A fraction as a percentage with 2 decimals; ``n/a`` for ``None`` or a non-finite value."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100.0 * x:.2f}"


def wer_table(rows: list[tuple[str, dict[str, float]]], langs: list[str], header: str = "system") -> list[str]:
    """Markdown rows: one per ``(label, {lang: WER})``, WER in percent, then the unweighted average."""
    lines = [f"| {header} | " + " | ".join(langs) + " | avg |", "|---|" + "---:|" * (len(langs) + 1)]
    for name, wers in rows:
        lines.append(f"| {name} | " + " | ".join(pct(wers[l]) for l in langs) + f" | {pct(average(wers, langs))} |")
    return lines


def render(work: Path, res: dict[str, Any]) -> str:
    langs, sel, s = res["langs"], res["selection"], res["settings"]
    names = dict(SYSTEMS)
    if "monolingual-split" in res["runs"]:
        names["monolingual-split"] += f" ({s.get('mono_split_steps')} steps each)"
    shown = [k for k, _ in SYSTEMS if k in res["runs"]]
    L: list[str] = []
    L += ["# Miniature JUST experiment: results", "",
          f"Produced by `recipes/synthetic/make_results.py report` from the decode reports under `{work}/decode`.",
          f"WER in percent, RNN-T decoding with `{s.get('decode_args') or 'greedy'}`, no language model. "
          "`avg`: unweighted mean over the "
          f"{len(langs)} languages. System 4 is JUST from scratch with beta {sel['beta']} and the "
          f"{sel['branch']} RNN-T branch, chosen on dev (see below); never tuned on test.", ""]
    L += ["## Test WER (%)", ""]
    L += wer_table([(names[k], res["tables"]["test"][k]) for k in shown], langs)
    L += ["", "## Dev WER (%)", ""]
    L += wer_table([(names[k], res["tables"]["dev"][k]) for k in shown], langs)

    L += ["", "## The paper's claims against these numbers (test)", "",
          "Relative improvement = (baseline avg - system avg) / baseline avg; Polish ratio = "
          "WER_pl(system) / WER_pl(monolingual). The paper's numbers are for real MLS and its best JUST "
          "system (pretrained w2v-BERT + JUST fine-tuning); the baseline there is XLSR-53 two-stage.", "",
          "| claim | paper | 4. JUST scratch | 5. JUST fine-tune |", "|---|---:|---:|---:|"]
    c4, c5 = res["claims"]["just"], res["claims"]["just-finetune"]
    L.append(f"| avg WER reduction vs monolingual average | {100 * PAPER_VS_MONO:.1f}% | "
             f"{pct(c4['vs_monolingual'])}% | {pct(c5['vs_monolingual'])}% |")
    if "vs_monolingual_split" in c4:
        L.append(f"| avg WER reduction vs monolingual, split budget (1b) | not reported | "
                 f"{pct(c4['vs_monolingual_split'])}% | {pct(c5['vs_monolingual_split'])}% |")
    L.append(f"| avg WER reduction vs two-stage | {100 * PAPER_VS_TWO_STAGE:.0f}% | "
             f"{pct(c4['vs_two_stage'])}% | {pct(c5['vs_two_stage'])}% |")
    L.append(f"| avg WER reduction vs multilingual supervised-only | not reported | "
             f"{pct(c4['vs_supervised'])}% | {pct(c5['vs_supervised'])}% |")
    if "polish_ratio" in c4:
        L.append(f"| Polish WER / monolingual Polish WER | < {PAPER_POLISH_RATIO} | "
                 f"{c4['polish_ratio']:.3f} | {c5['polish_ratio']:.3f} |")
    if "polish_ratio_split" in c4:
        L.append(f"| Polish WER / Polish WER of 1b | not reported | "
                 f"{c4['polish_ratio_split']:.3f} | {c5['polish_ratio_split']:.3f} |")
    L += ["", "Where JUST does not beat a baseline (test WER not lower), per language:", ""]
    for key, c in (("just", c4), ("just-finetune", c5)):
        for base, bad in c["not_better_than"].items():
            L.append(f"- {names[key]} vs {names[base]}: " + (", ".join(bad) if bad else "none"))

    L += ["", f"## JUST beta sweep (dev WER %, masked branch, from scratch, {s.get('budget_steps')} steps)", ""]
    rows = [(f"beta {b}" + (" (chosen)" if b == sel["beta"] else ""), res["sweep"][b]) for b in res["sweep"]]
    L += wer_table(rows, langs, header="beta")
    sweep_avgs = {b: average(w, langs) for b, w in res["sweep"].items()}
    if sum(1 for a in sweep_avgs.values() if a == sweep_avgs[sel["beta"]]) > 1:
        L += ["", f"(A tie on dev: beta {sel['beta']} by the rule 'ties go to the earlier beta in the sweep'.)"]
    L += ["", f"## RNN-T branch at beta {sel['beta']} (dev WER %)", "",
          "masked: the RNN-T reads the MLM stack's output on the masked input (one forward pass); "
          "unmasked: a second, unmasked forward pass feeds the RNN-T.", ""]
    rows = [(f"{b}" + (" (chosen)" if b == sel["branch"] else ""), res["branch"][b]) for b in ("masked", "unmasked")]
    L += wer_table(rows, langs, header="RNN-T branch")
    b_avg = {b: average(res["branch"][b], langs) for b in ("masked", "unmasked")}
    if b_avg["masked"] == b_avg["unmasked"]:
        L += ["", "Winner on dev: none (a tie); **masked** is kept by the tie rule (one forward pass, the cheaper).", ""]
    else:
        L += ["", f"Winner on dev: **{sel['branch']}** (recommended as the default `model.arch.rnnt_branch`).", ""]

    L += ["## Budget", "",
          f"Every system: {s.get('budget_steps')} optimiser steps of at most {s.get('max_duration')} s of audio "
          f"per batch; two-stage and JUST fine-tuning: {s.get('pretrain_steps')} pretraining + "
          f"{s.get('finetune_steps')} fine-tuning steps (the pretraining run is shared). Each monolingual model "
          f"of system 1 gets the full {s.get('budget_steps')} steps"
          + (f"; each of system 1b gets {s.get('mono_split_steps')} (one system's budget split over the "
             f"{len(langs)} models)" if "monolingual-split" in res["runs"] else "")
          + f". Per-fit wall-clock cap: {s.get('budget_minutes')} min. Seed {s.get('seed')}.", "",
          "| training run | steps planned | steps reached |", "|---|---:|---:|"]
    train_runs = [f"mono-{l}" for l in langs]
    if "monolingual-split" in res["runs"]:
        train_runs += [f"mono-split-{l}" for l in langs]
    train_runs += ["supervised", "pretrain", "two-stage"]
    train_runs += [f"just-b{b}" for b in res["sweep"]] + [f"just-b{sel['beta']}-unmasked", "just-finetune"]
    short = []
    for run in train_runs:
        planned, reached = steps_reached(work, run)
        flag = ""
        if planned is not None and reached is not None and reached < planned:
            flag = " (stopped early: wall-clock cap)"
            short.append(run)
        L.append(f"| {run} | {planned if planned is not None else 'n/a'} | "
                 f"{reached if reached is not None else 'n/a'}{flag} |")
    if short:
        L += ["", f"**Unequal budget:** {', '.join(short)} stopped before the planned steps."]

    L += ["", "## Dev WER during training (%)", "",
          "From each run's TensorBoard log (`dev/wer_avg`: the in-training validation, greedy search, on "
          "the first `data.max_dev_cuts_per_lang` dev utterances per language, unweighted average over the "
          "run's languages); `logged step: WER`. A curve still falling steeply at its last point means the "
          "budget, not the method, limits that system.", "",
          "| training run | dev WER by step |", "|---|---|"]
    for run in train_runs:
        curve = dev_curve(work, run)
        if curve:
            L.append(f"| {run} | " + ", ".join(f"{st}: {v:.1f}" for st, v in curve) + " |")
    L += ["", "Settings (`settings.json`):", "", "```json", json.dumps(s, indent=2), "```", ""]

    rows = times_rows(work)
    times = sum_times(rows)
    L += ["## Wall time per stage", ""]
    if times:
        L += ["| stage | seconds | attempts | failed |", "|---|---:|---:|---:|"]
        L += [f"| {n} | {sec:.1f} | {k} | {f} |" for n, sec, k, f in times]
        L.append(f"| **total** | {sum(t[1] for t in times):.1f} |  |  |")
        wall = elapsed(rows)
        if wall is not None:
            L += ["", f"Elapsed from the first command's start to the last one's end: {wall:.0f} s "
                  f"({wall / 3600:.2f} h), idle time between invocations included; the sum above counts "
                  "side-by-side training lanes twice."]
    else:
        L.append(f"(no {work / 'times.tsv'})")
    L += ["", "## Machine", "", "```", machine_text(work), "```", ""]
    cmds = work / "commands.sh"
    L += ["## Commands", "", "Every command run.sh ran, in order (`commands.sh`):", ""]
    L += ["```bash", cmds.read_text(encoding="utf-8").strip() if cmds.is_file() else f"(no {cmds})", "```", ""]
    return "\n".join(L)


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_sel = sub.add_parser("select", help="choose beta / branch on dev")
    p_sel.add_argument("--work", required=True)
    p_sel.add_argument("--betas", required=True)
    p_sel.add_argument("--what", choices=("beta", "final", "show"), required=True)
    p_rep = sub.add_parser("report", help="write RESULTS.md")
    p_rep.add_argument("--work", required=True)
    p_rep.add_argument("--betas", required=True)
    p_rep.add_argument("--out", required=True)
    p_rep.add_argument("--json", default=None, help="also write every number as JSON here")
    args = parser.parse_args(argv)
    work = Path(args.work)
    try:
        betas = parse_betas(args.betas)
        if args.cmd == "select":
            if args.what == "show":
                sel = read_selection(work)
                print(sel["run"], sel["beta"], sel["branch"])
                return 0
            langs = settings_langs(read_settings(work), work)
            if args.what == "beta":
                best, avgs = select_beta(work, betas, langs)
                for b, a in avgs.items():
                    print(f"beta {b}: dev average WER {pct(a)}%", file=sys.stderr)
                print(best)
                return 0
            sel = select_final(work, betas, langs)
            (work / "selection.json").write_text(json.dumps(sel, indent=2) + "\n", encoding="utf-8")
            print(f"system 4: {sel['run']} (beta {sel['beta']}, {sel['branch']} branch); dev averages "
                  f"masked {pct(sel['dev_average_by_branch']['masked'])}%, unmasked "
                  f"{pct(sel['dev_average_by_branch']['unmasked'])}%", file=sys.stderr)
            print(sel["run"], sel["beta"], sel["branch"])
            return 0
        res = compute_results(work, betas)
        text = render(work, res)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        if args.json:
            Path(args.json).write_text(json.dumps({k: v for k, v in res.items()}, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
        return 0
    except ResultsError as exc:
        print(f"make_results.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
