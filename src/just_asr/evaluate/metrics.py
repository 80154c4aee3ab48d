"""Word and character error rates with substitution / deletion / insertion counts, per language.

Counting rules (the alignment is jiwer 4's minimum-edit-distance alignment, ``jiwer.process_words``
and ``jiwer.process_characters``):

* Texts are compared after whitespace normalisation only (leading/trailing blanks stripped, runs of
  whitespace collapsed to one space). MLS transcripts are already in normal form (lower case, no
  punctuation), so nothing else is changed.
* Words are whitespace-separated tokens. Characters are the characters of the normalised text,
  **spaces between words included** (so a wrongly split or joined word costs one character error).
* An empty reference with a non-empty hypothesis counts every hypothesis word (character) as an
  insertion; an empty hypothesis counts every reference word as a deletion; both empty count nothing.
* The rate is ``(S + D + I) / N`` where ``N`` is the number of reference words (characters),
  ``N = S + D + hits``. A set whose references total zero words has an undefined rate: ``None``.
* Per-language rates pool the counts of all the language's utterances (corpus-level WER, as MLS
  reports it; not a mean of per-utterance rates). ``overall`` pools every utterance of every
  language. ``average`` is the **unweighted** mean of the per-language rates (the paper's "avg"
  column), taken over the languages whose rate is defined.

Example::

    >>> c = word_errors(["the cat sat"], ["the hat sat down"])
    >>> (c.substitutions, c.deletions, c.insertions, c.ref_len), round(c.rate, 4)
    ((1, 0, 1, 3), 0.6667)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import jiwer

from just_asr.data.languages import LANGUAGES, get_language

_SPACES = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
    """Strip and collapse runs of whitespace to one space."""
    return _SPACES.sub(" ", text).strip()


@dataclass
class ErrorCounts:
    """Edit counts of a set of (reference, hypothesis) pairs.

    Attributes:
        substitutions, deletions, insertions, hits: summed over the set.
        ref_len: reference words (characters) = substitutions + deletions + hits.
        hyp_len: hypothesis words (characters) = substitutions + insertions + hits.
        num_utts: number of pairs.
    """

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    num_utts: int = 0

    @property
    def ref_len(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def hyp_len(self) -> int:
        return self.substitutions + self.insertions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float | None:
        """``errors / ref_len``, or ``None`` (undefined) when the references hold no words."""
        return self.errors / self.ref_len if self.ref_len > 0 else None

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
            self.num_utts + other.num_utts,
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(ref_len=self.ref_len, hyp_len=self.hyp_len, errors=self.errors, rate=self.rate)
        return out


def _check_pairs(refs: Sequence[str], hyps: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("refs and hyps must be sequences of strings, not single strings")
    if len(refs) != len(hyps):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    for name, seq in (("reference", refs), ("hypothesis", hyps)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{name} {i} is {type(s).__name__}, not str")
    return [normalize_whitespace(r) for r in refs], [normalize_whitespace(h) for h in hyps]


def word_errors(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Word-level S/D/I/hit counts summed over the pairs (see the module docstring for the rules)."""
    refs_n, hyps_n = _check_pairs(refs, hyps)
    if not refs_n:
        return ErrorCounts()
    out = jiwer.process_words(refs_n, hyps_n)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits, len(refs_n))


def char_errors(refs: Sequence[str], hyps: Sequence[str]) -> ErrorCounts:
    """Character-level S/D/I/hit counts (spaces between words count as characters)."""
    refs_n, hyps_n = _check_pairs(refs, hyps)
    if not refs_n:
        return ErrorCounts()
    out = jiwer.process_characters(refs_n, hyps_n)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits, len(refs_n))


def language_key(lang: str) -> str:
    """ISO code for an MLS language name in any accepted form; other names are kept (lower-cased)."""
    try:
        return get_language(lang).iso
    except ValueError:
        return lang.strip().lower()


def language_order(langs: Sequence[str]) -> list[str]:
    """MLS order (en, de, nl, fr, es, it, pt, pl) first, then any other languages alphabetically."""
    mls = [l.iso for l in LANGUAGES if l.iso in langs]
    return mls + sorted(l for l in set(langs) if l not in mls)


@dataclass
class LanguageScore:
    """Word and character error counts of one language (or of a pooled set)."""

    language: str
    words: ErrorCounts
    chars: ErrorCounts

    @property
    def wer(self) -> float | None:
        return self.words.rate

    @property
    def cer(self) -> float | None:
        return self.chars.rate


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


@dataclass
class ScoreReport:
    """Per-language scores (MLS order), pooled overall counts and the unweighted language average."""

    languages: list[LanguageScore] = field(default_factory=list)
    overall: LanguageScore = field(default_factory=lambda: LanguageScore("overall", ErrorCounts(), ErrorCounts()))

    @property
    def average_wer(self) -> float | None:
        """Unweighted mean of the defined per-language WERs (``None`` if none is defined)."""
        return _mean([l.wer for l in self.languages])

    @property
    def average_cer(self) -> float | None:
        return _mean([l.cer for l in self.languages])

    def get(self, language: str) -> LanguageScore:
        key = language_key(language)
        for l in self.languages:
            if l.language == key:
                return l
        raise KeyError(f"no scores for language {language!r}; have {[l.language for l in self.languages]}")

    def to_dict(self) -> dict:
        def one(s: LanguageScore) -> dict:
            return {"language": s.language, "wer": s.wer, "cer": s.cer, "words": s.words.to_dict(), "chars": s.chars.to_dict()}

        return {
            "languages": [one(l) for l in self.languages],
            "overall": one(self.overall),
            "average": {"wer": self.average_wer, "cer": self.average_cer, "num_languages": len(self.languages),
                        "weighting": "unweighted mean over languages with a defined rate"},
        }


def score_by_language(refs: Sequence[str], hyps: Sequence[str], langs: Sequence[str]) -> ScoreReport:
    """Score ``hyps`` against ``refs`` per language.

    Args:
        refs, hyps: one reference and one hypothesis text per utterance.
        langs: the utterance's language (ISO code or MLS name) per utterance.

    Returns:
        :class:`ScoreReport` with one :class:`LanguageScore` per language present, in MLS order.
    """
    if len(hyps) != len(refs):
        raise ValueError(f"got {len(refs)} references but {len(hyps)} hypotheses")
    if len(langs) != len(refs):
        raise ValueError(f"got {len(refs)} references but {len(langs)} language labels")
    by_lang: dict[str, tuple[list[str], list[str]]] = {}
    for r, h, lang in zip(refs, hyps, langs, strict=True):
        key = language_key(lang)
        by_lang.setdefault(key, ([], []))
        by_lang[key][0].append(r)
        by_lang[key][1].append(h)
    report = ScoreReport()
    words_total, chars_total = ErrorCounts(), ErrorCounts()
    for key in language_order(list(by_lang)):
        r, h = by_lang[key]
        s = LanguageScore(key, word_errors(r, h), char_errors(r, h))
        report.languages.append(s)
        words_total = words_total + s.words
        chars_total = chars_total + s.chars
    report.overall = LanguageScore("overall", words_total, chars_total)
    return report
