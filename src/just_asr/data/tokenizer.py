"""The multilingual SentencePiece tokenizer shared by all 8 MLS languages.

Training (:func:`train_tokenizer`, ``just-asr train-tokenizer``):

* Text is drawn per language with temperature sampling, so low-resource languages keep a share of
  the units: language ``l`` with ``n_l`` characters of text gets a share
  ``q_l ∝ n_l^(1/τ)`` of the training text (τ=1: natural shares; large τ: equal shares). A
  language with less text than its share is repeated (sampled with replacement); one with more
  is subsampled. Sampling is seeded.
* Every letter of the 8 languages' MLS normal form is a required character (sentencepiece
  ``required_chars``, from :func:`just_asr.data.text.allowed_characters`), and
  ``character_coverage=1.0`` keeps every character of the training text, so every normalised
  MLS transcript can be encoded without ``<unk>``.
* Normalisation is ``identity`` (no NFKC), so ``decode(encode(t)) == t`` for normalised text
  ``t`` (single spaces, no leading or trailing space: what ``normalize_text`` produces).
* Id 0 is the RNN-T blank ``<blk>`` (sentencepiece's pad slot, never produced by encoding), id 1
  is ``<unk>``; there is no BOS/EOS.

The result is one file, ``OUT_DIR/tokenizer.model``, plus a JSON sidecar
``OUT_DIR/tokenizer.json`` describing how it was trained. Both travel with a model directory; the
``.model`` alone is enough to load it.

Characters the tokenizer lacks: :meth:`Tokenizer.missing_characters` lists them for a text and
:meth:`Tokenizer.encode` raises :class:`UnknownCharactersError` (a ``ValueError`` naming the
characters) unless ``allow_unknown=True``; the dataset turns that into a report, not a crash.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

BLANK_PIECE = "<blk>"
UNK_PIECE = "<unk>"
BLANK_ID = 0
UNK_ID = 1
MODEL_NAME = "tokenizer.model"
SIDECAR_NAME = "tokenizer.json"


class UnknownCharactersError(ValueError):
    """Text holds characters the tokenizer has no unit for."""

    def __init__(self, text: str, chars: Sequence[str]):
        self.text = text
        self.chars = list(chars)
        shown = " ".join(f"{c!r} (U+{ord(c):04X})" for c in self.chars)
        super().__init__(f"characters not in the tokenizer: {shown} in text {text[:80]!r}")


class Tokenizer:
    """A trained SentencePiece model with the RNN-T blank at id 0.

    ``path``: the ``.model`` file, or a directory holding ``tokenizer.model``.
    """

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        path = Path(path)
        if path.is_dir():
            path = path / MODEL_NAME
        if not path.is_file():
            raise ValueError(f"{path}: tokenizer model not found")
        self.path = path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except Exception as exc:
            raise ValueError(f"{path}: not a SentencePiece model ({exc})") from None
        if self._sp.id_to_piece(BLANK_ID) != BLANK_PIECE:
            raise ValueError(
                f"{path}: id {BLANK_ID} is {self._sp.id_to_piece(BLANK_ID)!r}, not the blank {BLANK_PIECE!r};"
                " train tokenizers with just-asr train-tokenizer"
            )
        self._unk = self._sp.unk_id()
        self._known = frozenset(self._characters())

    def _characters(self) -> set[str]:
        chars: set[str] = {" "}
        for i in range(self._sp.get_piece_size()):
            if self._sp.is_control(i) or self._sp.is_unknown(i) or self._sp.is_unused(i):
                continue
            piece = self._sp.id_to_piece(i).replace("\u2581", " ")
            chars.update(piece)
        return chars

    # -- properties -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of output units, blank included (the model's output size)."""
        return int(self._sp.get_piece_size())

    @property
    def blank_id(self) -> int:
        return BLANK_ID

    @property
    def unk_id(self) -> int:
        return int(self._unk)

    @property
    def characters(self) -> frozenset[str]:
        """Every character some unit can spell (the space included)."""
        return self._known

    def sidecar(self) -> dict | None:
        """The JSON written next to the model at training time, if present."""
        p = self.path.with_name(SIDECAR_NAME)
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))
        return None

    # -- encoding -------------------------------------------------------------------------------
    def missing_characters(self, text: str) -> list[str]:
        """Characters of ``text`` no unit can spell, in order of first appearance."""
        seen: dict[str, None] = {}
        for c in text:
            if c not in self._known and c not in seen:
                seen[c] = None
        return list(seen)

    def encode(self, text: str, *, allow_unknown: bool = False) -> list[int]:
        """Token ids of ``text`` (never 0, the blank).

        Raises :class:`UnknownCharactersError` if ``text`` holds characters the tokenizer lacks,
        unless ``allow_unknown`` (then they become ``<unk>``, id 1).
        """
        if not allow_unknown:
            missing = self.missing_characters(text)
            if missing:
                raise UnknownCharactersError(text, missing)
        return list(self._sp.encode(text, out_type=int))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; blanks (0) are dropped."""
        return self._sp.decode([int(i) for i in ids if int(i) != BLANK_ID])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def pieces(self, text: str) -> list[str]:
        return list(self._sp.encode(text, out_type=str))

    def __getstate__(self) -> dict:  # picklable for DataLoader workers started with "spawn"
        return {"path": str(self.path)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


# -- training -----------------------------------------------------------------------------------
def language_shares(amounts: Mapping[str, float], temperature: float) -> dict[str, float]:
    """``q_l = n_l^(1/τ) / Σ_k n_k^(1/τ)``; ``τ = inf`` gives equal shares.

    ``amounts``: positive amount per language (characters, hours, utterances...).
    """
    if not amounts:
        raise ValueError("no languages to share between")
    if not (temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    for lang, n in amounts.items():
        if not (n > 0) or math.isinf(n):
            raise ValueError(f"amount for language {lang!r} must be positive and finite, got {n}")
    if math.isinf(temperature):
        return {lang: 1.0 / len(amounts) for lang in amounts}
    # in log space: n^(1/τ) over-/under-flows for extreme amounts
    logs = {lang: math.log(n) / temperature for lang, n in amounts.items()}
    top = max(logs.values())
    w = {lang: math.exp(v - top) for lang, v in logs.items()}
    total = sum(w.values())
    return {lang: v / total for lang, v in w.items()}


def required_characters(langs: Iterable[str] | None = None) -> str:
    """Every non-space character of the MLS normal form of ``langs`` (default: all 8), sorted."""
    from just_asr.data.languages import LANGUAGES, get_language
    from just_asr.data.text import allowed_characters

    languages = LANGUAGES if langs is None else [get_language(l) for l in langs]
    chars: set[str] = set()
    for lang in languages:
        chars |= set(allowed_characters(lang.iso))
    chars.discard(" ")
    return "".join(sorted(chars))


def check_max_chars(max_chars: int) -> None:
    """``ValueError`` unless the training-text budget is at least one character."""
    if max_chars < 1:
        raise ValueError(f"max_chars (--max-chars) must be >= 1, got {max_chars}")


def sample_training_text(
    texts_by_lang: Mapping[str, Sequence[str]],
    temperature: float,
    *,
    max_chars: int = 50_000_000,
    seed: int = 0,
) -> tuple[list[str], dict]:
    """Draw the tokenizer's training sentences with language temperature sampling.

    The total size is ``min(max_chars, all available characters)``; language ``l`` gets
    ``round(q_l * total)`` characters (:func:`language_shares` over character counts), filled by
    a seeded shuffle of its sentences, repeated whole as often as needed, then a partial pass.
    Returns the sentences and a report ``{lang: {"sentences", "chars", "natural_share",
    "sampled_share"}}``.
    """
    check_max_chars(max_chars)
    clean: dict[str, list[str]] = {}
    for lang, texts in texts_by_lang.items():
        lines = [t.strip() for t in texts if t and t.strip()]
        if lines:
            clean[lang] = lines
    if not clean:
        raise ValueError("no non-empty text to train the tokenizer on")
    chars = {lang: float(sum(len(t) for t in lines)) for lang, lines in clean.items()}
    total_avail = sum(chars.values())
    shares = language_shares(chars, temperature)
    budget = min(float(max_chars), total_avail)
    rng = random.Random(seed)
    out: list[str] = []
    report: dict[str, dict] = {}
    for lang in sorted(clean):
        lines = clean[lang]
        target = max(1.0, shares[lang] * budget)
        taken: list[str] = []
        got = 0
        while got < target:
            order = list(range(len(lines)))
            rng.shuffle(order)
            for i in order:
                taken.append(lines[i])
                got += len(lines[i])
                if got >= target:
                    break
        out.extend(taken)
        report[lang] = {
            "sentences": len(taken),
            "chars": got,
            "natural_share": chars[lang] / total_avail,
            "target_share": shares[lang],
        }
    total = sum(r["chars"] for r in report.values())
    for r in report.values():
        r["sampled_share"] = r["chars"] / total
    rng.shuffle(out)
    return out, report


def train_tokenizer(
    texts_by_lang: Mapping[str, Sequence[str]],
    out_dir: str | Path,
    vocab_size: int,
    temperature: float = 3.0,
    model_type: str = "unigram",
    *,
    max_chars: int = 50_000_000,
    seed: int = 0,
    required_langs: Iterable[str] | None = None,
    num_threads: int = 2,
) -> Path:
    """Train the multilingual tokenizer and return the path of ``out_dir/tokenizer.model``.

    ``texts_by_lang``: normalised sentences per ISO code. ``vocab_size`` counts every unit (blank
    and ``<unk>`` included); sentencepiece may stop below it for tiny text (unigram), which is
    logged. ``required_langs``: languages whose whole alphabet must be in the vocabulary (default:
    all 8 MLS languages).
    """
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be at least 3, got {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences, report = sample_training_text(texts_by_lang, temperature, max_chars=max_chars, seed=seed)
    required = required_characters(required_langs)
    for lang, r in report.items():
        logger.info(
            "tokenizer text %s: %d sentences, %.1f%% of characters (natural %.1f%%)",
            lang, r["sentences"], 100 * r["sampled_share"], 100 * r["natural_share"],
        )
    prefix = out_dir / "tokenizer"
    with tempfile.TemporaryDirectory() as tmp:
        text_path = Path(tmp) / "text.txt"
        text_path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        kwargs = dict(
            input=str(text_path),
            model_prefix=str(prefix),
            vocab_size=int(vocab_size),
            model_type=model_type,
            character_coverage=1.0,
            required_chars=required,
            normalization_rule_name="identity",
            remove_extra_whitespaces=True,
            pad_id=BLANK_ID,
            pad_piece=BLANK_PIECE,
            unk_id=UNK_ID,
            unk_piece=UNK_PIECE,
            bos_id=-1,
            eos_id=-1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=int(num_threads),
            seed_sentencepiece_size=1_000_000,
            max_sentence_length=1 << 16,
            minloglevel=2,
        )
        if model_type == "unigram":
            kwargs["hard_vocab_limit"] = False
        try:
            spm.SentencePieceTrainer.Train(**kwargs)
        except RuntimeError as exc:
            message = str(exc)
            if "smaller than required_chars" in message:  # its advice names options just-asr does not have
                need = re.search(r"(\d+) vs (\d+)", message)
                least = f" to at least {need.group(2)}" if need else ""
                raise ValueError(f"a vocabulary of {vocab_size} units is too small: every character of the "
                                 f"languages' alphabets and of the text gets a unit, and blank and <unk> one each; "
                                 f"raise --vocab-size{least}") from None
            raise ValueError(f"sentencepiece could not train a {model_type} model of {vocab_size} units: {message}") from None
    model_path = prefix.with_suffix(".model")
    vocab_file = prefix.with_suffix(".vocab")
    if vocab_file.exists():
        vocab_file.unlink()  # the .model holds the vocabulary; one file travels with the model
    tok = Tokenizer(model_path)
    if tok.vocab_size != vocab_size:
        logger.warning("tokenizer has %d units (asked for %d): the text is too small for more", tok.vocab_size, vocab_size)
    missing = [c for c in required if c not in tok.characters]
    if missing:  # sentencepiece guarantees required_chars; this guards the guarantee
        raise RuntimeError(f"trained tokenizer lacks required characters {missing}")
    sidecar = {
        "model": MODEL_NAME,
        "model_type": model_type,
        "vocab_size": tok.vocab_size,
        "requested_vocab_size": int(vocab_size),
        "blank_id": BLANK_ID,
        "blank_piece": BLANK_PIECE,
        "unk_id": UNK_ID,
        "normalization": "identity",
        "temperature": temperature,
        "seed": seed,
        "required_chars": required,
        "languages": report,
    }
    (out_dir / SIDECAR_NAME).write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return model_path
