"""Tests for WER/CER scoring and the per-language reports (just_asr.evaluate)."""

from __future__ import annotations

import json
import random

import matplotlib.image
import pytest

from just_asr.evaluate import (
    ErrorCounts,
    char_errors,
    format_markdown,
    report_json,
    score_by_language,
    word_errors,
    write_reports,
)

# ---------------------------------------------------------------------------------------------
# hand-counted examples
#
# EN1  ref: the cat sat on the mat      (6 words, 22 characters with spaces)
#      hyp: the cat sit on  ***  mat    (5 words, 18 characters)
#      words: the=the cat=cat sat->sit (S) on=on the->* (D) mat=mat      => S1 D1 I0 H4
#      chars: "sat"->"sit": a->i (S); "the " (t,h,e,space) deleted (D4)  => S1 D4 I0 H17
#             (the hypothesis is 4 characters shorter, so >= 4 deletions; 'a' has no partner: 1 more)
# EN2  ref: (empty)   hyp: hello world  => words I2; chars I11 (10 letters + 1 space)
# EN3  ref: good morning   hyp: (empty)  => words D2; chars D12 (11 letters + 1 space)
#   en words: S1 D3 I2 H4, N = 6 + 0 + 2 = 8  -> WER = 6/8
#   en chars: S1 D16 I11 H17, N = 22 + 0 + 12 = 34 -> CER = 28/34
#
# DE1  ref: ein zwei drei   ***        (3 words, 13 characters)
#      hyp: ein zwei frei vier         (4 words, 18 characters)
#      words: ein=ein zwei=zwei drei->frei (S) *->vier (I)               => S1 D0 I1 H2 -> WER 2/3
#      chars: d->f (S), " vier" inserted (I5); 'd' does not occur in the hypothesis, and the
#             hypothesis is 5 longer, so S1 I5 is the minimum                => S1 D0 I5 H12 -> CER 6/13
#
# IT1  ref: (empty)   hyp: ciao   => words I1, chars I4; "it" has no reference words: rate None
# PL1  ref: (empty)   hyp: (empty) => nothing; "pl" rate None
#
# average WER = mean(en 6/8, de 2/3) = 17/24 (it and pl are undefined, so left out)
# overall words: S2 D3 I4 (2 + 1 + 1), N = 8 + 3 = 11 -> 9/11
# overall chars: S2 D16 I20 (11 + 5 + 4), N = 34 + 13 = 47 -> 38/47
# ---------------------------------------------------------------------------------------------

REFS = ["ein zwei drei", "the cat sat on the mat", "", "good morning", "", ""]
HYPS = ["ein zwei frei vier", "the cat sit on mat", "hello world", "", "ciao", ""]
LANGS = ["de", "en", "english", "en", "it", "polish"]


def counts(c: ErrorCounts) -> tuple[int, int, int, int]:
    return (c.substitutions, c.deletions, c.insertions, c.hits)


def test_single_pairs_hand_counted():
    assert counts(word_errors(["the cat sat on the mat"], ["the cat sit on mat"])) == (1, 1, 0, 4)
    assert counts(char_errors(["the cat sat on the mat"], ["the cat sit on mat"])) == (1, 4, 0, 17)
    assert counts(word_errors(["ein zwei drei"], ["ein zwei frei vier"])) == (1, 0, 1, 2)
    assert counts(char_errors(["ein zwei drei"], ["ein zwei frei vier"])) == (1, 0, 5, 12)
    # empty reference: every hypothesis unit is an insertion, rate undefined
    e = word_errors([""], ["hello world"])
    assert counts(e) == (0, 0, 2, 0) and e.ref_len == 0 and e.rate is None
    assert counts(char_errors([""], ["hello world"])) == (0, 0, 11, 0)
    # empty hypothesis: every reference unit is a deletion
    d = word_errors(["good morning"], [""])
    assert counts(d) == (0, 2, 0, 0) and d.rate == 1.0
    assert counts(char_errors(["good morning"], [""])) == (0, 12, 0, 0)
    both = word_errors([""], [""])
    assert counts(both) == (0, 0, 0, 0) and both.rate is None and both.num_utts == 1
    # whitespace is normalised; a joined word costs one character (the space) in CER
    assert counts(word_errors(["  a   b "], ["a b"])) == (0, 0, 0, 2)
    assert counts(char_errors(["ab cd"], ["abcd"])) == (0, 1, 0, 4)


def test_per_language_overall_and_unweighted_average():
    rep = score_by_language(REFS, HYPS, LANGS)
    assert [l.language for l in rep.languages] == ["en", "de", "it", "pl"]  # MLS order, ISO codes
    en, de, it, pl = rep.languages
    assert counts(en.words) == (1, 3, 2, 4) and en.words.ref_len == 8 and en.words.num_utts == 3
    assert en.wer == pytest.approx(6 / 8)
    assert counts(en.chars) == (1, 16, 11, 17) and en.cer == pytest.approx(28 / 34)
    assert counts(de.words) == (1, 0, 1, 2) and de.wer == pytest.approx(2 / 3)
    assert de.cer == pytest.approx(6 / 13)
    assert counts(it.words) == (0, 0, 1, 0) and it.wer is None and it.cer is None
    assert counts(pl.words) == (0, 0, 0, 0) and pl.wer is None and pl.words.num_utts == 1
    assert rep.average_wer == pytest.approx(17 / 24)
    assert rep.average_cer == pytest.approx((28 / 34 + 6 / 13) / 2)
    assert counts(rep.overall.words) == (2, 3, 4, 6) and rep.overall.wer == pytest.approx(9 / 11)
    assert counts(rep.overall.chars) == (2, 16, 20, 29) and rep.overall.cer == pytest.approx(38 / 47)
    assert rep.overall.words.num_utts == 6
    assert rep.get("german") is de


def test_all_languages_undefined_gives_none_not_crash():
    rep = score_by_language(["", ""], ["x", ""], ["fr", "nl"])
    assert [l.language for l in rep.languages] == ["nl", "fr"]
    assert rep.average_wer is None and rep.overall.wer is None
    md = format_markdown(rep)
    assert "| nl | n/a | n/a | 0 | 0 | 0 | 1 | 0 |" in md
    assert json.loads(json.dumps(report_json(rep)))["average"]["wer"] is None
    empty = score_by_language([], [], [])
    assert empty.languages == [] and empty.average_wer is None


def _edit_distance(a: list, b: list) -> int:
    """Plain Levenshtein distance by dynamic programming (independent of jiwer)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_error_totals_equal_edit_distance_on_random_texts():
    rng = random.Random(0)
    words = ["a", "b", "cd", "de", "ef", "żółw", "ça"]
    refs, hyps = [], []
    for _ in range(40):
        refs.append(" ".join(rng.choice(words) for _ in range(rng.randint(0, 6))))
        hyps.append(" ".join(rng.choice(words) for _ in range(rng.randint(0, 6))))
    w = word_errors(refs, hyps)
    c = char_errors(refs, hyps)
    assert w.errors == sum(_edit_distance(r.split(), h.split()) for r, h in zip(refs, hyps))
    assert c.errors == sum(_edit_distance(list(r), list(h)) for r, h in zip(refs, hyps))
    assert w.ref_len == sum(len(r.split()) for r in refs)
    assert c.ref_len == sum(len(r) for r in refs) and c.hyp_len == sum(len(h) for h in hyps)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_errors(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="language labels"):
        score_by_language(["a"], ["a"], [])
    with pytest.raises(TypeError, match="not single strings"):
        word_errors("a b", "a b")
    with pytest.raises(TypeError, match="hypothesis 0 is NoneType"):
        char_errors(["a"], [None])  # type: ignore[list-item]


def test_markdown_json_and_png_reports(tmp_path):
    rep = score_by_language(REFS, HYPS, LANGS)
    md = format_markdown(rep)
    lines = md.strip().splitlines()
    assert lines[0] == "| language | WER (%) | CER (%) | S | D | I | #utts | #words |"
    rows = [l.split("|")[1].strip() for l in lines[2:]]
    assert rows[:4] == ["en", "de", "it", "pl"]
    assert lines[2] == "| en | 75.00 | 82.35 | 1 | 3 | 2 | 3 | 8 |"
    assert lines[3] == "| de | 66.67 | 46.15 | 1 | 0 | 1 | 1 | 3 |"
    assert lines[4] == "| it | n/a | n/a | 0 | 0 | 1 | 1 | 0 |"
    # it and pl have no reference words: the average is over en and de only
    assert lines[6].startswith("| **average** (unweighted, 2 of 4 languages) | 70.83 | 64.25 |")
    assert lines[7] == "| overall (pooled) | 81.82 | 80.85 | 2 | 3 | 4 | 6 | 11 |"

    paths = write_reports(rep, tmp_path / "out", extra={"method": "greedy"})
    assert paths["md"].read_text() == md
    data = json.loads(paths["json"].read_text())
    assert [l["language"] for l in data["languages"]] == ["en", "de", "it", "pl"]
    assert data["languages"][0]["words"]["deletions"] == 3
    assert data["languages"][2]["wer"] is None
    assert data["average"]["wer"] == pytest.approx(17 / 24)
    assert data["overall"]["chars"]["insertions"] == 20
    assert data["info"] == {"method": "greedy"}
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(paths["png"])
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
