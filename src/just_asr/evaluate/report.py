"""Per-language WER/CER reports: a Markdown table, JSON and a bar chart (PNG).

The Markdown table has one row per language in MLS order (``en de nl fr es it pt pl``, then any
other language), with WER and CER in percent, the word-level substitution / deletion / insertion
counts, the number of utterances and of reference words; then an ``average`` row (the unweighted
mean over languages, as the paper reports) and an ``overall`` row (all utterances pooled). An
undefined rate (a language whose references hold no words) is written ``n/a`` in Markdown and
``null`` in JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from just_asr.evaluate.metrics import ScoreReport


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100.0 * rate:.2f}"


def format_markdown(report: ScoreReport, title: str | None = None) -> str:
    """Render ``report`` as a Markdown table (rates in percent, counts are word-level)."""
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines.append("| language | WER (%) | CER (%) | S | D | I | #utts | #words |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in report.languages:
        w = s.words
        lines.append(
            f"| {s.language} | {_pct(s.wer)} | {_pct(s.cer)} | {w.substitutions} | {w.deletions} | "
            f"{w.insertions} | {w.num_utts} | {w.ref_len} |"
        )
    n_lang = len(report.languages)
    n_def = sum(1 for s in report.languages if s.wer is not None)
    span = f"{n_lang} languages" if n_def == n_lang else f"{n_def} of {n_lang} languages"
    lines.append(f"| **average** (unweighted, {span}) | {_pct(report.average_wer)} | "
                 f"{_pct(report.average_cer)} |  |  |  |  |  |")
    o = report.overall.words
    lines.append(
        f"| overall (pooled) | {_pct(report.overall.wer)} | {_pct(report.overall.cer)} | {o.substitutions} | "
        f"{o.deletions} | {o.insertions} | {o.num_utts} | {o.ref_len} |"
    )
    return "\n".join(lines) + "\n"


def report_json(report: ScoreReport, extra: dict | None = None) -> dict:
    """The report as a JSON-serialisable dict (rates are fractions, not percent); ``extra`` is stored
    under ``"info"`` (e.g. model directory, decoding method)."""
    out = report.to_dict()
    if extra:
        out["info"] = extra
    return out


def plot_wer(report: ScoreReport, path: str | Path, title: str = "WER per language") -> Path:
    """Bar chart of per-language WER (%) with the unweighted average as a dashed line; languages with
    an undefined WER are labelled ``n/a``. Written with matplotlib's Agg canvas (no display needed,
    the global backend is left alone)."""
    path = Path(path)
    fig = Figure(figsize=(max(4.0, 0.9 * len(report.languages) + 2.0), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = [s.language for s in report.languages]
    values = [100.0 * s.wer if s.wer is not None else 0.0 for s in report.languages]
    bars = ax.bar(range(len(names)), values, color="#4472c4")
    for bar, s in zip(bars, report.languages, strict=True):
        label = "n/a" if s.wer is None else f"{100.0 * s.wer:.1f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    if report.average_wer is not None:
        avg = 100.0 * report.average_wer
        ax.axhline(avg, color="#c00000", linestyle="--", linewidth=1, label=f"average {avg:.1f}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("WER (%)")
    ax.set_title(title)
    top = max(values + [100.0 * report.average_wer if report.average_wer is not None else 0.0, 1.0])
    ax.set_ylim(0, top * 1.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_reports(report: ScoreReport, out_dir: str | Path, extra: dict | None = None,
                  title: str | None = None) -> dict[str, Path]:
    """Write ``wer.md``, ``wer.json`` and ``wer.png`` into ``out_dir``; returns their paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "wer.md", "json": out_dir / "wer.json", "png": out_dir / "wer.png"}
    paths["md"].write_text(format_markdown(report, title), encoding="utf-8")
    paths["json"].write_text(json.dumps(report_json(report, extra), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_wer(report, paths["png"])
    return paths
