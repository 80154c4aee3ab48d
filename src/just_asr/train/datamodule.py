"""The LightningDataModule around the lhotse pipeline of :mod:`just_asr.data`.

Training reads ``<manifest_dir>/mls-<iso>_cuts_<train_split>.jsonl.gz`` for each language, mixes
the languages with temperature sampling (an endless stream: train with ``trainer.max_steps``),
optionally mixes in untranscribed cut manifests at a fixed share of cuts, and batches by total
duration (``max_duration`` seconds per batch and rank). Validation is one ordered pass over the dev
cuts of every language (optionally capped per language).

Batches are the dicts of docs/architecture.md; with ``spec_augment`` set, training batches also
carry ``supervised_features`` (the SpecAugmented copy the model's supervised branch reads).

Sharded corpora: with ``shar_dir`` (the folder of ``just-asr export-shar``) training streams lhotse
Shar shards instead (:mod:`just_asr.data.shar`): each rank and DataLoader worker reads its own
shards sequentially, reshuffled at each pass, and the languages are mixed with the same
temperature weights (cut counts and hours come from the Shar index). Dev cuts come from the Shar
folder when it holds the dev split, else from ``manifest_dir``.

Distributed training (DDP/FSDP): the rank and world size come from the trainer. The jsonl stream
gives every rank every ``world_size``-th batch of one seeded stream (lhotse's sampler), the Shar
stream gives each rank its own shards; either way the loaders shard the data themselves, so
:meth:`JustDataModule.setup` turns off Lightning's replacement of the sampler by a
``DistributedSampler`` (which cannot wrap an endless lhotse sampler).

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
        manifest_dir: folder written by ``just-asr prepare-mls`` (may be left out with ``shar_dir``
          when the Shar folder also holds the dev split).
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
        feature_source: ``auto`` | ``precomputed`` | ``on-the-fly`` | ``seamless`` (the
          SeamlessM4T recipe of a w2v-BERT 2.0 import; docs/w2v-bert-2.md).
        num_buckets: duration buckets of the training sampler.
        max_cuts: cap on cuts per training batch.
        shar_dir: folder (or URL prefix) of ``just-asr export-shar``; training then streams its
          shards (see the module docstring). ``None``: read the jsonl manifests of ``manifest_dir``.
    """

    def __init__(
        self,
        manifest_dir: str | None = None,
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
        shar_dir: str | None = None,
    ) -> None:
        super().__init__()
        from just_asr.data.languages import resolve_languages

        if not 0.0 <= untranscribed_ratio <= 1.0:
            raise ValueError(f"data.untranscribed_ratio must be in [0, 1], got {untranscribed_ratio}")
        if untranscribed_ratio > 0 and not untranscribed:
            raise ValueError("data.untranscribed_ratio > 0 needs data.untranscribed (cut manifests without text)")
        if max_duration <= 0:
            raise ValueError(f"data.max_duration must be > 0, got {max_duration}")
        if manifest_dir is None and shar_dir is None:
            raise ValueError("set data.manifest_dir (just-asr prepare-mls) or data.shar_dir (just-asr export-shar)")
        if shar_dir is not None and untranscribed:
            raise ValueError("data.untranscribed is read from jsonl manifests and cannot be combined with data.shar_dir")
        self.save_hyperparameters()
        self.manifest_dir = Path(manifest_dir) if manifest_dir is not None else None
        self._shar_index = None
        self.tokenizer_path = tokenizer
        self.langs = [l.iso for l in resolve_languages(langs)]
        self._tokenizer = None
        self._train_loader = None
        self._val_loader = None

    # ------------------------------------------------------------------ helpers
    @property
    def tokenizer(self):
        if self._tokenizer is None and self.tokenizer_path is not None:
            from just_asr.data.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.tokenizer_path)
        return self._tokenizer

    def _world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer; ``(1, 0)`` without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def setup(self, stage: str) -> None:
        """Keep Lightning from wrapping our samplers in a ``DistributedSampler``.

        Both training streams are sharded by rank here (see the module docstring), and the lhotse
        samplers are endless and have no length, which Lightning's ``DistributedSamplerWrapper``
        needs; so under DDP/FSDP the trainer's ``use_distributed_sampler`` is switched off (the same
        as ``--trainer.use_distributed_sampler false``)."""
        trainer = getattr(self, "trainer", None)
        connector = getattr(trainer, "_accelerator_connector", None)
        if connector is not None and getattr(connector, "use_distributed_sampler", False) and trainer.world_size > 1:
            connector.use_distributed_sampler = False
            log.info("data: the loaders shard by rank themselves; Lightning's distributed sampler is off")

    def shar_index(self):
        """The :class:`~just_asr.data.shar.SharIndex` of ``shar_dir`` (``None`` without one)."""
        if self.hparams.shar_dir is None:
            return None
        if self._shar_index is None:
            from just_asr.data.shar import SharIndex

            self._shar_index = SharIndex.load(self.hparams.shar_dir)
        return self._shar_index

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

        from just_asr.data.mls import NamedLazyManifest

        paths = list(self.hparams.untranscribed or [])
        if not paths:
            return None
        sets = []
        for p in paths:
            if not Path(p).is_file():
                raise ValueError(f"{p}: untranscribed cut manifest not found (run just-asr prepare-untranscribed)")
            sets.append(CutSet(NamedLazyManifest(p)))  # a bad line names the file
        return sets[0] if len(sets) == 1 else CutSet.mux(*sets, seed=self.hparams.seed)

    # ------------------------------------------------------------------ loaders
    def _min_frames(self) -> int:
        """The model's shortest input (``frontend.min_input_frames``): shorter cuts are reported and
        left out by the loaders instead of failing their whole batch in the model. 1 without a
        Trainer or a JustModel."""
        module = getattr(self.trainer, "lightning_module", None)
        frontend = getattr(getattr(module, "model", None), "frontend", None)
        return int(getattr(frontend, "min_input_frames", 1))

    def train_dataloader(self):
        from just_asr.data.loader import make_train_dataloader
        from just_asr.data.sampling import LanguageStats, temperature_mux

        hp = self.hparams
        world_size, rank = self._world()
        if hp.shar_dir is not None:
            from just_asr.data.shar import make_shar_train_dataloader

            loader = make_shar_train_dataloader(
                self.shar_index(), self.langs, hp.train_split, self.tokenizer, max_duration=hp.max_duration,
                temperature=hp.temperature, unit=hp.sampling_unit, num_workers=hp.num_workers,
                world_size=world_size, rank=rank, seed=hp.seed, spec_augment=self._spec_augment(), cmvn=hp.cmvn,
                feature_source=hp.feature_source, num_buckets=hp.num_buckets, max_cuts=hp.max_cuts,
                min_frames=self._min_frames(),
            )
            self._train_loader = loader
            resume = getattr(self, "_apply_resume", None)
            if resume is not None:  # the Shar stream cannot skip batches: this warns when resuming
                resume(loader)
            return loader
        common = dict(
            max_duration=hp.max_duration, num_workers=hp.num_workers, world_size=world_size, rank=rank,
            seed=hp.seed, spec_augment=self._spec_augment(), cmvn=hp.cmvn, feature_source=hp.feature_source,
            num_buckets=hp.num_buckets, max_cuts=hp.max_cuts, min_frames=self._min_frames(),
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
        self._apply_resume(loader)
        return loader

    def dev_cuts(self):
        """The dev cuts of every language (eager; capped by ``max_dev_cuts_per_lang``)."""
        from lhotse import CutSet

        from just_asr.data.mls import load_manifests

        cap = self.hparams.max_dev_cuts_per_lang
        parts = []
        index = self.shar_index()
        for lang in self.langs:
            split = self.hparams.dev_split
            if index is not None and (index.has(lang, split) or self.manifest_dir is None):
                from just_asr.data.shar import read_shar_cuts

                cuts = read_shar_cuts(index, lang, split, self.hparams.feature_source)
            else:
                cuts = load_manifests(self.manifest_dir, lang, split, lazy=False)
            if cap is not None and len(cuts) > cap:  # (lhotse's subset refuses first=0: an empty dev set)
                cuts = cuts.subset(first=cap)
            parts.append(cuts)
        return CutSet.from_cuts(c for cs in parts for c in cs)

    def val_dataloader(self):
        from just_asr.data.loader import make_eval_dataloader

        hp = self.hparams
        world_size, rank = self._world()
        with warnings.catch_warnings():  # the dev set is small and read eagerly on purpose
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
            self._val_loader = make_eval_dataloader(
                self.dev_cuts(), self.tokenizer, max_duration=hp.eval_max_duration or hp.max_duration,
                num_workers=hp.num_workers, world_size=world_size, rank=rank, cmvn=hp.cmvn,
                feature_source=hp.feature_source, min_frames=self._min_frames(),
            )
        return self._val_loader

    def data_issues(self) -> dict[str, Any]:
        """The input problems this process's loaders met so far, by stream: ``{"train": collector,
        "dev": collector}`` (:class:`~just_asr.data.errors.ErrorCollector`; a stream whose loader was
        not built is absent). Issues found in DataLoader workers are included (they come back with
        the batches). Read by :class:`just_asr.train.callbacks.DataIssueReport`."""
        out = {}
        for name, loader in (("train", self._train_loader), ("dev", self._val_loader)):
            errors = getattr(loader, "errors", None)
            if errors is not None:
                out[name] = errors
        return out

    # ------------------------------------------------------------------ exact resume
    #: training batches the fit loop has taken from the stream (all ranks take the same number)
    _batches_consumed: int = 0
    #: batches to skip when the training loader is (re)built after a checkpoint was loaded
    _resume_batches: int | None = None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count the training batches the loop actually uses (Lightning calls this for each batch it
        trains on, not for those the DataLoader or Lightning fetched ahead). A batch of the training
        stream carries its ``stream_index`` (taken out of the batch here): the count is then that
        index + 1, so batches the loader left out as unusable are counted as consumed too and a
        resumed run does not read them again. Under DDP the checkpoint holds rank 0's count: a rank
        that left out more or fewer batches than rank 0 replays or skips that many after a resume."""
        index = batch.pop("stream_index", None) if isinstance(batch, dict) else None
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            self._batches_consumed = int(index) + 1 if index is not None else self._batches_consumed + 1
        return batch

    def _stream_fingerprint(self) -> dict[str, Any]:
        """The settings that decide the order of the training batches (plain types only)."""
        hp = self.hparams
        world_size, _ = self._world()
        return {
            "langs": list(self.langs), "train_split": str(hp.train_split), "max_duration": float(hp.max_duration),
            "max_cuts": hp.max_cuts, "num_buckets": int(hp.num_buckets), "temperature": float(hp.temperature),
            "sampling_unit": str(hp.sampling_unit), "seed": int(hp.seed),
            "untranscribed": [str(p) for p in (hp.untranscribed or [])],
            "untranscribed_ratio": float(hp.untranscribed_ratio), "world_size": int(world_size),
            "shar_dir": None if hp.get("shar_dir") is None else str(hp.get("shar_dir")),
        }

    def state_dict(self) -> dict[str, Any]:
        """Saved in Lightning checkpoints: how far into the training stream the run is (in batches),
        and the settings that stream depends on. Plain types only (loads with ``weights_only=True``)."""
        return {"train_batches_consumed": int(self._batches_consumed), "train_stream": self._stream_fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the training stream where the checkpoint left it: the next training loader skips
        the batches already consumed (re-reading cut manifests only, no audio) and continues with
        exactly the batch an uninterrupted run would have read next. If the data settings differ
        from the checkpoint's, the same number of batches is skipped but a warning says that the
        stream is not the one the checkpoint saw."""
        n = int(state_dict.get("train_batches_consumed", 0))
        saved = state_dict.get("train_stream")
        if saved is not None:
            now = self._stream_fingerprint()
            changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            if changed:
                diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
                warnings.warn(
                    f"resume: the training data settings changed since the checkpoint ({diffs}); skipping its "
                    f"{n} consumed batches, but the resumed stream is not the one the checkpoint was reading",
                    stacklevel=2,
                )
        self._batches_consumed = n
        self._resume_batches = n
        if self._train_loader is not None:
            self._apply_resume(self._train_loader)

    def _apply_resume(self, loader: Any) -> None:
        n = self._resume_batches
        if n is None:
            return
        sampler = getattr(loader, "sampler", None)
        if not hasattr(sampler, "resume_from"):
            warnings.warn(f"resume: the training loader's sampler ({type(sampler).__name__}) cannot skip the "
                          f"{n} batches already consumed; the stream restarts", stacklevel=2)
        else:
            sampler.resume_from(n)
            log.info("resume: the training stream continues after %d consumed batches", n)
        self._resume_batches = None
