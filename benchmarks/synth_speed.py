"""Benchmark of ``just-asr synth-corpus``: seconds of audio written per second of wall-clock time.

Run from the repository root::

    .venv/bin/python benchmarks/synth_speed.py                      # the demo-size build
    .venv/bin/python benchmarks/synth_speed.py --jobs 2 --hours 5 --markdown /tmp/synth.md

It measures, in a fresh temporary folder:

1. the demo-size build (``synthesize_corpus`` defaults: all 8 languages, MLS imbalance, the
   per-language floor), end to end: wall time, audio hours, real-time factor (audio seconds per
   wall second, set-up included), audio per language, and per language the audio seconds
   synthesised per second of one worker's time (espeak-ng speaks some languages faster);
2. espeak-ng's per-process start-up (a one-word utterance) against a typical sentence, which
   bounds what batching sentences into one process could save (see BENCHMARKS.md).

Timings are wall-clock; note the machine's load (printed) when comparing runs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from just_asr.data.synth import DEMO_HOURS, find_espeak, synthesize_corpus


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of all its waited-for descendants."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _espeak_startup(repeats: int) -> tuple[float, float, float]:
    """Mean wall seconds of one espeak-ng process for a one-word and a 14-word text, and the audio seconds of the latter."""
    exe = find_espeak()
    sentence = "the quick brown fox jumps over the lazy dog and then runs far away into the woods"
    times = []
    nbytes = 0
    for text in ("yes", sentence):
        t = time.perf_counter()
        for _ in range(repeats):
            out = subprocess.run([exe, "-v", "en-us", "--stdout", text], capture_output=True, check=True).stdout
        times.append((time.perf_counter() - t) / repeats)
        nbytes = len(out) - 44
    return times[0], times[1], nbytes / 2 / 22050


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--hours", type=float, default=DEMO_HOURS, help=f"train hours to build (default {DEMO_HOURS}: the demo size)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the results table here")
    args = ap.parse_args(argv)
    jobs = args.jobs or os.cpu_count() or 1

    lines: list[str] = []
    cmd = "benchmarks/synth_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines.append(f"- date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    lines.append(f"- machine: {os.cpu_count()} cores ({_cpu_model()}), jobs={jobs}, Python {platform.python_version()}")
    lines.append(f"- command: `.venv/bin/python {cmd.strip()}`")
    lines.append(f"- load average before: {os.getloadavg()[0]:.2f}")

    cpu0 = _cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        s = synthesize_corpus(Path(tmp) / "demo", hours=args.hours, jobs=jobs, progress=False)
    cpu = _cpu_seconds() - cpu0
    kept = sum(sum(l.utterances.values()) for l in s.languages)
    lines.append("")
    lines.append(
        f"Build with `synthesize_corpus` defaults (hours={args.hours:g}): {s.total_seconds / 3600:.2f} h of audio kept "
        f"({kept} utterances; {s.synthesized} synthesised, the rest past a split's cut) in {s.wall_seconds:.1f} s "
        f"wall = **{s.realtime_factor:.0f}x real time** on {jobs} worker(s), set-up included. "
        f"CPU time (user+sys, this process, workers and espeak-ng): {cpu:.1f} s = "
        f"{s.total_seconds / cpu:.0f} audio seconds per CPU second, i.e. about "
        f"{s.total_seconds / cpu * jobs:.0f}x real time on {jobs} otherwise idle cores."
    )
    lines.append("")
    lines.append("| lang | train min | dev min | test min | train utts | audio s per worker s (one core) |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for l in s.languages:
        lines.append(
            f"| {l.iso} | {l.seconds['train'] / 60:.1f} | {l.seconds['dev'] / 60:.1f} | "
            f"{l.seconds['test'] / 60:.1f} | {l.utterances['train']} | {l.core_realtime_factor:.0f} |"
        )
    synth = sum(l.synthesized_seconds for l in s.languages)
    work = sum(l.worker_seconds for l in s.languages)
    lines.append(f"| all | {s.total_seconds / 60 - sum(l.seconds['dev'] + l.seconds['test'] for l in s.languages) / 60:.1f} | "
                 f"{sum(l.seconds['dev'] for l in s.languages) / 60:.1f} | {sum(l.seconds['test'] for l in s.languages) / 60:.1f} | "
                 f"{sum(l.utterances['train'] for l in s.languages)} | {synth / work:.0f} |")

    one_word, sentence, sentence_audio = _espeak_startup(20)
    lines.append("")
    lines.append(
        f"espeak-ng process for one word: {one_word * 1000:.1f} ms; for a {sentence_audio:.1f} s sentence: "
        f"{sentence * 1000:.1f} ms (single process, en-us)."
    )
    lines.append(f"- load average after: {os.getloadavg()[0]:.2f}")
    text = "\n".join(lines)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
