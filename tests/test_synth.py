"""Tests of the synthetic MLS-format corpus (just_asr.data.synth, just-asr synth-corpus)."""

from __future__ import annotations

import math
import os
import re
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_CORPUS_COUNTS

from just_asr.data.languages import LANGUAGES, get_language
from just_asr.data.synth import (
    FEMALE_VARIANTS,
    MALE_VARIANTS,
    SPLITS,
    EspeakNotFoundError,
    _plan_speakers,
    build_vocabulary,
    generate_sentence,
    language_train_seconds,
    synthesize_corpus,
)
from just_asr.data.text import allowed_characters, normalize_text

UTT_RE = re.compile(r"^(\d+)_(\d+)_(\d{6})$")
HEADER = (
    " SPEAKER   |   GENDER   | PARTITION  |  MINUTES   |  BOOK ID   |"
    "             TITLE              |            CHAPTER            "
)


def _small(out: Path, **kw):
    """A small build: floors only (counts exact), short utterances, no progress bar."""
    args = dict(hours=0.0, dev_minutes=0.0, test_minutes=0.0, min_train_utts=7, min_eval_utts=2,
                words=(2, 4), speakers=(4, 2, 2), progress=False, jobs=1)
    args.update(kw)
    return synthesize_corpus(out, **args)


def _read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def _metainfo(lang_dir: Path) -> list[list[str]]:
    lines = (lang_dir / "metainfo.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER
    return [[f.strip() for f in line.split("|")] for line in lines[1:]]


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# the tiny corpus (session fixture): layout, lhotse, audio, text, speakers


def test_layout(tiny_corpus_dir: Path, tiny_corpus_langs: list[str]) -> None:
    folders = sorted(p.name for p in tiny_corpus_dir.iterdir())
    assert folders == sorted(get_language(l).folder for l in tiny_corpus_langs)
    assert len(folders) == 8
    for iso in tiny_corpus_langs:
        root = tiny_corpus_dir / get_language(iso).folder
        assert (root / "metainfo.txt").is_file()
        for split in SPLITS:
            rows = _read_tsv(root / split / "transcripts.txt")
            segs = _read_tsv(root / split / "segments.txt")
            assert len(rows) == TINY_CORPUS_COUNTS[split]
            assert [r[0] for r in rows] == [s[0] for s in segs] == sorted(r[0] for r in rows)
            flacs = sorted((root / split / "audio").rglob("*"))
            files = [p for p in flacs if p.is_file()]
            assert len(files) == len(rows)  # nothing else under audio/
            for utt, _text in rows:
                spk, book, _idx = UTT_RE.match(utt).groups()
                assert (root / split / "audio" / spk / book / f"{utt}.flac").is_file()
            for utt, url, start, end in segs:
                assert url.startswith("http://") and url.endswith(".mp3")
                assert re.fullmatch(r"\d+\.\d\d", start) and re.fullmatch(r"\d+\.\d\d", end)
                assert float(end) > float(start)
        ls = root / "train" / "limited_supervision"
        assert (ls / "9hr" / "handles.txt").is_file()
        assert sorted(p.name for p in (ls / "1hr").iterdir()) == [str(i) for i in range(6)]


def test_lhotse_reads_the_corpus(tiny_corpus_dir: Path, tiny_corpus_langs: list[str]) -> None:
    from lhotse.recipes import prepare_mls

    manifests = prepare_mls(tiny_corpus_dir, opus=False, num_jobs=1)
    assert sorted(manifests) == sorted(get_language(l).mls for l in tiny_corpus_langs)
    for iso in tiny_corpus_langs:
        lang = get_language(iso)
        for split in SPLITS:
            recs = manifests[lang.mls][split]["recordings"]
            sups = manifests[lang.mls][split]["supervisions"]
            assert len(recs) == len(sups) == TINY_CORPUS_COUNTS[split]
            segs = {u: (float(s), float(e)) for u, _, s, e in _read_tsv(tiny_corpus_dir / lang.folder / split / "segments.txt")}
            texts = dict(_read_tsv(tiny_corpus_dir / lang.folder / split / "transcripts.txt"))
            for sup in sups:
                assert sup.gender in ("M", "F")
                assert sup.text == texts[sup.id]
                start, end = segs[sup.id]
                assert recs[sup.recording_id].sampling_rate == 16000
                assert recs[sup.recording_id].duration == pytest.approx(end - start, abs=1e-6)


def test_audio_is_16k_mono_flac_with_claimed_durations(tiny_corpus_dir: Path) -> None:
    n = 0
    for segs_path in tiny_corpus_dir.glob("mls_*/*/segments.txt"):
        split_dir = segs_path.parent
        for utt, _url, start, end in _read_tsv(segs_path):
            spk, book, _ = utt.split("_")
            info = sf.info(str(split_dir / "audio" / spk / book / f"{utt}.flac"))
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            # audio is padded to whole 10 ms, so segments.txt's 2-decimal times are exact
            assert info.frames % 160 == 0
            assert info.frames == round((float(end) - float(start)) * 16000)
            audio, _ = sf.read(str(split_dir / "audio" / spk / book / f"{utt}.flac"), dtype="float32")
            assert np.abs(audio).max() > 0.05  # speech, not silence
            n += 1
    assert n == 8 * sum(TINY_CORPUS_COUNTS.values())


def test_transcripts_are_normal_form(tiny_corpus_dir: Path) -> None:
    for lang in LANGUAGES:
        for split in SPLITS:
            for utt, text in _read_tsv(tiny_corpus_dir / lang.folder / split / "transcripts.txt"):
                assert UTT_RE.match(utt)
                assert text and normalize_text(text, lang.iso) == text
                assert set(text) <= allowed_characters(lang.iso), (lang.iso, text)


def test_speakers_disjoint_and_both_genders(tiny_corpus_dir: Path) -> None:
    all_ids: list[set[str]] = []
    for lang in LANGUAGES:
        root = tiny_corpus_dir / lang.folder
        meta = _metainfo(root)
        gender = {}
        for spk, g, partition, minutes, book, title, chapter in meta:
            assert g in ("M", "F") and partition in SPLITS and title and chapter
            assert gender.setdefault(spk, g) == g
        by_split = {}
        for split in SPLITS:
            spks = {u.split("_")[0] for u, _ in _read_tsv(root / split / "transcripts.txt")}
            by_split[split] = spks
            assert {gender[s] for s in spks} == {"M", "F"}, (lang.iso, split)
            # metainfo's partition column agrees with the folder the speaker's audio is in
            assert {r[0] for r in meta if r[2] == split} == spks
        assert not (by_split["train"] & by_split["dev"])
        assert not (by_split["train"] & by_split["test"])
        assert not (by_split["dev"] & by_split["test"])
        all_ids.append(set().union(*by_split.values()))
    # speaker ids are also unique across languages
    assert sum(len(s) for s in all_ids) == len(set().union(*all_ids))


def test_metainfo_minutes_match_audio(tiny_corpus_dir: Path) -> None:
    root = tiny_corpus_dir / "mls_german"
    seconds: Counter[tuple[str, str]] = Counter()
    for split in SPLITS:
        for utt, _url, start, end in _read_tsv(root / split / "segments.txt"):
            spk, book, _ = utt.split("_")
            seconds[(spk, book)] += float(end) - float(start)
    meta = _metainfo(root)
    assert len(meta) == len(seconds)
    for spk, _g, _p, minutes, book, _t, _c in meta:
        assert float(minutes) == pytest.approx(seconds[(spk, book)] / 60, abs=6e-4)


def test_voice_variants_disjoint_between_splits() -> None:
    for lang in LANGUAGES[:3]:
        plan = _plan_speakers(lang, seed=7, counts={"train": 30, "dev": 5, "test": 5})
        variants = {s: {spk.variant for spk in plan[s]} for s in SPLITS}
        assert not (variants["train"] & variants["dev"]) and not (variants["train"] & variants["test"])
        assert not (variants["dev"] & variants["test"])
        voices = [(spk.variant, spk.speed, spk.pitch) for s in SPLITS for spk in plan[s]]
        assert len(voices) == len(set(voices)) == 40
        for s in SPLITS:
            for spk in plan[s]:
                assert spk.variant in (FEMALE_VARIANTS if spk.gender == "F" else MALE_VARIANTS)
            # F, M, F, M...: any two consecutive speakers cover both genders
            assert [spk.gender for spk in plan[s][:2]] == ["F", "M"]


def test_limited_supervision_subsets_of_train(tiny_corpus_dir: Path) -> None:
    for lang in LANGUAGES:
        root = tiny_corpus_dir / lang.folder
        train = {u for u, _ in _read_tsv(root / "train" / "transcripts.txt")}
        ls = root / "train" / "limited_supervision"
        nine = (ls / "9hr" / "handles.txt").read_text().split()
        folds = [(ls / "1hr" / str(i) / "handles.txt").read_text().split() for i in range(6)]
        sets = [set(nine)] + [set(f) for f in folds]
        assert all(sets) and all(s <= train for s in sets)
        assert sum(len(s) for s in sets) == len(set().union(*sets))  # pairwise disjoint
        assert len(nine) == len(set(nine))


# ---------------------------------------------------------------------------------------------
# determinism, amounts, noise, failures, CLI (small builds of their own)


def test_same_seed_same_bytes_regardless_of_jobs_and_different_seed_differs(tmp_path: Path) -> None:
    # 16 train utterances over 2 speakers: blocks of 4 per espeak-ng process (batched); dev/test singly
    kw = dict(langs="pl,it", min_train_utts=16, speakers=(2, 2, 2), batch=4)
    a = _small(tmp_path / "a", seed=5, jobs=1, **kw)
    b = _small(tmp_path / "b", seed=5, jobs=2, **{**kw, "langs": ["polish", "it"]})
    _small(tmp_path / "c", seed=6, jobs=2, **kw)
    assert a.jobs == 1 and b.jobs == 2
    ba, bb, bc = _all_bytes(tmp_path / "a"), _all_bytes(tmp_path / "b"), _all_bytes(tmp_path / "c")
    assert len(ba) > 30 and ba == bb
    assert (tmp_path / "a/mls_polish/train/transcripts.txt").read_bytes() != (
        tmp_path / "c/mls_polish/train/transcripts.txt"
    ).read_bytes()
    flac_a = {v for k, v in ba.items() if k.endswith(".flac")}
    flac_c = {v for k, v in bc.items() if k.endswith(".flac")}
    assert len(flac_a) == len(flac_c) == 2 * 20 and not (flac_a & flac_c)
    # a language's data does not depend on the other languages built with it (but for the size of
    # its limited-supervision set, which follows the smallest language)
    _small(tmp_path / "d", seed=5, jobs=2, **{**kw, "langs": "pl"})
    bd = _all_bytes(tmp_path / "d")
    shared = {k: v for k, v in ba.items() if k.startswith("mls_polish/") and "limited_supervision" not in k}
    assert shared and all(bd[k] == v for k, v in shared.items())
    assert {k for k in bd if "limited_supervision" not in k} == set(shared)


def test_train_amounts_follow_the_imbalance_profile() -> None:
    langs = [get_language(x) for x in ("en", "de", "pl")]
    mls = language_train_seconds(langs, 10.0, "mls")
    assert sum(mls.values()) == pytest.approx(36000.0)
    assert mls["en"] / mls["pl"] == pytest.approx(44659.7 / 103.65)
    sq = language_train_seconds(langs, 10.0, "sqrt")
    assert sq["de"] / sq["pl"] == pytest.approx(math.sqrt(1966.5 / 103.65))
    uni = language_train_seconds(langs, 10.0, "uniform")
    assert uni["en"] == pytest.approx(12000.0) and uni["pl"] == pytest.approx(12000.0)
    with pytest.raises(ValueError, match="imbalance"):
        language_train_seconds(langs, 1.0, "linear")


@pytest.mark.parametrize("imbalance,ratio", [("mls", 1966.5 / 103.65), ("sqrt", math.sqrt(1966.5 / 103.65)), ("uniform", 1.0)])
def test_synthesised_seconds_follow_the_imbalance(tmp_path: Path, imbalance: str, ratio: float) -> None:
    pl_seconds = 30.0
    hours = pl_seconds * (1 + ratio) / 3600
    s = _small(tmp_path, langs="de,pl", hours=hours, imbalance=imbalance, jobs=2, words=(3, 8))
    secs = {l.iso: l.seconds["train"] for l in s.languages}
    targets = {l.iso: l.target_seconds["train"] for l in s.languages}
    assert targets["de"] / targets["pl"] == pytest.approx(ratio)
    for iso in ("de", "pl"):
        # the kept prefix reaches the target and is the shortest that does (utterances are < 8 s)
        assert targets[iso] <= secs[iso] < targets[iso] + 8.0
    assert secs["de"] / secs["pl"] == pytest.approx(ratio, rel=0.3)
    # same dev/test amount in every language: the floors here
    assert all(l.utterances["dev"] == 2 and l.utterances["test"] == 2 for l in s.languages)
    # limited supervision: 9:1 of limited_fraction x the smallest train set, folds of a sixth of 1hr
    smallest = min(secs.values())
    for l in s.languages:
        assert l.limited_seconds["9hr"] >= 0.9 * 0.1 * smallest
        assert l.limited_seconds["1hr"] >= 0.1 * 0.1 * smallest


def test_vocabulary_and_zipf_sampling() -> None:
    vocab = build_vocabulary("pl", size=3000)
    assert len(vocab.words) == len(set(vocab.words)) == 3000
    assert vocab.probs.sum() == pytest.approx(1.0) and (np.diff(vocab.probs) <= 1e-15).all()
    allowed = allowed_characters("pl")
    assert all(set(w) <= allowed and " " not in w for w in vocab.words)
    rng = np.random.default_rng(0)
    counts: Counter[str] = Counter()
    for _ in range(2000):
        counts.update(generate_sentence(vocab, rng, min_words=5, max_words=5, number_prob=0.0).split())
    total = sum(counts.values())
    assert total == 10000
    top = vocab.words[0]
    # empirical frequency of the most frequent word matches its probability (binomial 5 sigma)
    sigma = math.sqrt(vocab.probs[0] * (1 - vocab.probs[0]) / total)
    assert abs(counts[top] / total - vocab.probs[0]) < 5 * sigma
    assert len(counts) > 1000  # a real vocabulary, not a handful of words
    fr = build_vocabulary("fr", size=2000)
    sentences = [generate_sentence(fr, rng, min_words=8, max_words=8, number_prob=0.0) for _ in range(300)]
    for w in " ".join(sentences).split():
        if "'" in w and w.split("'")[0] in ("l", "qu", "d"):
            assert w.split("'", 1)[1][0] in "aeiouyhàâéèêëîïôûùœ"  # elision only before a vowel or h
    assert all(w not in {"l", "qu", "d"} for w in " ".join(sentences).split())


def test_numbers_appear_spelled_out() -> None:
    vocab = build_vocabulary("en", size=2000)
    rng = np.random.default_rng(3)
    texts = [generate_sentence(vocab, rng, min_words=3, max_words=3, number_prob=1.0) for _ in range(50)]
    assert all(len(t.split()) > 3 for t in texts)  # every one got a number, spelled with >= 1 word
    assert not any(c.isdigit() for t in texts for c in t)


def test_noise_at_the_requested_snr(tmp_path: Path) -> None:
    clean = _small(tmp_path / "clean", langs="es", seed=3)
    noisy = _small(tmp_path / "noisy", langs="es", seed=3, noise_snr="10,10")
    assert clean.total_seconds == noisy.total_seconds
    snrs = []
    for p in sorted((tmp_path / "clean" / "mls_spanish" / "train" / "audio").rglob("*.flac")):
        x, _ = sf.read(str(p), dtype="float64")
        y, _ = sf.read(str(tmp_path / "noisy" / p.relative_to(tmp_path / "clean")), dtype="float64")
        snrs.append(10 * math.log10(np.mean(x**2) / np.mean((y - x) ** 2)))
    assert len(snrs) == 7
    assert all(abs(s - 10.0) < 0.5 for s in snrs), snrs
    # different utterances get different noise
    assert len({round(s, 4) for s in snrs}) == len(snrs)


def test_failed_utterances_are_reported_and_skipped(tmp_path: Path) -> None:
    real = Path("/usr/bin/espeak-ng")
    if not real.exists():
        import shutil

        real = Path(shutil.which("espeak-ng"))
    fake = tmp_path / "flaky-espeak"
    # refuses batches (SSML, -m), so blocks fall back to one process per utterance; fails whenever
    # the text (last argument) has a byte length divisible by 3
    fake.write_text(
        "#!/bin/bash\nexport LC_ALL=C\ntext=\"${@: -1}\"\n"
        "for a in \"$@\"; do [ \"$a\" = -m ] && { echo 'no batches' >&2; exit 4; }; done\n"
        "if [ $(( ${#text} % 3 )) -eq 0 ]; then echo 'synthetic failure' >&2; exit 3; fi\n"
        f'exec "{real}" "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    # 8 train utterances over 2 speakers: blocks of 2 (batched), which the fake refuses
    s = _small(tmp_path / "out", langs="nl", seed=11, espeak_binary=str(fake), min_train_utts=8,
               speakers=(2, 2, 2), batch=2)
    assert s.failures, "the flaky espeak-ng should have failed on some utterances"
    root = tmp_path / "out" / "mls_dutch"
    for f in s.failures:
        assert len(f.text.encode("utf-8")) % 3 == 0
        assert "status 3" in f.message and "synthetic failure" in f.message
        assert not list(root.rglob(f"{f.utt_id}.flac"))
    for split in SPLITS:
        rows = _read_tsv(root / split / "transcripts.txt")
        assert len(rows) == (8 if split == "train" else 2)  # floors still reached
        assert all(len(t.encode("utf-8")) % 3 != 0 for _, t in rows)
        assert not ({u for u, _ in rows} & {f.utt_id for f in s.failures})
    assert s.languages[0].failed == len(s.failures)


def test_missing_espeak_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EspeakNotFoundError, match="apt-get install espeak-ng"):
        _small(tmp_path, langs="pl", espeak_binary=str(tmp_path / "no-such-espeak-ng"))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_train_utts"):
        _small(tmp_path, langs="pl", min_train_utts=3)
    with pytest.raises(ValueError, match="unknown MLS language"):
        _small(tmp_path, langs="pl,xx")
    with pytest.raises(ValueError, match="noise_snr"):
        _small(tmp_path, langs="pl", noise_snr="30")


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"hours": math.inf}, r"hours \(--hours\) must be a finite number in \[0, 100,000\], got inf"),
        ({"hours": math.nan}, r"hours \(--hours\) must be a finite number .*got nan"),
        ({"hours": -1.0}, r"hours \(--hours\) must be a finite number in \[0, "),
        ({"hours": 1e9}, r"hours \(--hours\) must be a finite number in \[0, 100,000\]"),
        ({"dev_minutes": math.inf}, r"dev_minutes \(--dev-minutes\) must be a finite number in \[0, 6,000,000\], got inf"),
        ({"test_minutes": math.nan}, r"test_minutes \(--test-minutes\) must be a finite number"),
        ({"number_prob": 5.0}, r"number_prob \(--number-prob\) must be a finite number in \[0, 1\], got 5.0"),
        ({"number_prob": -1.0}, r"number_prob \(--number-prob\) must be a finite number in \[0, 1\], got -1.0"),
        ({"number_prob": math.nan}, r"number_prob \(--number-prob\)"),
        ({"zipf_exponent": math.nan}, r"zipf_exponent \(--zipf-exponent\) must be a finite number in \[-10, 10\], got nan"),
        ({"zipf_exponent": 1000.0}, r"zipf_exponent \(--zipf-exponent\) must be a finite number in \[-10, 10\]"),
        ({"limited_fraction": math.nan}, r"limited_fraction \(--limited-fraction\) must be a finite number in \(0, 1\]"),
        ({"noise_snr": "nan,nan"}, r"noise_snr \(--noise-snr, dB\) values must be finite numbers between -100 and 100, got nan,nan"),
        ({"noise_snr": (0.0, math.inf)}, r"noise_snr \(--noise-snr, dB\) values must be finite .*got 0,inf"),
        ({"noise_snr": "-1e308,1e308"}, r"noise_snr \(--noise-snr, dB\) values must be finite numbers between -100 and 100"),
        ({"noise_snr": "30,10"}, r"noise_snr \(--noise-snr, dB\): MIN 30.0 is larger than MAX 10.0"),
    ],
)
def test_real_valued_arguments_are_checked_before_synthesis(tmp_path: Path, kw: dict, match: str) -> None:
    # a missing espeak-ng would raise EspeakNotFoundError: the checks must come first
    with pytest.raises(ValueError, match=match):
        _small(tmp_path / "out", langs="pl", espeak_binary=str(tmp_path / "no-such-espeak-ng"), **kw)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("--hours", "inf", "hours (--hours) must be a finite number in [0, 100,000], got inf"),
        ("--hours", "nan", "hours (--hours) must be a finite number in [0, 100,000], got nan"),
        ("--dev-minutes", "inf", "dev_minutes (--dev-minutes) must be a finite number"),
        ("--noise-snr", "nan,nan", "noise_snr (--noise-snr, dB) values must be finite numbers"),
        ("--noise-snr", "0,inf", "noise_snr (--noise-snr, dB) values must be finite numbers"),
        ("--zipf-exponent", "nan", "zipf_exponent (--zipf-exponent) must be a finite number"),
        ("--number-prob", "5", "number_prob (--number-prob) must be a finite number in [0, 1], got 5.0"),
        ("--number-prob", "-1", "number_prob (--number-prob) must be a finite number in [0, 1], got -1.0"),
    ],
)
def test_cli_refuses_bad_real_valued_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str, match: str
) -> None:
    from just_asr.cli.main import main

    out = tmp_path / "corpus"
    assert main(["synth-corpus", str(out), "--langs", "pl", "--jobs", "1", "--no-progress", option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"just-asr synth-corpus: error: {match}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_bad_vocabulary_leaves_an_existing_corpus_alone(tmp_path: Path) -> None:
    old = tmp_path / "mls_polish" / "train" / "transcripts.txt"
    old.parent.mkdir(parents=True)
    old.write_text("old\n")
    with pytest.raises(ValueError, match="wordfreq has only .* usable polish words; asked for 1000000000"):
        _small(tmp_path, langs="pl", vocab_size=10**9, overwrite=True)
    assert old.read_text() == "old\n"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from just_asr.cli.main import main

    out = tmp_path / "corpus"
    argv = ["synth-corpus", str(out), "--hours", "0", "--langs", "pl", "--dev-minutes", "0", "--test-minutes", "0",
            "--min-utts-per-lang", "7", "--min-eval-utts", "2", "--words", "2,3", "--speakers", "2,2,2",
            "--jobs", "1", "--batch", "2", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mls_polish" in printed and "real time" in printed
    assert len((out / "mls_polish" / "train" / "transcripts.txt").read_text().splitlines()) == 7
    # an existing corpus is not overwritten silently
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--seed", "1"]) == 0


def test_tiny_corpus_summary(tiny_corpus_summary) -> None:
    s = tiny_corpus_summary
    assert [l.iso for l in s.languages] == [l.iso for l in LANGUAGES]
    assert not s.failures
    for l in s.languages:
        assert l.utterances == TINY_CORPUS_COUNTS
        assert l.speakers == {"train": 4, "dev": 2, "test": 2}
    assert s.total_seconds == pytest.approx(sum(sum(l.seconds.values()) for l in s.languages)) and s.total_seconds > 0
    assert os.path.isdir(s.out_dir)


def test_voice_variants_are_checked_against_espeak(tmp_path: Path) -> None:
    from just_asr.data.synth import EspeakError, installed_variants

    installed = installed_variants()
    assert all(installed[v] == "F" for v in FEMALE_VARIANTS)
    assert all(installed[v] == "M" for v in MALE_VARIANTS)
    # espeak-ng silently ignores unknown variants, so an install without them must be refused
    fake = tmp_path / "bare-espeak"
    fake.write_text("#!/bin/bash\necho 'Pty Language       Age/Gender VoiceName          File                 Other Languages'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    assert installed_variants(str(fake)) == {}
    with pytest.raises(EspeakError, match="voice variants"):
        _small(tmp_path / "out", langs="pl", espeak_binary=str(fake))


def test_batched_synthesis_matches_one_process_per_sentence() -> None:
    from just_asr.data.synth import synthesize_wave, synthesize_waves

    vocab = build_vocabulary("de", size=2000)
    rng = np.random.default_rng(5)
    texts = [generate_sentence(vocab, rng, min_words=2, max_words=14, number_prob=0.3) for _ in range(6)]
    batched = synthesize_waves(texts, "de+f2", speed=180, pitch=60)
    single = [synthesize_wave(t, "de+f2", speed=180, pitch=60) for t in texts]
    assert len(batched) == len(texts)
    for b, s in zip(batched, single):
        assert b.dtype == np.float32 and b.ndim == 1
        # the same sentence: durations agree up to the silence margins kept around each cut
        assert abs(b.size - s.size) / 16000 < 0.3, (b.size / 16000, s.size / 16000)
        # and it is speech from start to end: the loud part spans most of the cut
        loud = np.nonzero(np.abs(b) > 0.01)[0]
        assert loud[0] / 16000 < 0.2 and (b.size - loud[-1]) / 16000 < 0.6
    with pytest.raises(ValueError, match="must not contain"):
        synthesize_waves(["a <b>"], "de")
