"""Multilingual SentencePiece tokenizer: round trip on all 8 languages, blank id, coverage, sampling."""

from __future__ import annotations

import json
import logging

import pytest
import wordfreq

from data_helpers import SENTENCES, write_mls_corpus
from just_asr.data.languages import ISO_CODES
from just_asr.data.text import allowed_characters, normalize_text
from just_asr.data.tokenizer import (
    BLANK_ID,
    Tokenizer,
    UnknownCharactersError,
    required_characters,
    sample_training_text,
    train_tokenizer,
)


def _texts(n_words: int = 600, per_line: int = 7) -> dict[str, list[str]]:
    out = {}
    for iso in ISO_CODES:
        words = [normalize_text(w, iso) for w in wordfreq.top_n_list(iso, n_words)]
        words = [w for w in words if w]
        out[iso] = [" ".join(words[i : i + per_line]) for i in range(0, len(words), per_line)]
    return out


@pytest.fixture(scope="module")
def texts():
    return _texts()


@pytest.fixture(scope="module")
def tok(texts, tmp_path_factory):
    path = train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=400, temperature=3.0)
    return Tokenizer(path)


def test_files_blank_and_sidecar(tok):
    assert tok.path.name == "tokenizer.model"
    assert not list(tok.path.parent.glob("*.vocab"))
    assert tok.vocab_size == 400 and tok.blank_id == BLANK_ID == 0
    assert tok.id_to_piece(0) == "<blk>" and tok.id_to_piece(1) == "<unk>"
    side = json.loads((tok.path.parent / "tokenizer.json").read_text())
    assert side["vocab_size"] == 400 and side["blank_id"] == 0 and side["normalization"] == "identity"
    assert set(side["languages"]) == set(ISO_CODES)
    # the directory works as the path too
    assert Tokenizer(tok.path.parent).vocab_size == 400


def test_round_trip_all_languages(tok, texts):
    n = 0
    for iso in ISO_CODES:
        lines = texts[iso] + SENTENCES[iso]
        for line in lines:
            ids = tok.encode(line)
            assert ids and BLANK_ID not in ids and tok.unk_id not in ids
            assert tok.decode(ids) == line
            n += 1
    assert n > 8 * 50
    # decoding drops blanks
    ids = tok.encode("zażółć gęślą jaźń")
    assert tok.decode([0] + ids[:1] + [0, 0] + ids[1:] + [0]) == "zażółć gęślą jaźń"


def test_every_alphabet_character_is_covered(tok):
    req = required_characters()
    for iso in ISO_CODES:
        for c in allowed_characters(iso):
            assert c in tok.characters, (iso, c)
            if c != " ":
                assert c in req
    # a letter absent from the training text is still a unit (required_chars): 'ÿ' is French
    assert "ÿ" in tok.characters
    assert tok.decode(tok.encode("ÿ")) == "ÿ"


def test_unknown_characters_are_named(tok):
    assert tok.missing_characters("привет мир") == list("приветм")
    with pytest.raises(UnknownCharactersError, match=r"'ж' \(U\+0436\)"):
        tok.encode("жук")
    ids = tok.encode("aж", allow_unknown=True)
    assert tok.unk_id in ids


def test_bpe_model(texts, tmp_path):
    tok = Tokenizer(train_tokenizer(texts, tmp_path, vocab_size=300, model_type="bpe"))
    assert tok.vocab_size == 300 and tok.id_to_piece(0) == "<blk>"
    for iso in ISO_CODES:
        for line in SENTENCES[iso]:
            assert tok.decode(tok.encode(line)) == line


def test_temperature_sampling_of_text():
    big = [f"zdanie numer {i} " + "a" * 20 for i in range(1000)]
    small = [f"frase {i} " + "b" * 20 for i in range(10)]
    n_big = sum(len(t) for t in big)
    n_small = sum(len(t) for t in small)
    _, rep = sample_training_text({"pl": big, "pt": small}, 1.0)
    assert rep["pt"]["sampled_share"] == pytest.approx(n_small / (n_big + n_small), abs=0.002)
    _, rep = sample_training_text({"pl": big, "pt": small}, 1e6)
    assert rep["pt"]["sampled_share"] == pytest.approx(0.5, abs=0.01)
    assert rep["pt"]["sentences"] > 10  # the small language is repeated to keep its share
    _, rep = sample_training_text({"pl": big, "pt": small}, 2.0)
    q = n_small**0.5 / (n_small**0.5 + n_big**0.5)
    assert rep["pt"]["sampled_share"] == pytest.approx(q, abs=0.01)
    a, _ = sample_training_text({"pl": big, "pt": small}, 2.0, seed=1)
    b, _ = sample_training_text({"pl": big, "pt": small}, 2.0, seed=1)
    assert a == b
    with pytest.raises(ValueError, match="no non-empty text"):
        sample_training_text({"pl": ["", "  "]}, 1.0)


def test_bad_model_files(tmp_path):
    with pytest.raises(ValueError, match="tokenizer model not found"):
        Tokenizer(tmp_path / "nope.model")
    (tmp_path / "junk.model").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.model: not a SentencePiece model"):
        Tokenizer(tmp_path / "junk.model")
    import sentencepiece as spm

    (tmp_path / "t.txt").write_text("\n".join(SENTENCES["pl"] * 20))
    spm.SentencePieceTrainer.Train(input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "plain"), vocab_size=34, minloglevel=2)
    with pytest.raises(ValueError, match="not the blank '<blk>'"):
        Tokenizer(tmp_path / "plain.model")


def test_cli_from_cuts_and_text(tmp_path, capsys, caplog):
    from just_asr.cli.main import main
    from just_asr.data.mls import prepare_mls

    write_mls_corpus(tmp_path / "corpus", langs=("pl", "de"), splits={"train": 4, "dev": 1, "test": 1}, limited=False)
    prepare_mls(tmp_path / "corpus", tmp_path / "man", splits=("train",), progress=False)
    extra = tmp_path / "fr.txt"
    extra.write_text("\n".join(_texts(300)["fr"]) + "\n", encoding="utf-8")
    rc = main([
        "train-tokenizer", str(tmp_path / "man" / "mls-pl_cuts_train.jsonl.gz"), str(tmp_path / "man" / "mls-de_cuts_train.jsonl.gz"),
        f"fr:{extra}", "--vocab-size", "120", "--out", str(tmp_path / "tok"), "--temperature", "2",
    ])
    assert rc == 0
    assert "tokenizer with 120 units written" in capsys.readouterr().out
    tok = Tokenizer(tmp_path / "tok")
    side = tok.sidecar()
    assert sorted(side["languages"]) == ["de", "fr", "pl"] and side["temperature"] == 2.0
    for iso in ("pl", "de", "fr"):
        for line in SENTENCES[iso]:
            assert tok.decode(tok.encode(line)) == line
    assert main(["train-tokenizer", str(extra), "--vocab-size", "50", "--out", str(tmp_path / "t2")]) == 1
    assert "without a language" in capsys.readouterr().err
    # inputs that are not what they claim: one-line errors naming the file
    (tmp_path / "notman.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "bin.txt").write_bytes("zdanie\n".encode() + b"\xff\xfe\x00\n")
    for arg, message in [(str(tmp_path / "notman.jsonl"), "notman.jsonl: not a lhotse cut manifest"),
                         (f"pl:{tmp_path / 'bin.txt'}", "bin.txt: not UTF-8 text")]:
        assert main(["train-tokenizer", arg, "--vocab-size", "50", "--out", str(tmp_path / "t3")]) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    # an output path inside a file: the command's error names it (no traceback)
    (tmp_path / "afile").write_text("")
    assert main(["train-tokenizer", f"fr:{extra}", "--vocab-size", "50", "--out", str(tmp_path / "afile" / "t")]) == 1
    assert str(tmp_path / "afile") in capsys.readouterr().err
    # --max-chars below 1, and a vocabulary too small for the alphabet: said plainly
    for bad in ("0", "-5"):
        assert main(["train-tokenizer", f"fr:{extra}", "--vocab-size", "120", "--max-chars", bad,
                     "--out", str(tmp_path / "t4")]) == 1
        assert f"max_chars (--max-chars) must be >= 1, got {bad}" in capsys.readouterr().err
    assert main(["train-tokenizer", f"fr:{extra}", "--vocab-size", "20", "--out", str(tmp_path / "t5")]) == 1
    err = capsys.readouterr().err
    assert "a vocabulary of 20 units is too small" in err and "raise --vocab-size to at least" in err
    assert "character_coverage" not in err
    # inputs that hold no text are named (the others still train the tokenizer)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "empty_cuts.jsonl").write_text("")
    with caplog.at_level(logging.WARNING):
        assert main(["train-tokenizer", f"fr:{extra}", f"pl:{tmp_path / 'empty.txt'}", str(tmp_path / "empty_cuts.jsonl"),
                     "--vocab-size", "120", "--out", str(tmp_path / "t6")]) == 0
    assert "empty.txt: the text file holds no text; nothing was taken from it" in caplog.text
    assert "empty_cuts.jsonl: no cut in it has a transcript; nothing was taken from it" in caplog.text
    assert f"{extra}:" not in caplog.text
