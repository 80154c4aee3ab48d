"""``AsrDataset``: from a lhotse CutSet batch to the batch dict of docs/architecture.md.

Keys (always present, in this order):

=============== ==================== ==========================================================
``features``    float32 (B, T, 80)   log-mel fbank, zero-padded, optional global CMVN applied
                                     (or SeamlessM4T features with ``feature_source="seamless"``)
``feature_lens`` int64 (B,)          valid frames per row (``cut_num_frames(cut, feature_source)``)
``targets``     int64 (B, U_max)     token ids padded with 0 (blank); ``U_max >= 1``; all-zero
                                     rows for cuts without text
``target_lens`` int64 (B,)           tokens per row (0 when no text)
``has_text``    bool (B,)            the cut has a usable transcript
``langs``       list[str]            ISO code per row (``"und"`` when unknown)
``cut_ids``     list[str]            lhotse cut ids
``texts``       list[str]            normalised reference text (``""`` when none)
=============== ==================== ==========================================================

With ``spec_augment`` given, the batch also holds ``supervised_features`` (B, T, 80): a
SpecAugmented copy for the model's supervised branch (``features`` stays clean for the
quantiser). Nothing else is added, except ``data_issues`` from a DataLoader worker (below), which
the project's loaders take out before the batch reaches the model.

Features come from :func:`just_asr.data.features.cut_features` with the dataset's
``feature_source``. With ``"seamless"`` (models imported from w2v-BERT 2.0) they are the
SeamlessM4T recipe of :mod:`just_asr.data.seamless_features`: still 80-d per 10 ms frame,
unstacked, because the model's ``stack`` front end does the 2-frame stacking itself
(``feature_lens`` counts 10 ms frames; the encoder gives ``feature_lens // 2`` frames). They are
normalised per utterance, so ``cmvn`` must be ``None`` with them. Audio shorter than 560 samples
(two frames) is reported like unreadable audio and dropped from the batch.

Bad items never crash a batch: a cut whose audio cannot be read is reported to the error
collector and dropped from the batch; a cut whose text holds characters the tokenizer lacks is
handled by ``on_unknown_chars``:

* ``"skip"`` (default): report it and drop the cut from the batch;
* ``"untranscribed"``: report it and keep the audio as an untranscribed row (``has_text`` false),
  so it still feeds the self-supervised losses;
* ``"unk"``: encode the characters as ``<unk>`` (no report);
* ``"fail"``: raise.

A batch none of whose cuts is usable raises :class:`~just_asr.data.errors.DataError` by default
(``empty_batch="raise"``). The DataLoaders of :mod:`just_asr.data.loader` and
:mod:`just_asr.data.shar` build the dataset with ``empty_batch="skip"``: the batch is reported
(with its cut ids) and comes out as a :class:`LeftOutBatch`, which their loader drops (a batch of
one long cut whose audio is corrupt must not stop a training run; an exception would also lose its
type on the way out of a DataLoader worker, which re-raises it as a ``RuntimeError``).

Reports are made in the process that builds the batch. In a DataLoader worker
(``num_workers > 0``) the worker's copy of the error collector would keep them to itself, so the
issues reported since the worker's previous batch travel with the batch, under the key
``data_issues`` (a list of :class:`~just_asr.data.errors.DataIssue`; only when there are any), or
in the :class:`LeftOutBatch`. The project's loaders
(:class:`~just_asr.data.loader.SkipEmptyBatches`) take them out of the batch, add them to the
main process's collector (``loader.errors``) and log them there, so a training or decoding run
counts and lists every problem whatever its worker count. In the main process nothing is added
to the batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.utils.data

from just_asr.data.audio import AudioError, cut_audio_path
from just_asr.data.errors import DataError, DataIssue, ErrorCollector
from just_asr.data.features import FBANK_DIM, GlobalCMVN, check_feature_source, cut_features

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import CutSet
    from lhotse.cut import Cut

    from just_asr.data.augment import SpecAugment
    from just_asr.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

UNKNOWN_LANGUAGE = "und"
UNKNOWN_CHARS_POLICIES = ("skip", "untranscribed", "unk", "fail")


def cut_text(cut: "Cut") -> str | None:
    """The cut's transcript (supervision texts joined by a space), or ``None`` when it has none."""
    texts = [s.text.strip() for s in cut.supervisions if s.text is not None and s.text.strip()]
    return " ".join(texts) if texts else None


def cut_language(cut: "Cut") -> str:
    """ISO code of the cut's first supervision with a language (``"und"`` when none).

    MLS names (``polish``) written by lhotse's own recipe are mapped to ISO codes.
    """
    from just_asr.data.languages import get_language

    for s in cut.supervisions:
        if s.language:
            try:
                return get_language(s.language).iso
            except ValueError:
                return str(s.language)
    custom = cut.custom or {}
    lang = custom.get("language") if isinstance(custom, dict) else None
    return str(lang) if lang else UNKNOWN_LANGUAGE


def cut_source(cut: "Cut") -> str:
    """What to name in a report about a cut: its audio file, else ``cut <id>``."""
    return cut_audio_path(cut) or f"cut {cut.id}"


@dataclass
class LeftOutBatch:
    """What :class:`AsrDataset` with ``empty_batch="skip"`` returns for a batch none of whose cuts is
    usable (already reported): the batch's cut ids and, from a DataLoader worker, the issues to
    pass on to the main process (see the module docstring)."""

    cut_ids: list[str]
    data_issues: list[DataIssue] = field(default_factory=list)


class AsrDataset(torch.utils.data.Dataset):
    """Map-style lhotse dataset: ``dataset[cuts] -> batch dict`` (see the module docstring).

    Args:
        tokenizer: the :class:`~just_asr.data.tokenizer.Tokenizer`; ``None`` treats every cut as
            untranscribed (self-supervised pretraining), texts are still returned.
        cmvn: global mean/variance normalisation applied to valid frames (not allowed with
            ``feature_source="seamless"``).
        feature_source: ``"auto"`` (stored features when a cut has them, else computed from the
            audio), ``"precomputed"``, ``"on-the-fly"``, or ``"seamless"`` (the SeamlessM4T /
            w2v-BERT 2.0 recipe, computed from the audio; see the module docstring).
        spec_augment: if given, adds ``supervised_features`` (see the module docstring).
        on_unknown_chars: ``skip`` | ``untranscribed`` | ``unk`` | ``fail``.
        errors: collector for bad cuts (default: a ``skip`` collector owned by the dataset).
        seed: seeds the SpecAugment generator (offset by the DataLoader worker id).
        min_frames: a cut with fewer feature frames is reported and left out (the model's front end
            cannot take it: ``model.frontend.min_input_frames``, 7 frames = 70 ms for the 4x conv
            front end); at least 1.
        empty_batch: ``"raise"`` (default): a batch without a single usable cut raises
            :class:`~just_asr.data.errors.DataError`; ``"skip"``: it is reported to ``errors`` and
            a :class:`LeftOutBatch` is returned (see :class:`just_asr.data.loader.SkipEmptyBatches`).
    """

    def __init__(
        self,
        tokenizer: "Tokenizer | None" = None,
        *,
        cmvn: GlobalCMVN | None = None,
        feature_source: str = "auto",
        spec_augment: "SpecAugment | None" = None,
        on_unknown_chars: str = "skip",
        errors: ErrorCollector | None = None,
        seed: int = 0,
        min_frames: int = 1,
        empty_batch: str = "raise",
    ):
        super().__init__()
        check_feature_source(feature_source, cmvn)
        if empty_batch not in ("raise", "skip"):
            raise ValueError(f"empty_batch must be 'raise' or 'skip', got {empty_batch!r}")
        self.empty_batch = empty_batch
        if min_frames < 1:
            raise ValueError(f"min_frames must be >= 1, got {min_frames}")
        self.min_frames = int(min_frames)
        if on_unknown_chars not in UNKNOWN_CHARS_POLICIES:
            raise ValueError(f"on_unknown_chars must be one of {UNKNOWN_CHARS_POLICIES}, got {on_unknown_chars!r}")
        self.tokenizer = tokenizer
        self.cmvn = cmvn
        self.feature_source = feature_source
        self.spec_augment = spec_augment
        self.on_unknown_chars = on_unknown_chars
        self.errors = errors if errors is not None else ErrorCollector("skip")
        self.seed = int(seed)
        self._generator: torch.Generator | None = None
        self._issues_sent = 0  # in a DataLoader worker: how many of its collector's issues went out

    def reseed(self, seed: int) -> None:
        """Restart the augmentation RNG from ``seed`` (the next batch's SpecAugment masks depend only
        on it; used for exact mid-epoch resume)."""
        self._generator = torch.Generator().manual_seed(int(seed) % (2**63 - 1))

    def _rng(self) -> torch.Generator:
        if self._generator is None:
            info = torch.utils.data.get_worker_info()
            self._generator = torch.Generator().manual_seed(self.seed * 1000 + (info.id + 1 if info else 0))
        return self._generator

    def encode_text(self, cut: "Cut", text: str | None) -> tuple[list[int] | None, bool]:
        """``(token ids or None, keep the cut)`` for a cut's text under ``on_unknown_chars``."""
        if text is None or self.tokenizer is None:
            return None, True
        if self.on_unknown_chars == "unk":
            return self.tokenizer.encode(text, allow_unknown=True), True
        missing = self.tokenizer.missing_characters(text)
        if not missing:
            return self.tokenizer.encode(text), True
        chars = " ".join(f"{c!r} (U+{ord(c):04X})" for c in missing)
        problem = f"transcript of cut {cut.id} has characters the tokenizer lacks: {chars}"
        if self.on_unknown_chars == "fail":
            raise DataError(cut_source(cut), problem)
        if self.on_unknown_chars == "untranscribed":
            self.errors.warn(cut_source(cut), problem + "; used without text")
            return None, True
        self.errors.report(cut_source(cut), problem)
        return None, False

    def __getitem__(self, cuts: "CutSet") -> "dict | LeftOutBatch":
        feats: list[torch.Tensor] = []
        ids: list[list[int] | None] = []
        langs: list[str] = []
        cut_ids: list[str] = []
        texts: list[str] = []
        for cut in cuts:
            text = cut_text(cut)
            tokens, keep = self.encode_text(cut, text)
            if not keep:
                continue
            try:
                f = cut_features(cut, self.feature_source)
            except AudioError as exc:
                self.errors.add(exc)
                continue
            if f.shape[0] < self.min_frames:
                need = "no feature frames" if f.shape[0] == 0 else (
                    f"{f.shape[0]} feature frames, fewer than the model's minimum of {self.min_frames}")
                self.errors.report(cut_source(cut), f"cut {cut.id} is too short: {need} (duration {cut.duration}s)")
                continue
            feats.append(f)
            ids.append(tokens)
            langs.append(cut_language(cut))
            cut_ids.append(cut.id)
            texts.append(text or "")
        if not feats:
            problem = f"every cut of a batch of {len(cuts)} was unusable; see the warnings above"
            if self.empty_batch == "raise":
                raise DataError(None, problem)
            ids = [c.id for c in cuts]
            shown = ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")
            self.errors.report(None, f"{problem} (cuts {shown}); the batch is left out")
            return LeftOutBatch(ids, self._issues_to_send())
        batch = collate(feats, ids, langs, cut_ids, texts, cmvn=self.cmvn, spec_augment=self.spec_augment,
                        generator=self._rng())
        issues = self._issues_to_send()
        if issues:
            batch["data_issues"] = issues
        return batch

    def start_worker_reports(self) -> None:
        """Called once in each DataLoader worker (by :class:`~just_asr.data.loader.SkipEmptyBatches`)
        before its first batch: the worker's copy of the collector stops logging (its issues travel
        with the batches and are logged by the main process), and the issues the copy already holds
        (the main process's, copied with it) count as sent."""
        self.errors.log = False
        self._issues_sent = len(self.errors)

    def _issues_to_send(self) -> list[DataIssue]:
        """In a DataLoader worker: the issues its collector recorded since the previous batch went
        out (cuts of this batch, and whatever else the worker reported meanwhile, e.g. a sampler's
        filter running there). In the main process: none (its collector has them already)."""
        if torch.utils.data.get_worker_info() is None:
            return []
        new = list(self.errors.since(self._issues_sent))
        self._issues_sent += len(new)
        return new


def collate(
    feats: list[torch.Tensor],
    token_ids: list[list[int] | None],
    langs: list[str],
    cut_ids: list[str],
    texts: list[str],
    *,
    cmvn: GlobalCMVN | None = None,
    spec_augment: "SpecAugment | None" = None,
    generator: torch.Generator | None = None,
) -> dict:
    """Pad per-cut ``(T_i, 80)`` features and token lists into the batch dict.

    ``token_ids[i] is None`` marks an untranscribed row (``has_text`` false, ``target_lens`` 0).
    """
    b = len(feats)
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    t_max = int(lens.max())
    features = torch.zeros(b, t_max, FBANK_DIM, dtype=torch.float32)
    for i, f in enumerate(feats):
        features[i, : f.shape[0]] = f
    if cmvn is not None:
        features = cmvn.apply(features, lens)
    has_text = torch.tensor([t is not None for t in token_ids], dtype=torch.bool)
    target_lens = torch.tensor([len(t) if t is not None else 0 for t in token_ids], dtype=torch.int64)
    u_max = max(1, int(target_lens.max()))
    targets = torch.zeros(b, u_max, dtype=torch.int64)
    for i, t in enumerate(token_ids):
        if t:
            targets[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
    batch = {
        "features": features,
        "feature_lens": lens,
        "targets": targets,
        "target_lens": target_lens,
        "has_text": has_text,
        "langs": list(langs),
        "cut_ids": list(cut_ids),
        "texts": list(texts),
    }
    if spec_augment is not None:
        was = spec_augment.training
        spec_augment.train()
        batch["supervised_features"] = spec_augment(features, lens, generator=generator)
        spec_augment.train(was)
    return batch
