"""Evaluation: WER/CER with S/D/I counts per language (jiwer) and reports (Markdown, JSON, PNG)."""

from __future__ import annotations

from just_asr.evaluate.metrics import (
    ErrorCounts,
    LanguageScore,
    ScoreReport,
    char_errors,
    normalize_whitespace,
    score_by_language,
    word_errors,
)
from just_asr.evaluate.report import format_markdown, plot_wer, report_json, write_reports

__all__ = [
    "ErrorCounts",
    "LanguageScore",
    "ScoreReport",
    "char_errors",
    "format_markdown",
    "normalize_whitespace",
    "plot_wer",
    "report_json",
    "score_by_language",
    "word_errors",
    "write_reports",
]
