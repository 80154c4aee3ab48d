"""``just-asr train-tokenizer CUTS_OR_TEXT... --vocab-size N --out DIR``: the multilingual tokenizer.

Inputs are lhotse cut manifests (``*.jsonl.gz``/``*.jsonl``; the language of each text is its
supervision's) or plain text files with one normalised sentence per line, named ``LANG:PATH``
(e.g. ``pl:extra_pl.txt``) or given a language with ``--text-lang``.

Example::

    just-asr train-tokenizer data/manifests/mls-*_cuts_train.jsonl.gz --vocab-size 2048 \\
        --temperature 3 --out data/tokenizer

Writes ``DIR/tokenizer.model`` and ``DIR/tokenizer.json``. Transcripts holding characters the
trained tokenizer still lacks (possible only when some text was left out by sampling limits) are
listed at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import defaultdict
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="cut manifests, or text files as LANG:PATH")
    parser.add_argument("--vocab-size", type=int, required=True, help="units including blank and <unk>")
    parser.add_argument("--out", required=True, help="output folder (tokenizer.model, tokenizer.json)")
    parser.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    parser.add_argument("--temperature", type=float, default=3.0, help="language temperature for the training text (1 = natural, large = equal shares; default 3)")
    parser.add_argument("--max-chars", type=int, default=50_000_000, help="characters of training text, at least 1 (default 50M)")
    parser.add_argument("--text-lang", default=None, help="language of text files given without LANG:")
    parser.add_argument("--seed", type=int, default=0)


def read_inputs(inputs: list[str], text_lang: str | None) -> dict[str, list[str]]:
    """Texts per ISO code from cut manifests and ``LANG:PATH`` text files."""
    from just_asr.data.dataset import UNKNOWN_LANGUAGE, cut_language, cut_text
    from just_asr.data.languages import get_language
    from just_asr.data.mls import NamedLazyManifest

    logger = logging.getLogger(__name__)
    texts: dict[str, list[str]] = defaultdict(list)
    for item in inputs:
        lang = None
        path_s = item
        head, sep, tail = item.partition(":")
        if sep and not Path(item).exists():
            lang, path_s = get_language(head).iso, tail
        path = Path(path_s)
        if not path.is_file():
            raise ValueError(f"{path}: input not found")
        before = sum(len(v) for v in texts.values())
        if path.name.endswith((".jsonl.gz", ".jsonl")):
            for cut in NamedLazyManifest(path, problem="not a lhotse cut manifest"):  # errors name the file
                text = cut_text(cut)
                if text:
                    texts[lang or cut_language(cut)].append(text)
            if sum(len(v) for v in texts.values()) == before:
                logger.warning("%s: no cut in it has a transcript; nothing was taken from it", path)
            continue
        lang = lang or (get_language(text_lang).iso if text_lang else None)
        if lang is None:
            raise ValueError(f"{path}: text file without a language; write it as LANG:{path} or pass --text-lang")
        with open(path, encoding="utf-8") as f:
            try:
                for line in f:
                    if line.strip():
                        texts[lang].append(" ".join(line.split()))
            except UnicodeDecodeError as exc:  # (decoded in chunks: no reliable line number)
                raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
        if sum(len(v) for v in texts.values()) == before:
            logger.warning("%s: the text file holds no text; nothing was taken from it", path)
    if UNKNOWN_LANGUAGE in texts:
        logger.warning("%d texts have no language; they are sampled as language 'und'", len(texts[UNKNOWN_LANGUAGE]))
    return dict(texts)


def run(args: argparse.Namespace) -> int:
    from just_asr.data.tokenizer import Tokenizer, check_max_chars, train_tokenizer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_max_chars(args.max_chars)  # before reading the inputs
        texts = read_inputs(args.inputs, args.text_lang)
        path = train_tokenizer(
            texts, args.out, args.vocab_size, temperature=args.temperature, model_type=args.model_type,
            max_chars=args.max_chars, seed=args.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tok = Tokenizer(path)
    missing: dict[str, int] = defaultdict(int)
    for lines in texts.values():
        for line in lines:
            for c in tok.missing_characters(line):
                missing[c] += 1
    print(f"tokenizer with {tok.vocab_size} units written to {path}")
    if missing:
        shown = ", ".join(f"{c!r} (U+{ord(c):04X}) in {n} texts" for c, n in sorted(missing.items()))
        print(f"warning: characters the tokenizer lacks: {shown}; such transcripts are reported and skipped in training")
    return 0
