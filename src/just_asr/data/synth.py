"""Build a small corpus in Multilingual LibriSpeech's exact on-disk format, spoken by espeak-ng.

MLS cannot be downloaded everywhere, so this module writes a stand-in with the same layout,
file formats and imbalance, in all eight MLS languages::

    OUT_DIR/mls_<english|german|...>/
        metainfo.txt                                  # SPEAKER | GENDER | PARTITION | MINUTES | BOOK ID | TITLE | CHAPTER
        {train,dev,test}/transcripts.txt              # <spk>_<book>_<idx>\\t<normalised text>
        {train,dev,test}/segments.txt                 # <utt>\\t<source url>\\t<start>\\t<end>
        {train,dev,test}/audio/<spk>/<book>/<spk>_<book>_<idx>.flac   # 16 kHz mono PCM_16
        train/limited_supervision/9hr/handles.txt     # utt ids, one per line
        train/limited_supervision/1hr/{0..5}/handles.txt

How the content is made:

* **Text**: words drawn with probability proportional to their corpus frequency (Zipf) from the
  language's ``wordfreq`` list (``vocab_size`` most frequent words that are already in MLS normal
  form and only use the language's alphabet), with an occasional number written in digits that
  :func:`just_asr.data.text.normalize_text` spells out with ``num2words``. French and Italian
  elided articles (``l``, ``qu``, ``dell``...) are glued to a following vowel-initial word
  (``l'homme``), as MLS writes them.
* **Speakers**: an espeak-ng voice variant (female or male, from ``espeak-ng --voices=variant``)
  with its own speaking rate and pitch. Each language shuffles the variants and gives dev and test
  their own variants, so the three splits share no speaker, and every split alternates female and
  male speakers in blocks, so every split holds both genders.
* **Amounts**: train seconds per language follow MLS's train hours (``imbalance="mls"``), their
  square root (``"sqrt"``) or are equal (``"uniform"``); dev and test get the same number of
  minutes in every language (as MLS's are roughly balanced). Each (language, split) keeps the
  shortest prefix of its utterance sequence that reaches both its seconds target and its floor in
  utterances; utterances are synthesised in parallel rounds until that prefix is known.
* **Determinism**: every random choice about utterance ``i`` of (language, split) comes from a
  generator seeded with ``(seed, purpose, language, split, i)``. Speakers take turns reading blocks
  of consecutive utterances, and each block is spoken by one fresh espeak-ng process (starting
  espeak-ng costs about as much as a short sentence; :func:`synthesize_waves` cuts the block's
  audio apart at SSML breaks). espeak-ng carries state from one sentence to the next within a
  process, so block sizes depend only on the arguments (``batch``, amounts, speakers), never on
  ``jobs``. Workers only write the files of the block they are given. So the same arguments give
  byte-identical files whatever ``jobs`` is, given the same espeak-ng, wordfreq and num2words
  versions. A language's data does not depend on which other languages are built, except for the
  size of its limited-supervision set.
* **Segments**: MLS cuts each utterance out of a LibriVox chapter mp3. Here each (speaker, book)
  is one imaginary chapter in which the utterances follow each other with a 0.5 s gap; the URL
  (under the reserved ``.invalid`` domain, so it can never resolve) names that chapter, and
  ``end - start`` equals the FLAC's duration exactly (audio is padded to a whole number of 10 ms).
* **Limited supervision**: as in MLS, the 9hr set and the six 1hr folds are disjoint subsets of
  train of the same size in every language (MLS: 10 h, about a tenth of Polish's train set); here
  the total is ``limited_fraction`` of the smallest language's train seconds, split 9:1, the 1hr
  part in six equal folds, each fold and the 9hr set holding at least one utterance.

If espeak-ng fails on an utterance it is reported in the summary and skipped (its utterance id is
not used, leaving a gap in that speaker and book's indices); a missing espeak-ng binary raises
:class:`EspeakNotFoundError` naming the Debian package to install.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import subprocess
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from just_asr.data.languages import LANGUAGES, Language, get_language, resolve_languages
from just_asr.data.text import alphabet, normalize_text

__all__ = [
    "CorpusSummary",
    "EspeakError",
    "EspeakNotFoundError",
    "LanguageSummary",
    "SPLITS",
    "Speaker",
    "UtteranceFailure",
    "build_vocabulary",
    "find_espeak",
    "generate_sentence",
    "installed_variants",
    "language_train_seconds",
    "synthesize_corpus",
    "synthesize_wave",
    "synthesize_waves",
    "DEMO_HOURS",
]

SPLITS: tuple[str, ...] = ("train", "dev", "test")
SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
#: audio is zero-padded to a multiple of this many samples (10 ms), so 2-decimal times are exact
_PAD_TO = SAMPLE_RATE // 100
#: gap between consecutive utterances of the imaginary source chapter in segments.txt
_CHAPTER_GAP_CS = 50

#: default total train hours: MLS-imbalanced and, with the per-language floor, built in well
#: under two minutes on two cores (see BENCHMARKS.md)
DEMO_HOURS = 2.0

#: espeak-ng voice variants (file names under ``espeak-ng-data/voices/!v``) used as speakers;
#: robot, whisper and novelty voices are left out
FEMALE_VARIANTS: tuple[str, ...] = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "aunty", "belinda", "linda",
    "steph", "steph2", "steph3", "anika", "grandma",
)
MALE_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "adam", "Alex", "Andy", "antonio", "benjamin",
    "boris", "caleb", "david", "Denis", "Diogo", "ed", "edward", "Gene", "gustave", "Henrique",
    "Hugo", "iven", "john", "Lee", "marcelo", "Marco", "Mario", "max", "Michael", "michel",
    "miguel", "Mike", "pablo", "paul", "pedro", "quincy", "rob", "robert", "travis", "victor",
    "norbert", "sandro", "shelby",
)
#: speaking rate (espeak-ng ``-s``, words per minute) and pitch (``-p``, 0-99) ranges of speakers
SPEED_RANGE = (145, 195)
PITCH_RANGE = (30, 70)

#: one-letter tokens that are real words; wordfreq also lists stray letters
_ONE_LETTER_WORDS = {
    "en": "ai",
    "de": "",
    "nl": "u",
    "fr": "aày",
    "es": "aoyeu",
    "it": "aeèio",
    "pt": "aoeéà",
    "pl": "aiouwz",
}
#: elided forms that MLS writes glued to the next word with an apostrophe (l'homme, dell'anno)
_ELISIONS = {
    "fr": frozenset({"l", "d", "c", "qu", "j", "m", "n", "s", "t", "jusqu", "lorsqu", "puisqu", "quoiqu"}),
    "it": frozenset({"l", "d", "c", "dell", "nell", "all", "dall", "sull", "quell"}),
}
_VOWELS = set("aeiouyæœ")

# seeding purposes (first entropy word after the seed)
_P_TEXT, _P_NOISE, _P_SPEAKERS, _P_BOOK, _P_LIMITED = 1, 2, 3, 4, 5


class EspeakError(RuntimeError):
    """espeak-ng could not synthesise one utterance."""


class EspeakNotFoundError(RuntimeError):
    """The espeak-ng program is not installed."""


# --------------------------------------------------------------------------------------------
# espeak-ng


def find_espeak(binary: str = "espeak-ng") -> str:
    """Return the path of the espeak-ng program, or raise :class:`EspeakNotFoundError`."""
    path = shutil.which(binary)
    if path is None:
        raise EspeakNotFoundError(
            f"espeak-ng program {binary!r} not found on PATH; the synthetic MLS corpus is spoken by "
            "espeak-ng: install the Debian/Ubuntu package 'espeak-ng' (sudo apt-get install espeak-ng)"
        )
    return path


def installed_variants(binary: str = "espeak-ng") -> dict[str, str]:
    """Voice variants espeak-ng has installed: file name (as used in ``-v pl+<name>``) -> ``"F"``/``"M"``.

    espeak-ng silently ignores an unknown variant, so the generator checks its variant lists
    against this before using them.
    """
    exe = find_espeak(binary)
    proc = subprocess.run([exe, "--voices=variant"], capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise EspeakError(f"'{exe} --voices=variant' exited with status {proc.returncode}")
    out: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines()[1:]:
        cols = line.split()
        files = [c for c in cols if c.startswith("!v/")]
        genders = [c.rsplit("/", 1)[-1] for c in cols if "/" in c and not c.startswith("!v/")]
        if files and genders and genders[0] in ("F", "M"):
            out[files[0][3:]] = genders[0]
    return out


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Decode espeak-ng's 16-bit mono WAV output -> (samples int16 (N,), sample rate).

    With ``--stdout`` espeak-ng streams the file, so the RIFF and data sizes are placeholders;
    everything after the data chunk header is taken as samples.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EspeakError(f"espeak-ng did not write a WAV file ({len(data)} bytes of output)")
    pos = 12
    rate = None
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk == b"fmt ":
            channels = int.from_bytes(data[body + 2 : body + 4], "little")
            rate = int.from_bytes(data[body + 4 : body + 8], "little")
            bits = int.from_bytes(data[body + 14 : body + 16], "little")
            if channels != 1 or bits != 16:
                raise EspeakError(f"espeak-ng wrote {channels} channel(s) of {bits}-bit audio; expected mono 16-bit")
        elif chunk == b"data":
            if rate is None:
                raise EspeakError("espeak-ng WAV output has no fmt chunk before its data")
            payload = data[body:]
            payload = payload[: len(payload) // 2 * 2]
            return np.frombuffer(payload, dtype="<i2"), rate
        pos = body + size + (size & 1)
    raise EspeakError("espeak-ng WAV output has no data chunk")


def _run_espeak(args: list[str], text: str, binary: str, timeout: float) -> tuple[np.ndarray, int]:
    """Run espeak-ng on ``text`` -> (int16 samples (N,), sample rate); raises EspeakError on failure."""
    cmd = [binary, *args, "--stdout", text]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        find_espeak(binary)  # raises the install hint
        raise
    except subprocess.TimeoutExpired as e:
        raise EspeakError(f"espeak-ng timed out after {timeout:.0f} s") from e
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise EspeakError(f"espeak-ng exited with status {proc.returncode}: {msg[-1] if msg else 'no message'}")
    samples, rate = _parse_wav(proc.stdout)
    if samples.size == 0:
        raise EspeakError("espeak-ng produced no audio")
    return samples, rate


def _to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """int16 samples ``(N,)`` at ``rate`` -> float32 ``(M,)`` at 16 kHz in [-1, 1] (resample_poly, deterministic)."""
    from scipy.signal import resample_poly

    x = samples.astype(np.float64) / 32768.0
    if rate != SAMPLE_RATE:
        g = math.gcd(SAMPLE_RATE, rate)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g)
    return x.astype(np.float32)


def synthesize_wave(
    text: str,
    voice: str,
    *,
    speed: int = 175,
    pitch: int = 50,
    binary: str = "espeak-ng",
    timeout: float = 120.0,
) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return float32 samples ``(N,)`` at 16 kHz in [-1, 1].

    ``voice`` is an espeak-ng voice, optionally with a variant (``"pl+f3"``). The 22050 Hz output is
    resampled with ``scipy.signal.resample_poly`` (320/441), which is deterministic. Raises
    :class:`EspeakError` when espeak-ng fails or produces no audio.
    """
    args = ["-v", voice, "-s", str(int(speed)), "-p", str(int(pitch))]
    return _to_16k(*_run_espeak(args, text, binary, timeout))


#: silence espeak-ng is asked to put after each sentence of a batch, and the shortest quiet run
#: (|sample| <= _QUIET) taken as such a break; without punctuation a sentence has no pause that long
_BREAK_MS = 2000
_MIN_BREAK_S = 1.0
_QUIET = 2
#: silence kept before and after each sentence cut out of a batch (espeak-ng alone gives ~0.01 s / ~0.2 s)
_LEAD_S, _TRAIL_S = 0.05, 0.2


def synthesize_waves(
    texts: Sequence[str],
    voice: str,
    *,
    speed: int = 175,
    pitch: int = 50,
    binary: str = "espeak-ng",
    timeout: float = 300.0,
) -> list[np.ndarray]:
    """Speak several sentences with one espeak-ng process; float32 ``(N_k,)`` at 16 kHz per sentence.

    Starting espeak-ng costs about as much as speaking a short sentence, so a batch saves most of
    it. The sentences are sent as SSML with a 2 s break after each and cut apart at those breaks:
    the audio between breaks, with 0.05 s of silence before and 0.2 s after. Raises
    :class:`EspeakError` when espeak-ng fails or the breaks found do not match the sentences (then
    speak them one by one with :func:`synthesize_wave`). Texts must be plain words (MLS normal
    form), which need no XML escaping.
    """
    if any(c in t for t in texts for c in "<>&"):
        raise ValueError("texts for a batch must not contain '<', '>' or '&'")
    ssml = "<speak>" + "".join(f'{t}<break time="{_BREAK_MS}ms"/>' for t in texts) + "</speak>"
    args = ["-m", "-v", voice, "-s", str(int(speed)), "-p", str(int(pitch))]
    samples, rate = _run_espeak(args, ssml, binary, timeout)
    quiet = np.abs(samples.astype(np.int32)) <= _QUIET
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    long = (ends - starts) >= int(_MIN_BREAK_S * rate)
    starts, ends = starts[long], ends[long]
    if len(starts) != len(texts) or (len(starts) and starts[0] == 0):
        raise EspeakError(f"found {len(starts)} breaks in the batch audio for {len(texts)} sentences")
    lead, trail = int(_LEAD_S * rate), int(_TRAIL_S * rate)
    out = []
    prev_end = 0
    for s, e in zip(starts, ends):
        out.append(_to_16k(samples[max(prev_end - lead, 0) : s + trail], rate))
        prev_end = e
    return out


# --------------------------------------------------------------------------------------------
# text


@dataclass(frozen=True)
class Vocabulary:
    """A language's sampling vocabulary: ``words`` (V,) with probabilities ``probs`` (V,) summing to 1."""

    iso: str
    words: tuple[str, ...]
    probs: np.ndarray
    #: indices of words that may follow an elided article (start with a vowel or h)
    vowel_initial: np.ndarray
    vowel_probs: np.ndarray


def _is_vowel(ch: str) -> bool:
    base = unicodedata.normalize("NFKD", ch)[0]
    return base in _VOWELS


def build_vocabulary(lang: str | Language, size: int = 5000, exponent: float = 1.0) -> Vocabulary:
    """The ``size`` most frequent ``wordfreq`` words of ``lang`` usable in MLS normal form.

    A word is kept when it is unchanged by :func:`normalize_text` (so no digits, capitals or
    punctuation), uses only the language's letters plus in-word apostrophes/hyphens, is not a stray
    one-letter token, and (two letters or more) has a vowel (drops abbreviations like ``"km"``).
    Word ``w`` is drawn with probability proportional to ``frequency(w) ** exponent``.
    """
    import wordfreq

    language = lang if isinstance(lang, Language) else get_language(lang)
    if size < 10:
        raise ValueError(f"vocabulary size must be at least 10, got {size}")
    letters = set(alphabet(language))
    one_letter = set(_ONE_LETTER_WORDS[language.iso])
    elisions = _ELISIONS.get(language.iso, frozenset())
    words: list[str] = []
    freqs: list[float] = []
    for bucket, bucket_words in enumerate(wordfreq.get_frequency_list(language.iso)):
        for w in bucket_words:
            if len(words) >= size:
                break
            if w in elisions:
                pass
            elif len(w) == 1:
                if w not in one_letter:
                    continue
            elif not any(_is_vowel(c) for c in w if c in letters):
                continue
            if not all(c in letters or c in "'-" for c in w) or normalize_text(w, language) != w:
                continue
            words.append(w)
            freqs.append(10.0 ** (-bucket / 100.0))
        if len(words) >= size:
            break
    if len(words) < size:
        raise ValueError(f"wordfreq has only {len(words)} usable {language.mls} words; asked for {size}")
    weights = np.asarray(freqs, dtype=np.float64) ** exponent
    probs = weights / weights.sum()
    vowel_idx = np.array(
        [i for i, w in enumerate(words) if w not in elisions and "'" not in w and (_is_vowel(w[0]) or w[0] == "h")], dtype=np.int64
    )
    vprobs = probs[vowel_idx] / probs[vowel_idx].sum()
    return Vocabulary(language.iso, tuple(words), probs, vowel_idx, vprobs)


def _random_number(rng: np.random.Generator) -> str:
    """A number as a book would write it in digits: mostly small, sometimes a year or a large one."""
    kind = rng.random()
    if kind < 0.6:
        return str(int(rng.integers(1, 100)))
    if kind < 0.8:
        return str(int(rng.integers(1500, 2025)))
    return str(int(rng.integers(100, 100000)))


def generate_sentence(
    vocab: Vocabulary,
    rng: np.random.Generator,
    *,
    min_words: int,
    max_words: int,
    number_prob: float,
) -> str:
    """One sentence in MLS normal form of ``min_words..max_words`` vocabulary words.

    With probability ``number_prob`` a number written in digits is inserted at a random position and
    spelled out by :func:`normalize_text` (so the sentence may be longer than ``max_words``).
    """
    n = int(rng.integers(min_words, max_words + 1))
    elisions = _ELISIONS.get(vocab.iso, frozenset())
    idx = rng.choice(len(vocab.words), size=n, p=vocab.probs)
    tokens: list[str] = []
    for i in idx:
        w = vocab.words[int(i)]
        if w in elisions:
            nxt = vocab.words[int(vocab.vowel_initial[rng.choice(len(vocab.vowel_initial), p=vocab.vowel_probs)])]
            w = f"{w}'{nxt}"
        tokens.append(w)
    if rng.random() < number_prob:
        tokens.insert(int(rng.integers(0, len(tokens) + 1)), _random_number(rng))
    return normalize_text(" ".join(tokens), vocab.iso)


# --------------------------------------------------------------------------------------------
# plan


@dataclass(frozen=True)
class Speaker:
    """One synthetic reader: an espeak-ng variant at a speaking rate and pitch."""

    speaker_id: int
    gender: str  #: "F" or "M"
    split: str
    variant: str
    speed: int  #: espeak-ng -s (words per minute)
    pitch: int  #: espeak-ng -p (0-99)
    books: tuple[int, ...]


@dataclass(frozen=True)
class UtteranceFailure:
    """An utterance espeak-ng could not synthesise; it is skipped."""

    lang: str
    split: str
    utt_id: str
    text: str
    message: str


@dataclass
class LanguageSummary:
    """What was written for one language: utterances, seconds and speakers per split."""

    iso: str
    folder: str
    utterances: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    speakers: dict[str, int] = field(default_factory=dict)
    target_seconds: dict[str, float] = field(default_factory=dict)
    limited_seconds: dict[str, float] = field(default_factory=dict)  #: "9hr" and "1hr" (all folds)
    failed: int = 0
    #: wall seconds workers spent on this language's utterances (including those discarded past a cut)
    worker_seconds: float = 0.0
    #: seconds of audio synthesised for this language (including those discarded past a cut)
    synthesized_seconds: float = 0.0

    @property
    def core_realtime_factor(self) -> float:
        """Audio seconds synthesised per second of one worker's time (speed of one core)."""
        return self.synthesized_seconds / self.worker_seconds if self.worker_seconds > 0 else float("inf")


@dataclass
class CorpusSummary:
    """Result of :func:`synthesize_corpus`."""

    out_dir: Path
    languages: list[LanguageSummary]
    failures: list[UtteranceFailure]
    wall_seconds: float
    jobs: int
    synthesized: int  #: utterances synthesised, including those past a split's cut and discarded

    @property
    def total_seconds(self) -> float:
        return sum(sum(l.seconds.values()) for l in self.languages)

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio kept per second of wall-clock time."""
        return self.total_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    def table(self) -> str:
        """A plain-text per-language table (utterances and minutes per split)."""
        head = f"{'lang':<5} {'folder':<16} " + " ".join(f"{s + ' utts':>10} {s + ' min':>9}" for s in SPLITS)
        head += f" {'spk t/d/t':>10} {'failed':>6}"
        lines = [head, "-" * len(head)]
        for l in self.languages:
            row = f"{l.iso:<5} {l.folder:<16} " + " ".join(
                f"{l.utterances.get(s, 0):>10d} {l.seconds.get(s, 0.0) / 60:>9.2f}" for s in SPLITS
            )
            spk = "/".join(str(l.speakers.get(s, 0)) for s in SPLITS)
            lines.append(row + f" {spk:>10} {l.failed:>6d}")
        tot = f"{'all':<5} {'':<16} " + " ".join(
            f"{sum(l.utterances.get(s, 0) for l in self.languages):>10d} "
            f"{sum(l.seconds.get(s, 0.0) for l in self.languages) / 60:>9.2f}"
            for s in SPLITS
        )
        lines.append("-" * len(head))
        lines.append(tot + f" {'':>10} {len(self.failures):>6d}")
        lines.append(
            f"{self.total_seconds / 3600:.3f} h of audio in {self.wall_seconds:.1f} s with {self.jobs} job(s): "
            f"{self.realtime_factor:.0f}x real time"
        )
        return "\n".join(lines)


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(e) for e in entropy]))


def _lang_index(language: Language) -> int:
    return [l.iso for l in LANGUAGES].index(language.iso)


def language_train_seconds(
    languages: Sequence[Language], hours: float, imbalance: str
) -> dict[str, float]:
    """Train-seconds target per language (ISO -> seconds) for ``hours`` of train audio in total.

    ``imbalance``: ``"mls"`` (proportional to MLS's train hours), ``"sqrt"`` (to their square root)
    or ``"uniform"`` (equal).
    """
    exponents = {"mls": 1.0, "sqrt": 0.5, "uniform": 0.0}
    if imbalance not in exponents:
        raise ValueError(f"imbalance must be one of {sorted(exponents)}, got {imbalance!r}")
    if not (math.isfinite(hours) and hours >= 0):
        raise ValueError(f"hours must be a finite number >= 0, got {hours}")
    w = {l.iso: l.train_hours ** exponents[imbalance] for l in languages}
    total = sum(w.values())
    return {iso: hours * 3600.0 * v / total for iso, v in w.items()}


def _plan_speakers(
    language: Language,
    seed: int,
    counts: dict[str, int],
    female: Sequence[str] = FEMALE_VARIANTS,
    male: Sequence[str] = MALE_VARIANTS,
) -> dict[str, list[Speaker]]:
    """Speakers per split, with voice variants disjoint between splits, alternating F, M, F, M...

    ``female``/``male``: the variants to draw from (at least 3 each: dev, test and train get their own).
    """
    rng = _rng(seed, _P_SPEAKERS, _lang_index(language))
    pools: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for gender, variants in (("F", female), ("M", male)):
        if len(variants) < 3:
            raise ValueError(f"need at least 3 {gender} voice variants (one each for train, dev, test), got {list(variants)}")
        order = [variants[int(i)] for i in rng.permutation(len(variants))]
        need = {s: (counts[s] + (1 if gender == "F" else 0)) // 2 for s in SPLITS}
        # dev and test get their own variants (at most a quarter of the list each); train the rest
        start = 0
        for s in ("dev", "test"):
            k = max(1, min(need[s], len(order) // 4))
            pools[s][gender] = order[start : start + k]
            start += k
        pools["train"][gender] = order[start:]
    base = 1000 + 10000 * _lang_index(language)  # speaker ids never collide across languages
    ids = (base + rng.permutation(9000)).tolist()
    book_ids = (base + rng.permutation(9000)).tolist()
    used: set[tuple[str, int, int]] = set()
    out: dict[str, list[Speaker]] = {}
    for s in SPLITS:
        speakers = []
        for j in range(counts[s]):
            gender = "F" if j % 2 == 0 else "M"
            pool = pools[s][gender]
            variant = pool[(j // 2) % len(pool)]
            while True:
                speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
                pitch = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
                if (variant, speed, pitch) not in used:
                    used.add((variant, speed, pitch))
                    break
            nb = int(rng.integers(1, 4))
            books = tuple(book_ids.pop() for _ in range(nb))
            speakers.append(Speaker(ids.pop(), gender, s, variant, speed, pitch, books))
        out[s] = speakers
    return out


@dataclass(frozen=True)
class _Utt:
    """Everything needed to synthesise one utterance (picklable, sent to workers)."""

    lang: str
    split: str
    index: int
    utt_id: str
    path: str
    text: str
    voice: str
    speed: int
    pitch: int
    snr_db: float | None
    noise_seed: tuple[int, ...]
    binary: str


def _utt_location(speakers: list[Speaker], i: int, group: int) -> tuple[Speaker, int, int]:
    """Utterance ``i`` of a split -> (speaker, book id, index within that speaker's book).

    Speakers take turns reading blocks of ``group`` consecutive utterances (one espeak-ng process
    per block): utterance ``i`` is in block ``i // group``, read by speaker ``block % S``.
    """
    block = i // group
    spk = speakers[block % len(speakers)]
    j = (block // len(speakers)) * group + i % group  # the speaker's j-th utterance
    return spk, spk.books[j % len(spk.books)], j // len(spk.books)


def _finish_utt(u: _Utt, wave: np.ndarray) -> int:
    """Add noise (if asked), pad to whole 10 ms and write ``u``'s FLAC; returns the samples written."""
    import soundfile as sf

    x = wave.astype(np.float64)
    if u.snr_db is not None:
        power = float(np.mean(x**2))
        noise = np.random.default_rng(np.random.SeedSequence(list(u.noise_seed))).standard_normal(x.size)
        x = x + noise * math.sqrt(power / (10.0 ** (u.snr_db / 10.0)))
    pad = (-x.size) % _PAD_TO
    if pad:
        x = np.concatenate([x, np.zeros(pad)])
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    Path(u.path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(u.path, pcm, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    return int(pcm.size)


def _synthesize_group(group: tuple[_Utt, ...]) -> list[tuple[str, str, int, int, str | None, float]]:
    """Worker: synthesise one block of utterances (same speaker) into their FLAC files.

    A block of several utterances is spoken by one espeak-ng process (:func:`synthesize_waves`);
    if that fails, each utterance is spoken on its own, so one bad utterance only loses itself.
    Returns per utterance (lang, split, index, samples written (0 on failure), error or None, wall seconds).
    """
    t0 = time.perf_counter()
    first = group[0]
    waves: list[np.ndarray] | None = None
    if len(group) > 1:
        try:
            waves = synthesize_waves(
                [u.text for u in group], first.voice, speed=first.speed, pitch=first.pitch, binary=first.binary
            )
        except EspeakNotFoundError:
            raise
        except (EspeakError, ValueError):
            waves = None
    results = []
    for k, u in enumerate(group):
        t = time.perf_counter()
        try:
            wave = waves[k] if waves is not None else synthesize_wave(
                u.text, u.voice, speed=u.speed, pitch=u.pitch, binary=u.binary
            )
            n, err = _finish_utt(u, wave), None
        except EspeakNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - one bad utterance is reported and skipped
            n, err = 0, f"{type(e).__name__}: {e}"
        results.append((u.lang, u.split, u.index, n, err, time.perf_counter() - t))
    # charge the shared espeak-ng run to the block's utterances evenly
    shared = (time.perf_counter() - t0 - sum(r[5] for r in results)) / len(results)
    return [(*r[:5], r[5] + shared) for r in results]


#: most train hours (and dev/test hours per language) accepted: twice MLS's ~50,000 hours
MAX_HOURS = 100_000.0
#: range of noise SNRs accepted (dB): below it the audio is noise only, above it the noise is far
#: under 16-bit resolution; outside it the noise scale over- or underflows
SNR_RANGE = (-100.0, 100.0)
#: range of zipf exponents accepted: 10 already makes the most frequent word nearly every word, and
#: much beyond it the word weights over- or underflow
ZIPF_EXPONENT_RANGE = (-10.0, 10.0)


def _parse_pair(
    value: str | Sequence[float] | None, what: str, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> tuple[float, float] | None:
    """``"MIN,MAX"`` or a pair -> ``(min, max)``: finite, ``min <= max``, both within ``bounds``."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
        if len(parts) != 2:
            raise ValueError(f"{what} must be 'MIN,MAX', got {value!r}")
        value = tuple(parts)
    elif len(value) != 2:
        raise ValueError(f"{what} must be (MIN, MAX), got {value!r}")
    try:
        lo, hi = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two numbers MIN,MAX, got {value!r}") from None
    if not all(math.isfinite(v) and bounds[0] <= v <= bounds[1] for v in (lo, hi)):
        raise ValueError(f"{what} values must be finite numbers between {_fmt(bounds[0])} and {_fmt(bounds[1])}, "
                         f"got {lo:g},{hi:g}")
    if lo > hi:
        raise ValueError(f"{what}: MIN {lo} is larger than MAX {hi}")
    return lo, hi


def _check_real(value: float, what: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` as a float, refused (naming ``what``) unless finite and in ``[lo, hi]`` (``(lo, hi]``
    with ``lo_open``)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not (math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi):
        raise ValueError(
            f"{what} must be a finite number in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}], got {value!r}"
        )
    return x


def _fmt(x: float) -> str:
    """A bound for a message: ``6,000,000`` rather than ``6e+06``."""
    return f"{x:,.0f}" if math.isfinite(x) and x.is_integer() else f"{x:g}"


# --------------------------------------------------------------------------------------------
# the corpus


def synthesize_corpus(
    out_dir: str | os.PathLike[str],
    *,
    hours: float = DEMO_HOURS,
    imbalance: str = "mls",
    langs: str | Sequence[str] | None = None,
    seed: int = 0,
    dev_minutes: float = 3.0,
    test_minutes: float = 3.0,
    min_train_utts: int = 100,
    min_eval_utts: int = 10,
    words: tuple[int, int] = (5, 14),
    number_prob: float = 0.1,
    vocab_size: int = 5000,
    zipf_exponent: float = 1.0,
    speakers: tuple[int, int, int] = (12, 4, 4),
    noise_snr: str | tuple[float, float] | None = None,
    limited_fraction: float = 0.1,
    batch: int = 8,
    jobs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    espeak_binary: str = "espeak-ng",
) -> CorpusSummary:
    """Write a synthetic MLS-format corpus under ``out_dir`` and return its summary.

    Args:
        out_dir: root folder; ``mls_<language>/`` folders are created in it.
        hours: total train hours over the chosen languages, shared out by ``imbalance``.
        imbalance: ``"mls"``, ``"sqrt"`` or ``"uniform"`` (see :func:`language_train_seconds`).
        langs: ISO codes or MLS names (list or comma-separated string); ``None`` = all eight.
        seed: any non-negative integer; same arguments and seed give byte-identical files.
        dev_minutes, test_minutes: audio per language in dev and in test (same for all languages).
        min_train_utts: floor on train utterances per language (at least 7: the six 1hr folds and
            the 9hr set each need one), so a small ``hours`` still gives every language data.
        min_eval_utts: floor on dev and on test utterances per language (at least 2: one per gender).
        words: (min, max) vocabulary words per utterance.
        number_prob: probability that an utterance contains a spelled-out number.
        vocab_size, zipf_exponent: see :func:`build_vocabulary`.
        speakers: speakers per language in (train, dev, test); each at least 2 (one per gender).
        noise_snr: ``(min_db, max_db)`` or ``"MIN,MAX"``: add white noise at an SNR drawn uniformly
            per utterance; ``None`` (default) adds none.
        limited_fraction: size of the 9hr+1hr limited-supervision set of every language as a fraction
            of the smallest language's train seconds (MLS: 10 h of Polish's ~104 h).
        batch: most utterances one espeak-ng process speaks (one speaker's consecutive utterances,
            cut apart at SSML breaks; see :func:`synthesize_waves`); 1 starts a process per utterance.
            Part of what the output depends on (espeak-ng's state carries across a batch).
        jobs: worker processes (default: all cores); 1 synthesises in this process.
        progress: show a tqdm progress bar on stderr.
        overwrite: replace existing ``mls_<language>`` folders instead of refusing.
        espeak_binary: the espeak-ng program.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    languages = resolve_languages(list(langs) if isinstance(langs, (list, tuple)) else langs)
    if not languages:
        raise ValueError("no languages selected")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if min_train_utts < 7:
        raise ValueError(f"min_train_utts must be >= 7 (six 1hr folds and the 9hr set), got {min_train_utts}")
    if min_eval_utts < 2:
        raise ValueError(f"min_eval_utts must be >= 2 (one speaker per gender), got {min_eval_utts}")
    if len(speakers) != 3 or min(speakers) < 2:
        raise ValueError(f"speakers must give (train, dev, test) counts, each >= 2; got {speakers}")
    if not (1 <= words[0] <= words[1]):
        raise ValueError(f"words must be (min, max) with 1 <= min <= max, got {words}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    # every real-valued option: finite and in range, named as the library and the CLI call it
    hours = _check_real(hours, "hours (--hours)", 0.0, MAX_HOURS)
    dev_minutes = _check_real(dev_minutes, "dev_minutes (--dev-minutes)", 0.0, MAX_HOURS * 60)
    test_minutes = _check_real(test_minutes, "test_minutes (--test-minutes)", 0.0, MAX_HOURS * 60)
    number_prob = _check_real(number_prob, "number_prob (--number-prob)", 0.0, 1.0)
    zipf_exponent = _check_real(zipf_exponent, "zipf_exponent (--zipf-exponent)", *ZIPF_EXPONENT_RANGE)
    limited_fraction = _check_real(limited_fraction, "limited_fraction (--limited-fraction)", 0.0, 1.0, lo_open=True)
    snr = _parse_pair(noise_snr, "noise_snr (--noise-snr, dB)", SNR_RANGE)
    binary = find_espeak(espeak_binary)
    installed = installed_variants(binary)
    female = [v for v in FEMALE_VARIANTS if installed.get(v) == "F"]
    male = [v for v in MALE_VARIANTS if installed.get(v) == "M"]
    if len(female) < 3 or len(male) < 3:
        raise EspeakError(
            f"espeak-ng at {binary} has only {len(female)} female and {len(male)} male voice variants of the "
            "expected ones (3 of each needed); install the full Debian package 'espeak-ng-data'"
        )
    jobs = max(1, int(jobs or os.cpu_count() or 1))
    existing = [out / l.folder for l in languages if (out / l.folder).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True (--overwrite) to replace it")
    # before anything on disk changes: a vocabulary that cannot be built must not cost an old corpus
    vocabs = {l.iso: build_vocabulary(l, vocab_size, zipf_exponent) for l in languages}

    out.mkdir(parents=True, exist_ok=True)
    for folder in existing:
        shutil.rmtree(folder)

    train_targets = language_train_seconds(languages, hours, imbalance)
    counts = dict(zip(SPLITS, speakers))
    plans = {l.iso: _plan_speakers(l, seed, counts, female, male) for l in languages}
    targets = {
        (l.iso, s): (train_targets[l.iso] if s == "train" else (dev_minutes if s == "dev" else test_minutes) * 60.0)
        for l in languages
        for s in SPLITS
    }
    floors = {(l.iso, s): (min_train_utts if s == "train" else min_eval_utts) for l in languages for s in SPLITS}
    by_iso = {l.iso: l for l in languages}
    mean_words = (words[0] + words[1]) / 2
    est_utt_seconds = mean_words * 60.0 / ((SPEED_RANGE[0] + SPEED_RANGE[1]) / 2) + 0.4
    # utterances per espeak-ng process: up to `batch`, but small enough that the expected number of
    # utterances gives every speaker at least two blocks (so small splits still mix speakers and
    # genders). A function of the arguments only, so the output does not depend on `jobs`.
    group: dict[tuple[str, str], int] = {}
    for st in targets:
        expected = max(floors[st], math.ceil(targets[st] / est_utt_seconds))
        group[st] = max(1, min(batch, expected // (2 * counts[st[1]])))

    def make_utt(iso: str, split: str, i: int) -> _Utt:
        language = by_iso[iso]
        k, sk = _lang_index(language), SPLITS.index(split)
        spk, book, idx = _utt_location(plans[iso][split], i, group[(iso, split)])
        rng = _rng(seed, _P_TEXT, k, sk, i)
        text = generate_sentence(vocabs[iso], rng, min_words=words[0], max_words=words[1], number_prob=number_prob)
        noise_seed = (seed, _P_NOISE, k, sk, i)
        snr_db = None if snr is None else float(_rng(*noise_seed).uniform(snr[0], snr[1]))
        utt_id = f"{spk.speaker_id}_{book}_{idx:06d}"
        path = out / language.folder / split / "audio" / str(spk.speaker_id) / str(book) / f"{utt_id}.flac"
        return _Utt(
            iso, split, i, utt_id, str(path), text, f"{language.espeak}+{spk.variant}",
            spk.speed, spk.pitch, snr_db, (*noise_seed, 1), binary,
        )

    # synthesise in rounds until each stream's kept prefix is known
    streams = list(targets)
    utts: dict[tuple[str, str], dict[int, _Utt]] = {st: {} for st in streams}
    samples: dict[tuple[str, str], dict[int, int]] = {st: {} for st in streams}
    errors: dict[tuple[str, str], dict[int, str]] = {st: {} for st in streams}
    cut: dict[tuple[str, str], int] = {}  # stream -> number of indices kept (prefix length)
    synthesized = 0
    worker_seconds = {l.iso: 0.0 for l in languages}

    # import the workers' heavy modules once here, so forked workers inherit them (scipy.signal
    # alone takes about a second to import)
    import scipy.signal  # noqa: F401
    import soundfile  # noqa: F401

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    pool = ctx.Pool(jobs) if jobs > 1 else None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=0, unit="utt", desc="synth-corpus", dynamic_ncols=True)
    try:
        while True:
            tasks: list[tuple[_Utt, ...]] = []
            for st in streams:
                if st in cut:
                    continue
                have_n = sum(1 for v in samples[st].values() if v > 0)
                have_s = sum(samples[st].values()) / SAMPLE_RATE
                if have_n >= floors[st] and have_s >= targets[st]:
                    # find the shortest prefix reaching both the floor and the target
                    n_ok, secs = 0, 0
                    for i in range(len(utts[st])):
                        n_ok += samples[st][i] > 0
                        secs += samples[st][i]
                        if n_ok >= floors[st] and secs / SAMPLE_RATE >= targets[st]:
                            cut[st] = i + 1
                            break
                    continue
                tried = len(utts[st])
                if tried and have_n == 0 and tried >= 20:
                    raise EspeakError(
                        f"espeak-ng failed on all {tried} utterances of {by_iso[st[0]].folder}/{st[1]}; "
                        f"first error: {next(iter(errors[st].values()))}"
                    )
                mean = have_s / have_n if have_n else est_utt_seconds
                want = max(floors[st] - have_n, math.ceil(max(0.0, targets[st] - have_s) / mean * 1.03), 1)
                if have_n:
                    want += 1
                g = group[st]
                for start in range(tried, math.ceil((tried + want) / g) * g, g):  # whole blocks
                    block = tuple(make_utt(st[0], st[1], i) for i in range(start, start + g))
                    for u in block:
                        utts[st][u.index] = u
                    tasks.append(block)
            if not tasks:
                break
            if bar is not None:
                bar.total += sum(len(t) for t in tasks)
                bar.refresh()
            results = (
                pool.imap_unordered(_synthesize_group, tasks, chunksize=max(1, min(4, len(tasks) // (4 * jobs))))
                if pool is not None
                else map(_synthesize_group, tasks)
            )
            for block_results in results:
                for iso, split, i, n, err, secs in block_results:
                    samples[(iso, split)][i] = n
                    worker_seconds[iso] += secs
                    if err is not None:
                        errors[(iso, split)][i] = err
                    synthesized += 1
                if bar is not None:
                    bar.update(len(block_results))
    except BaseException:
        if pool is not None:  # Ctrl-C or an error: stop the workers now rather than drain the queue
            pool.terminate()
        raise
    else:
        if pool is not None:
            pool.close()
    finally:
        if pool is not None:
            pool.join()
        if bar is not None:
            bar.close()

    # drop the audio synthesised past each stream's cut
    for st in streams:
        for i in range(cut[st], len(utts[st])):
            if samples[st][i] > 0:
                Path(utts[st][i].path).unlink()
    _remove_empty_dirs(out, languages)

    failures: list[UtteranceFailure] = []
    summaries: list[LanguageSummary] = []
    kept: dict[tuple[str, str], list[tuple[_Utt, int]]] = {}
    for language in languages:
        iso = language.iso
        summary = LanguageSummary(iso, language.folder)
        for split in SPLITS:
            st = (iso, split)
            kept[st] = [(utts[st][i], samples[st][i]) for i in range(cut[st]) if samples[st][i] > 0]
            for i in range(cut[st]):
                if i in errors[st]:
                    u = utts[st][i]
                    failures.append(UtteranceFailure(iso, split, u.utt_id, u.text, errors[st][i]))
            summary.utterances[split] = len(kept[st])
            summary.seconds[split] = sum(n for _, n in kept[st]) / SAMPLE_RATE
            summary.target_seconds[split] = targets[st]
            summary.speakers[split] = len({u.utt_id.split("_")[0] for u, _ in kept[st]})
        summary.failed = sum(1 for f in failures if f.lang == iso)
        summary.worker_seconds = worker_seconds[iso]
        summary.synthesized_seconds = sum(sum(samples[(iso, sp)].values()) for sp in SPLITS) / SAMPLE_RATE
        summaries.append(summary)

    limited_total = limited_fraction * min(s.seconds["train"] for s in summaries)
    for language, summary in zip(languages, summaries):
        _write_language(out, language, seed, plans[language.iso], kept, vocabs[language.iso], summary, limited_total)

    return CorpusSummary(out, summaries, failures, time.perf_counter() - t0, jobs, synthesized)


def _remove_empty_dirs(out: Path, languages: Sequence[Language]) -> None:
    for language in languages:
        for dirpath, _dirnames, _files in sorted(os.walk(out / language.folder), key=lambda t: -len(t[0])):
            p = Path(dirpath)
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def _metainfo_line(fields: Sequence[str]) -> str:
    """One metainfo.txt row, spaced as MLS's: centred columns joined by '|'."""
    widths = (10, 10, 10, 10, 10, 30, 30)
    cols = [fields[0].center(widths[0]) + " "]
    cols += [" " + f.center(w) + " " for f, w in zip(fields[1:-1], widths[1:-1])]
    cols.append(" " + fields[-1].center(widths[-1]))
    return "|".join(cols)


def _title(vocab: Vocabulary, rng: np.random.Generator, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    idx = rng.choice(len(vocab.words), size=n, p=vocab.probs)
    return " ".join(vocab.words[int(i)] for i in idx).title()


def _write_language(
    out: Path,
    language: Language,
    seed: int,
    plan: dict[str, list[Speaker]],
    kept: dict[tuple[str, str], list[tuple[_Utt, int]]],
    vocab: Vocabulary,
    summary: LanguageSummary,
    limited_total: float,
) -> None:
    """Write one language's transcripts, segments, metainfo and limited-supervision handles.

    ``kept``: per (iso, split) the kept utterances with their length in samples (a multiple of
    10 ms). ``limited_total``: seconds of the 9hr set plus the six 1hr folds. Fills
    ``summary.limited_seconds``.
    """
    root = out / language.folder
    k = _lang_index(language)
    minutes: dict[tuple[str, int, int], float] = {}  # (split, speaker, book) -> minutes
    for split in SPLITS:
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        rows = sorted(kept[(language.iso, split)], key=lambda r: r[0].utt_id)
        with open(split_dir / "transcripts.txt", "w", encoding="utf-8", newline="\n") as f:
            for u, _ in rows:
                f.write(f"{u.utt_id}\t{u.text}\n")
        with open(split_dir / "segments.txt", "w", encoding="utf-8", newline="\n") as f:
            offsets: dict[tuple[str, str], int] = {}
            for u, n in rows:
                spk, book, _idx = u.utt_id.split("_")
                start = offsets.get((spk, book), _CHAPTER_GAP_CS)
                end = start + n // _PAD_TO  # n is a multiple of 10 ms
                offsets[(spk, book)] = end + _CHAPTER_GAP_CS
                url = f"http://synth.just-asr.invalid/{language.folder}/{spk}/{book}/{spk}_{book}_chapter.mp3"
                f.write(f"{u.utt_id}\t{url}\t{start // 100}.{start % 100:02d}\t{end // 100}.{end % 100:02d}\n")
                key = (split, int(spk), int(book))
                minutes[key] = minutes.get(key, 0.0) + n / SAMPLE_RATE / 60.0

    header = _metainfo_line(("SPEAKER", "GENDER", "PARTITION", "MINUTES", "BOOK ID", "TITLE", "CHAPTER"))
    lines = [header]
    speakers = {s.speaker_id: s for split in SPLITS for s in plan[split]}
    for (split, spk, book), mins in sorted(minutes.items(), key=lambda kv: (SPLITS.index(kv[0][0]), kv[0][1], kv[0][2])):
        rng = _rng(seed, _P_BOOK, k, book)
        title = _title(vocab, rng, 1, 4)
        chapter = _title(vocab, rng, 1, 3)
        lines.append(_metainfo_line((str(spk), speakers[spk].gender, split, f"{mins:.3f}", str(book), title, chapter)))
    (root / "metainfo.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")

    # limited supervision: six disjoint 1hr folds and the 9hr set, all disjoint, drawn from train
    train = sorted(kept[(language.iso, "train")], key=lambda r: r[0].utt_id)
    order = [train[int(i)] for i in _rng(seed, _P_LIMITED, k).permutation(len(train))]
    fold_target = limited_total / 10.0 / 6.0
    nine_target = limited_total * 0.9
    pos = 0
    folds: list[list[str]] = []
    for _ in range(6):
        fold, secs = [], 0.0
        while pos < len(order) and (not fold or secs < fold_target):
            fold.append(order[pos][0].utt_id)
            secs += order[pos][1] / SAMPLE_RATE
            pos += 1
        folds.append(fold)
    nine, nine_secs = [], 0.0
    while pos < len(order) and (not nine or nine_secs < nine_target):
        nine.append(order[pos][0].utt_id)
        nine_secs += order[pos][1] / SAMPLE_RATE
        pos += 1
    secs_of = {u.utt_id: n / SAMPLE_RATE for u, n in train}
    ls = root / "train" / "limited_supervision"
    for i, fold in enumerate(folds):
        d = ls / "1hr" / str(i)
        d.mkdir(parents=True, exist_ok=True)
        (d / "handles.txt").write_text("".join(f"{h}\n" for h in sorted(fold)), encoding="utf-8")
    (ls / "9hr").mkdir(parents=True, exist_ok=True)
    (ls / "9hr" / "handles.txt").write_text("".join(f"{h}\n" for h in sorted(nine)), encoding="utf-8")
    summary.limited_seconds = {"9hr": sum(secs_of[h] for h in nine), "1hr": sum(secs_of[h] for f in folds for h in f)}
