"""Multilingual LibriSpeech (MLS) text normal form.

MLS transcripts are lower case, carry no punctuation, keep each language's diacritics
(``"więc czego chcecie"``, ``"même"``) and keep apostrophes and hyphens *inside* words
(``"phyllis's"``, ``"i've"``, ``"wheel-chair"``, ``"aujourd'hui"``). Every transcript this
project produces or compares goes through :func:`normalize_text`, so the synthetic corpus, real
MLS transcripts (already in this form: the function leaves them unchanged) and model output are
scored on the same strings.

What :func:`normalize_text` does, in order:

1. Unicode NFKC (composes diacritics, turns ``"²"`` into ``"2"`` and ligatures into letters);
   typographic apostrophes (``’ ‘ ʼ ´ `` ` ``) become ``'``, Unicode hyphens become ``-``, and
   dashes (``– —``) become spaces.
2. Numbers written in digits are spelled out with ``num2words`` in the language: integers
   (``"1999"``), numbers with the language's thousands grouping (``"1,000"`` in English,
   ``"1.000"`` elsewhere), decimals (``"3.5"`` / ``"3,5"``: integer part, the language's word for
   the decimal separator, then the digits one by one) and English ordinals (``"21st"``). Any other
   run of digits is spelled out run by run.
3. Lower case.
4. Letters outside the language's alphabet (``a-z`` plus ``Language.extra_letters``) are mapped to
   it when they are a base letter plus diacritics (``"é"`` -> ``"e"`` in English) or a known
   ligature (``"æ"`` -> ``"ae"``); letters with no such mapping (other scripts) are dropped.
5. Every other character is a separator; apostrophes and hyphens survive only between two letters.
6. Whitespace is collapsed.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from just_asr.data.languages import Language, get_language

__all__ = ["allowed_characters", "alphabet", "normalize_text", "verbalize_number"]

_BASE_LETTERS = "abcdefghijklmnopqrstuvwxyz"

#: characters turned into a plain apostrophe before anything else
_APOSTROPHES = "\u2019\u2018\u02bc\u00b4`\u2032"
#: characters turned into a plain hyphen (Unicode hyphen, non-breaking hyphen, minus sign)
_HYPHENS = "\u2010\u2011\u2212"
#: characters turned into a space (figure dash, en dash, em dash, horizontal bar)
_DASHES = "\u2012\u2013\u2014\u2015"

#: letters without a Unicode decomposition and their ASCII spelling, used when the target
#: language does not have the letter itself
_TRANSLITERATIONS = {
    "æ": "ae",
    "œ": "oe",
    "ø": "o",
    "ß": "ss",
    "ł": "l",
    "đ": "d",
    "ð": "d",
    "þ": "th",
    "ı": "i",
}

#: num2words language codes
_NUM2WORDS_LANG = {"en": "en", "de": "de", "nl": "nl", "fr": "fr", "es": "es", "it": "it", "pt": "pt", "pl": "pl"}
#: the word read for the decimal separator
_DECIMAL_WORD = {
    "en": "point",
    "de": "komma",
    "nl": "komma",
    "fr": "virgule",
    "es": "coma",
    "it": "virgola",
    "pt": "vírgula",
    "pl": "przecinek",
}
#: (thousands separator, decimal separator) as written in the language
_SEPARATORS = {"en": (",", ".")}
_DEFAULT_SEPARATORS = (".", ",")

#: longest integer spelled as one number; longer digit runs are read digit by digit
_MAX_CARDINAL_DIGITS = 15

_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_EN_ORDINAL_RE = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_SPACES_RE = re.compile(r"\s+")


def _language(lang: str | Language) -> Language:
    return lang if isinstance(lang, Language) else get_language(lang)


@lru_cache(maxsize=None)
def alphabet(lang: str | Language) -> str:
    """The letters of ``lang``'s MLS normal form: ``a-z`` plus the language's extra letters."""
    language = _language(lang)
    return _BASE_LETTERS + language.extra_letters


@lru_cache(maxsize=None)
def allowed_characters(lang: str | Language) -> frozenset[str]:
    """Every character a normalised ``lang`` transcript may contain.

    That is the language's letters (:func:`alphabet`), the space, and the apostrophe and hyphen
    (which only ever appear between two letters).
    """
    return frozenset(alphabet(lang) + " '-")


def _cardinal(n: int, iso: str) -> str:
    from num2words import num2words

    if len(str(n)) > _MAX_CARDINAL_DIGITS:
        return " ".join(num2words(int(d), lang=_NUM2WORDS_LANG[iso]) for d in str(n))
    return num2words(n, lang=_NUM2WORDS_LANG[iso])


def verbalize_number(token: str, lang: str | Language) -> str:
    """Spell out one number written in digits, e.g. ``"1,234.5"`` in English.

    ``token`` is digits optionally separated by ``.`` or ``,``. It is read as an integer with the
    language's thousands grouping and/or a decimal part when it fits that pattern; otherwise each
    run of digits is spelled out on its own (``"12.05.2020"``). The result is not yet normalised
    (it may hold capitals or commas from num2words).
    """
    iso = _language(lang).iso
    if not re.fullmatch(r"\d+(?:[.,]\d+)*", token):
        raise ValueError(f"not a number written in digits: {token!r}")
    thousands, decimal = _SEPARATORS.get(iso, _DEFAULT_SEPARATORS)
    grouped = re.fullmatch(
        r"(\d{1,3}(?:" + re.escape(thousands) + r"\d{3})+|\d+)(?:" + re.escape(decimal) + r"(\d+))?",
        token,
    )
    if grouped is None:
        return " ".join(_cardinal(int(run), iso) for run in re.findall(r"\d+", token))
    integer = int(grouped.group(1).replace(thousands, ""))
    words = _cardinal(integer, iso)
    if grouped.group(2) is not None:
        digits = " ".join(_cardinal(int(d), iso) for d in grouped.group(2))
        words = f"{words} {_DECIMAL_WORD[iso]} {digits}"
    return words


def _verbalize_numbers(text: str, iso: str) -> str:
    from num2words import num2words

    if iso == "en":
        text = _EN_ORDINAL_RE.sub(lambda m: f" {num2words(int(m.group(1)), lang='en', to='ordinal')} ", text)
    return _NUMBER_RE.sub(lambda m: f" {verbalize_number(m.group(0), iso)} ", text)


@lru_cache(maxsize=4096)
def _map_letter(ch: str, letters: str) -> str:
    """Map one lower-case letter outside ``letters`` into it, or return ``""`` when impossible."""
    decomposed = unicodedata.normalize("NFKD", ch)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    if base and all(c in letters for c in base):
        return base
    spelled = _TRANSLITERATIONS.get(ch) or _TRANSLITERATIONS.get(base, "")
    if spelled and all(c in letters for c in spelled):
        return spelled
    return ""


def normalize_text(text: str, lang: str | Language) -> str:
    """Put ``text`` into MLS normal form for language ``lang`` (ISO code, MLS name or Language).

    See the module docstring for the steps. The result only uses
    :func:`allowed_characters` of ``lang``, has single spaces between words, no leading or trailing
    space, and is a fixed point: ``normalize_text(normalize_text(t, l), l) == normalize_text(t, l)``.

    >>> normalize_text("Don't PANIC: it's 42!", "en")
    "don't panic it's forty-two"
    >>> normalize_text("Zażółć gęślą jaźń, proszę.", "pl")
    'zażółć gęślą jaźń proszę'
    """
    language = _language(lang)
    letters = alphabet(language)
    text = unicodedata.normalize("NFKC", text)
    for ch in _APOSTROPHES:
        text = text.replace(ch, "'")
    for ch in _HYPHENS:
        text = text.replace(ch, "-")
    for ch in _DASHES:
        text = text.replace(ch, " ")
    if any(c.isdigit() for c in text):
        text = _verbalize_numbers(text, language.iso)
        text = unicodedata.normalize("NFKC", text)
    text = text.lower()

    out: list[str] = []
    for ch in text:
        if ch in letters or ch in "'-":
            out.append(ch)
        elif ch.isalpha():
            out.append(_map_letter(ch, letters))
        else:
            out.append(" ")
    chars = "".join(out)

    # apostrophes and hyphens survive only between two letters
    kept: list[str] = []
    for i, ch in enumerate(chars):
        if ch in "'-":
            before = chars[i - 1] if i > 0 else ""
            after = chars[i + 1] if i + 1 < len(chars) else ""
            if not (before and before in letters and after and after in letters):
                ch = " "
        kept.append(ch)
    return _SPACES_RE.sub(" ", "".join(kept)).strip()
