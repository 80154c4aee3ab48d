"""The LightningDataModule around the lhotse pipeline of :mod:`just_asr.data`.

Training reads ``<manifest_dir>/mls-<iso>_cuts_<train_split>.jsonl.gz`` for each language, mixes
the languages with temperature sampling (an endless stream: train with ``trainer.max_steps``),
optionally mixes in untranscribed cut manifests at a fixed share of cuts, and batches by total
duration (``max_duration`` seconds per batch and rank). Validation is one ordered pass over the dev
cuts of every language (optionally capped per language).

Batches are the dicts of docs/architecture.md; with ``spec_augment`` set, training batches also
carry ``supervised_features`` (the SpecAugmented copy the model's supervised branch reads).

Example (what ``just-asr fit`` builds from ``data:`` in the YAML)::

    dm = JustDataModule("data/manifests", tokenizer="data/tokenizer.model", langs=["pl", "pt"],
                        max_duration=120, temperature=2.0, spec_augment={"num_time_masks": 4})
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class JustDataModule(pl.LightningDataModule):
    """Data for :class:`just_asr.train.module.JustLightningModule`.

    Args:
        manifest_dir: folder written by ``just-asr prepare-mls``.
        tokenizer: the SentencePiece ``.model`` (the CLI links it to ``model.tokenizer``).
        langs: ISO codes or MLS names (list, or one comma-separated string); ``None``: all eight.
        train_split: ``train``, ``train-9hr``, ``train-1hr`` or ``train-10hr``.
        dev_split: split scored at each validation (``dev``).
        max_duration: seconds of audio per training batch (per rank).
        eval_max_duration: seconds per dev batch (default: ``max_duration``).
        temperature: language sampling temperature over ``sampling_unit`` (1 = natural
          proportions, larger flattens towards uniform).
        sampling_unit: ``hours`` or ``utterances``.
        num_workers: DataLoader worker processes.
        seed: seeds the language mixing, batch shuffling and SpecAugment.
        spec_augment: keyword arguments of :class:`just_asr.data.augment.SpecAugment` (``{}`` for its
          defaults); ``None`` turns SpecAugment off.
        cmvn: path of the global CMVN JSON (``just-asr compute-cmvn``), or ``None``.
        untranscribed: cut manifests without text (``just-asr prepare-untranscribed``); they feed
          only the self-supervised terms.
        untranscribed_ratio: probability that the next training cut comes from ``untranscribed``
          (a share of cuts); ``1.0`` trains on untranscribed audio alone.
        max_dev_cuts_per_lang: score at most this many dev cuts per language (the first ones).
        feature_source: ``auto`` | ``precomputed`` | ``on-the-fly``.
        num_buckets: duration buckets of the training sampler.
        max_cuts: cap on cuts per training batch.
    """

    def __init__(
        self,
        manifest_dir: str,
        tokenizer: str | None = None,
        langs: list[str] | str | None = None,
        train_split: str = "train",
        dev_split: str = "dev",
        max_duration: float = 200.0,
        eval_max_duration: float | None = None,
        temperature: float = 1.0,
        sampling_unit: str = "hours",
        num_workers: int = 0,
        seed: int = 0,
        spec_augment: dict[str, Any] | None = None,
        cmvn: str | None = None,
        untranscribed: list[str] | None = None,
        untranscribed_ratio: float = 0.0,
        max_dev_cuts_per_lang: int | None = None,
        feature_source: str = "auto",
        num_buckets: int = 10,
        max_cuts: int | None = None,
    ) -> None:
        super().__init__()
        from just_asr.data.languages import resolve_languages

        if not 0.0 <= untranscribed_ratio <= 1.0:
            raise ValueError(f"data.untranscribed_ratio must be in [0, 1], got {untranscribed_ratio}")
        if untranscribed_ratio > 0 and not untranscribed:
            raise ValueError("data.untranscribed_ratio > 0 needs data.untranscribed (cut manifests without text)")
        if max_duration <= 0:
            raise ValueError(f"data.max_duration must be > 0, got {max_duration}")
        self.save_hyperparameters()
        self.manifest_dir = Path(manifest_dir)
        self.tokenizer_path = tokenizer
        self.langs = [l.iso for l in resolve_languages(langs)]
        self._tokenizer = None
        self._train_loader = None

    # ------------------------------------------------------------------ helpers
    @property
    def tokenizer(self):
        if self._tokenizer is None and self.tokenizer_path is not None:
            from just_asr.data.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.tokenizer_path)
        return self._tokenizer

    def _world(self) -> tuple[int, int]:
        trainer = self._trainer if hasattr(self, "_trainer") else None
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _spec_augment(self):
        cfg = self.hparams.spec_augment
        if cfg is None:
            return None
        from just_asr.data.augment import SpecAugment

        return SpecAugment(**dict(cfg))

    def train_cuts(self) -> dict[str, Any]:
        """ISO code -> lazy CutSet of the training split."""
        from just_asr.data.mls import load_manifests

        return {lang: load_manifests(self.manifest_dir, lang, self.hparams.train_split) for lang in self.langs}

    def untranscribed_cuts(self):
        """The untranscribed manifests as one lazy CutSet (``None`` when there are none)."""
        from lhotse import CutSet

        paths = list(self.hparams.untranscribed or [])
        if not paths:
            return None
        sets = []
        for p in paths:
            if not Path(p).is_file():
                raise ValueError(f"{p}: untranscribed cut manifest not found (run just-asr prepare-untranscribed)")
            sets.append(CutSet.from_jsonl_lazy(p))
        return sets[0] if len(sets) == 1 else CutSet.mux(*sets, seed=self.hparams.seed)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self):
        from just_asr.data.loader import make_train_dataloader
        from just_asr.data.sampling import LanguageStats, temperature_mux

        hp = self.hparams
        world_size, rank = self._world()
        common = dict(
            max_duration=hp.max_duration, num_workers=hp.num_workers, world_size=world_size, rank=rank,
            seed=hp.seed, spec_augment=self._spec_augment(), cmvn=hp.cmvn, feature_source=hp.feature_source,
            num_buckets=hp.num_buckets, max_cuts=hp.max_cuts,
        )
        ratio = float(hp.untranscribed_ratio)
        if ratio <= 0.0:
            loader = make_train_dataloader(self.train_cuts(), self.tokenizer, temperature=hp.temperature,
                                           unit=hp.sampling_unit, **common)
        else:
            from lhotse import CutSet

            unlabelled = self.untranscribed_cuts().repeat(preserve_id=True)
            if ratio >= 1.0:
                stream = unlabelled
            else:
                labelled, mix = temperature_mux(self.train_cuts(), hp.temperature, hp.sampling_unit, seed=hp.seed)
                stream = CutSet.mux(labelled, unlabelled, weights=[1.0 - ratio, ratio], seed=hp.seed + 1)
                log.info("training stream: %.0f%% transcribed (%s), %.0f%% untranscribed cuts",
                         100 * (1 - ratio), ", ".join(self.langs), 100 * ratio)
            # the stream is already mixed (and endless): one pseudo-language, stats given so nothing is counted
            loader = make_train_dataloader({"mix": stream}, self.tokenizer, temperature=1.0,
                                           stats={"mix": LanguageStats(1, 1.0)}, **common)
        self._train_loader = loader
        return loader

    def dev_cuts(self):
        """The dev cuts of every language (eager; capped by ``max_dev_cuts_per_lang``)."""
        from lhotse import CutSet

        from just_asr.data.mls import load_manifests

        cap = self.hparams.max_dev_cuts_per_lang
        parts = []
        for lang in self.langs:
            cuts = load_manifests(self.manifest_dir, lang, self.hparams.dev_split, lazy=False)
            if cap is not None:
                cuts = cuts.subset(first=min(cap, len(cuts)))
            parts.append(cuts)
        return CutSet.from_cuts(c for cs in parts for c in cs)

    def val_dataloader(self):
        from just_asr.data.loader import make_eval_dataloader

        hp = self.hparams
        world_size, rank = self._world()
        with warnings.catch_warnings():  # the dev set is small and read eagerly on purpose
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
            return make_eval_dataloader(
                self.dev_cuts(), self.tokenizer, max_duration=hp.eval_max_duration or hp.max_duration,
                num_workers=hp.num_workers, world_size=world_size, rank=rank, cmvn=hp.cmvn,
                feature_source=hp.feature_source,
            )
