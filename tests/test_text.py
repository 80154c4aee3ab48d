"""Tests of the MLS text normaliser (just_asr.data.text)."""

from __future__ import annotations

import random

import pytest

from just_asr.data.languages import ISO_CODES, get_language
from just_asr.data.text import allowed_characters, alphabet, normalize_text, verbalize_number

# (language, raw text, expected normal form): diacritics kept, punctuation removed, lower case
CASES = [
    ("en", "Hello, World! It's Phyllis's wheel-chair; \"quoted\" -- fine.", "hello world it's phyllis's wheel-chair quoted fine"),
    ("de", "Größe: Äpfel, Öl und Übermut — Straße!", "größe äpfel öl und übermut straße"),
    ("nl", "Één ruïne, café; geëerd? Zeeën!", "één ruïne café geëerd zeeën"),
    ("fr", "L’homme a dit « aujourd'hui » : œuvre, Noël, ça!", "l'homme a dit aujourd'hui œuvre noël ça"),
    ("es", "¿Qué tal? ¡El niño pingüino está aquí!", "qué tal el niño pingüino está aquí"),
    ("it", "Perché è così? Più città, però.", "perché è così più città però"),
    ("pt", "Ação, coração; não é pão: à vista!", "ação coração não é pão à vista"),
    ("pl", "Zażółć gęślą jaźń, proszę. Łódź!", "zażółć gęślą jaźń proszę łódź"),
]


@pytest.mark.parametrize("lang,raw,expected", CASES)
def test_diacritics_kept_and_punctuation_removed(lang: str, raw: str, expected: str) -> None:
    assert normalize_text(raw, lang) == expected


# numbers written in digits, spelled out (hand-checked spellings)
NUMBERS = [
    ("en", "I have 42 cats", "i have forty-two cats"),
    ("en", "the 21st of 1,234 men", "the twenty-first of one thousand two hundred and thirty-four men"),
    ("en", "3.5 km", "three point five km"),
    ("de", "21 Tage und 1.000 Nächte", "einundzwanzig tage und eintausend nächte"),
    ("de", "3,5 Liter", "drei komma fünf liter"),
    ("nl", "21 jaar", "eenentwintig jaar"),
    ("fr", "21 fois", "vingt et un fois"),
    ("fr", "80 ans", "quatre-vingts ans"),
    ("es", "en 1999", "en mil novecientos noventa y nueve"),
    ("it", "23 anni", "ventitré anni"),
    ("pt", "21 dias", "vinte e um dias"),
    ("pl", "2 koty i 5 psów", "dwa koty i pięć psów"),
    ("pl", "3,5 kg", "trzy przecinek pięć kg"),
]


@pytest.mark.parametrize("lang,raw,expected", NUMBERS)
def test_numbers_are_verbalised(lang: str, raw: str, expected: str) -> None:
    assert normalize_text(raw, lang) == expected


def test_number_runs_that_are_not_one_number_are_read_run_by_run() -> None:
    # a date is not a grouped number in Italian: each run is a number of its own
    assert normalize_text("12.05.2020", "it") == "dodici cinque duemilaventi"
    assert verbalize_number("007", "en") == "seven"
    with pytest.raises(ValueError, match="not a number"):
        verbalize_number("12a", "en")


def test_letters_outside_the_alphabet_are_mapped_or_dropped() -> None:
    # é is French but not English or German: mapped to its base letter
    assert normalize_text("Café", "fr") == "café"
    assert normalize_text("Café", "en") == "cafe"
    assert normalize_text("Café", "de") == "cafe"
    # ß is German only; ł is Polish only; æ becomes ae where it is not a letter
    assert normalize_text("Straße", "pl") == "strasse"
    assert normalize_text("Łódź", "en") == "lodz"
    assert normalize_text("Ærø", "en") == "aero"
    # other scripts have no mapping and are dropped
    assert normalize_text("hello мир world", "en") == "hello world"


def test_apostrophes_and_hyphens_only_inside_words() -> None:
    assert normalize_text("'tis -well- don't rock 'n' roll -- x-ray", "en") == "tis well don't rock n roll x-ray"
    assert normalize_text("it’s", "en") == "it's"  # typographic apostrophe


def test_real_mls_transcripts_are_unchanged() -> None:
    # MLS transcripts are already in normal form: the normaliser must leave them alone
    assert normalize_text("więc czego chcecie odemnie spytałem", "pl") == "więc czego chcecie odemnie spytałem"
    en = "surprise i-i'm glad you like it said his wife shyly still backing away of course he'd like it"
    assert normalize_text(en, "en") == en


def test_allowed_characters() -> None:
    for iso in ISO_CODES:
        chars = allowed_characters(iso)
        lang = get_language(iso)
        assert set("abcdefghijklmnopqrstuvwxyz") <= chars
        assert set(lang.extra_letters) <= chars
        assert {" ", "'", "-"} <= chars
        assert len(chars) == 26 + len(lang.extra_letters) + 3
        assert alphabet(iso) == "abcdefghijklmnopqrstuvwxyz" + lang.extra_letters
    assert "ł" in allowed_characters("pl") and "ł" not in allowed_characters("de")
    assert "ß" in allowed_characters("german")


@pytest.mark.parametrize("iso", ISO_CODES)
def test_random_strings_normalise_to_allowed_fixed_points(iso: str) -> None:
    rng = random.Random(iso)
    pool = (
        "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"-–—()[]«»’`´&%$€@#/\\\t\n"
        "äöüßàáâãçèéêëíïîóôõœùúûÿñąćęłńśźżÆØÅжΩ中²½ﬁ"
    )
    allowed = allowed_characters(iso)
    for _ in range(300):
        raw = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        out = normalize_text(raw, iso)
        assert set(out) <= allowed, (raw, out)
        assert out == out.strip() and "  " not in out
        assert normalize_text(out, iso) == out  # idempotent
        for i, ch in enumerate(out):
            if ch in "'-":  # only between two letters
                assert 0 < i < len(out) - 1 and out[i - 1] not in " '-" and out[i + 1] not in " '-", (raw, out)
        assert not any(c.isdigit() for c in out)


def test_unknown_language() -> None:
    with pytest.raises(ValueError, match="unknown MLS language"):
        normalize_text("hello", "xx")
