"""DataLoaders for training and evaluation (wrapped in a LightningDataModule by the train layer).

Training: per-language CutSets are multiplexed with temperature weights
(:func:`just_asr.data.sampling.temperature_mux`, an endless stream: train with a step budget),
optionally filtered (cuts whose text the tokenizer cannot spell are reported and dropped here,
in the main process, where the sampler iterates the cuts), then batched by lhotse's
``DynamicBucketingSampler``: cuts of similar duration share a batch, each batch holds at most
``max_duration`` seconds of audio, and with ``world_size > 1`` every rank gets its own batches
(all ranks read the same seeded stream and take every ``world_size``-th batch).

Evaluation: one pass over the cuts in duration buckets, no shuffling, no dropping.

Both return ``torch.utils.data.DataLoader`` objects yielding the batch dict of
:mod:`just_asr.data.dataset` (``batch_size=None``: the sampler makes the batches).

Exact resume: the training sampler is a :class:`ResumableSampler`. It numbers the batches of the
stream (0, 1, 2, ...) and, after :meth:`ResumableSampler.resume_from` ``n``, regenerates the
seeded stream and skips its first ``n`` batches. Skipping reads only the cut manifests (lhotse
builds the batches from cut metadata); no audio is decoded and no features are computed for them.
SpecAugment's random generator is re-seeded from ``(seed, batch index)`` for every batch, so a
resumed run draws the same masks as an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import torch.utils.data

from just_asr.data.dataset import AsrDataset, LeftOutBatch, cut_source, cut_text
from just_asr.data.errors import DataError, ErrorCollector
from just_asr.data.features import GlobalCMVN, check_feature_source, cut_num_frames
from just_asr.data.sampling import LanguageStats, temperature_mux

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import CutSet

    from just_asr.data.augment import SpecAugment
    from just_asr.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class _SpellableFilter:
    """Predicate for ``CutSet.filter``: keeps cuts the tokenizer can spell, reports the others."""

    def __init__(self, tokenizer: "Tokenizer", errors: ErrorCollector):
        self.tokenizer = tokenizer
        self.errors = errors

    def __call__(self, cut) -> bool:
        text = cut_text(cut)
        if text is None:
            return True
        missing = self.tokenizer.missing_characters(text)
        if not missing:
            return True
        chars = " ".join(f"{c!r} (U+{ord(c):04X})" for c in missing)
        self.errors.report(cut_source(cut), f"transcript of cut {cut.id} has characters the tokenizer lacks: {chars}")
        return False


class _LongEnoughFilter:
    """Predicate for ``CutSet.filter``: keeps cuts with at least ``min_frames`` feature frames (from
    their duration, no audio read), reports the others. Applied before batching, so a batch never
    ends up with nothing usable because its duration bucket held only too-short cuts."""

    def __init__(self, min_frames: int, feature_source: str, errors: ErrorCollector):
        self.min_frames = int(min_frames)
        self.feature_source = feature_source
        self.errors = errors

    def __call__(self, cut) -> bool:
        n = cut_num_frames(cut, self.feature_source)
        if n >= self.min_frames:
            return True
        self.errors.report(cut_source(cut), f"cut {cut.id} is too short: {n} feature frames, fewer than the model's "
                                            f"minimum of {self.min_frames} (duration {cut.duration}s)")
        return False


def _sampler(cuts, num_buckets: int, **kwargs):
    """lhotse's DynamicBucketingSampler, or its unbucketed sibling for fewer than 2 buckets."""
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

    if num_buckets >= 2:
        return DynamicBucketingSampler(cuts, num_buckets=num_buckets, **kwargs)
    for key in ("num_cuts_for_bins_estimate", "buffer_size", "sync_buckets"):
        kwargs.pop(key, None)
    return DynamicCutSampler(cuts, **kwargs)


class ResumableSampler(torch.utils.data.Sampler):
    """Numbers the batches of a lhotse training sampler and can resume the stream mid-epoch.

    Yields ``(index, CutSet)`` pairs, ``index`` counting batches from the start of the stream
    (0-based). :meth:`resume_from` ``(n)`` makes the next iteration regenerate the stream from its
    seed and skip its first ``n`` batches (lhotse's samplers are deterministic for a fixed seed,
    epoch, world size and cut order), so iteration continues with batch ``n``: exactly the batch
    an uninterrupted run would have read next. Skipped batches cost only manifest reading.

    The count of batches a training loop has *consumed* is kept by the caller (the DataModule):
    the DataLoader and Lightning fetch batches ahead, so what this sampler has yielded is not
    what was trained on.

    Args:
        sampler: a lhotse ``CutSampler`` (``DynamicBucketingSampler`` / ``DynamicCutSampler``).
    """

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self._start = 0

    @property
    def start(self) -> int:
        """Index of the first batch the next iteration yields (0 unless resuming)."""
        return self._start

    def resume_from(self, batches_consumed: int) -> None:
        """Make the next iteration continue the stream after its first ``batches_consumed`` batches."""
        if batches_consumed < 0:
            raise ValueError(f"batches_consumed must be >= 0, got {batches_consumed}")
        self._start = int(batches_consumed)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the lhotse sampler (Lightning calls it at each epoch start)."""
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        start = self._start
        it = iter(self.sampler)  # a lhotse sampler restarts its (seeded) epoch on iter()
        for skipped in range(start):
            try:
                next(it)
            except StopIteration:
                logger.warning("resume: the training stream ended after %d of the %d batches to skip; "
                               "starting its next pass", skipped, start)
                self._start = 0
                return
        index = start
        while True:  # not ``for cuts in it``: iter() on a lhotse sampler would restart its epoch
            try:
                cuts = next(it)
            except StopIteration:
                break
            # the skip applies once: a later pass (next epoch of a finite stream) starts at 0
            self._start = 0
            yield index, cuts
            index += 1
        self._start = 0


class SkipEmptyBatches(torch.utils.data.DataLoader):
    """A ``DataLoader`` that drops the batches an :class:`~just_asr.data.dataset.AsrDataset` built
    with ``empty_batch="skip"`` found no usable cut in (a
    :class:`~just_asr.data.dataset.LeftOutBatch`, or ``None`` from another dataset; already
    reported), and gathers the reports its workers make. Training takes the next batch of the
    stream instead of a left-out one, on every rank alike (each rank fetches until it has a
    batch), so data-parallel ranks stay in step; evaluation simply has one batch fewer.

    Reports from workers: a worker's issues come with its batches (``data_issues``, see
    :mod:`just_asr.data.dataset`); they are taken out of the batch, added to ``errors`` (the main
    process's collector, ``loader.errors``) and logged there once. The workers' own copies of the
    collector do not log (the same problem would be printed twice) and send only what they record
    themselves. This is set up in each worker before the ``worker_init_fn`` of the loader runs; that
    attribute itself is left alone, so Lightning still adds its worker seeding when it is ``None``.

    Extra arguments (the rest are ``DataLoader``'s):
        errors: the main process's collector (default: the dataset's ``errors`` if it has one,
            else a new ``skip`` collector).
        max_empty_in_a_row: that many empty batches in a row raise
            :class:`~just_asr.data.errors.DataError` (an endless training stream over data none of
            which can be read would otherwise spin forever); ``None``: no limit (a finite pass).
        require_a_batch: a pass that yields no batch at all raises ``DataError`` at its end (for
            evaluation under DDP: a rank without a single batch would skip the collectives the
            other ranks wait in, and the run would hang instead of stopping).
    """

    def __init__(self, *args, errors: ErrorCollector | None = None, max_empty_in_a_row: int | None = 100,
                 require_a_batch: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if errors is None:
            reporting = _reporting_dataset(self.dataset)
            errors = reporting.errors if reporting is not None else ErrorCollector("skip")
        self.errors = errors
        self.max_empty_in_a_row = max_empty_in_a_row
        self.require_a_batch = require_a_batch

    def _get_iterator(self):
        # the workers start from the iterator made here: they get the reporting set-up, then the
        # loader's own worker_init_fn (whatever it is by now: Lightning sets its seeding just before)
        own = self.worker_init_fn
        self.worker_init_fn = functools.partial(_quiet_worker_collectors, own)
        try:
            return super()._get_iterator()
        finally:
            self.worker_init_fn = own

    def __iter__(self):
        empty = yielded = 0
        for batch in super().__iter__():
            if batch is None or isinstance(batch, LeftOutBatch):
                if batch is not None:
                    self.errors.extend(batch.data_issues)
                empty += 1
                if self.max_empty_in_a_row is not None and empty >= self.max_empty_in_a_row:
                    raise DataError(None, f"{empty} batches in a row had no usable cut: the data cannot be read "
                                          "(see the reports above)")
                continue
            if isinstance(batch, dict):
                self.errors.extend(batch.pop("data_issues", ()))
            empty = 0
            yielded += 1
            yield batch
        if self.require_a_batch and yielded == 0:
            raise DataError(None, "no batch of this pass had a usable cut (see the reports above); with several "
                                  "ranks this one would leave the others waiting")


def _reporting_dataset(dataset):
    """``dataset`` if it has an error collector (``.errors``), else the dataset a wrapper (lhotse's
    ``IterableDatasetWrapper``) holds as ``.dataset`` if that one has; ``None`` otherwise."""
    for obj in (dataset, getattr(dataset, "dataset", None)):
        if isinstance(getattr(obj, "errors", None), ErrorCollector):
            return obj
    return None


def _quiet_worker_collectors(own_init, worker_id: int) -> None:
    """Run first in each worker of a :class:`SkipEmptyBatches`: the dataset's copy of the error
    collector stops logging (:meth:`AsrDataset.start_worker_reports
    <just_asr.data.dataset.AsrDataset.start_worker_reports>`; another dataset's collector is only
    silenced); then the loader's own ``worker_init_fn``, if any, runs."""
    info = torch.utils.data.get_worker_info()
    obj = _reporting_dataset(info.dataset) if info is not None else None
    if isinstance(obj, AsrDataset):
        obj.start_worker_reports()
    elif obj is not None:
        obj.errors.log = False
    if own_init is not None:
        own_init(worker_id)


class _StreamDataset(AsrDataset):
    """:class:`AsrDataset` over ``(index, CutSet)`` items of a :class:`ResumableSampler`: the
    SpecAugment generator is re-seeded from ``(seed, index)`` before each batch, so the masks of
    batch ``index`` do not depend on what came before it (exact resume, any worker count). The
    batch also carries ``stream_index`` (an int: ``index``), from which the DataModule counts the
    batches consumed, batches left out as unusable included."""

    def __getitem__(self, item) -> "dict | LeftOutBatch":
        if isinstance(item, tuple):
            index, cuts = item
            self.reseed(self.seed * 1_000_003 + int(index) * 7_919 + 17)
            batch = super().__getitem__(cuts)
            if isinstance(batch, dict):
                batch["stream_index"] = int(index)
            return batch
        return super().__getitem__(item)


def check_loader_args(rank: int, world_size: int, max_duration: float, feature_source: str, cmvn: object) -> None:
    """The checks every DataLoader builder makes before reading anything (``ValueError``): the rank
    within the world, a positive batch duration, and a known feature source that agrees with
    ``cmvn`` (:func:`just_asr.data.features.check_feature_source`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if max_duration <= 0:
        raise ValueError(f"max_duration must be > 0, got {max_duration}")
    check_feature_source(feature_source, cmvn)


def _load_cmvn(cmvn: GlobalCMVN | str | Path | None) -> GlobalCMVN | None:
    if cmvn is None or isinstance(cmvn, GlobalCMVN):
        return cmvn
    return GlobalCMVN.load(cmvn)


def make_train_dataloader(
    cuts_by_lang: Mapping[str, "CutSet"],
    tokenizer: "Tokenizer | None",
    *,
    max_duration: float,
    temperature: float = 1.0,
    unit: str = "hours",
    num_workers: int = 0,
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    spec_augment: "SpecAugment | None" = None,
    cmvn: GlobalCMVN | str | Path | None = None,
    feature_source: str = "auto",
    num_buckets: int = 10,
    max_cuts: int | None = None,
    quadratic_duration: float | None = None,
    buffer_size: int = 20000,
    shuffle_buffer_size: int = 20000,
    num_cuts_for_bins_estimate: int = 10000,
    on_unknown_chars: str = "skip",
    errors: ErrorCollector | None = None,
    stats: Mapping[str, LanguageStats] | None = None,
    min_frames: int = 1,
) -> torch.utils.data.DataLoader:
    """The training DataLoader over several languages (an endless stream).

    Args:
        cuts_by_lang: ISO code -> CutSet (lazy sets are fine; untranscribed cuts may be mixed in
            as their own "language", e.g. ``"und"``).
        tokenizer: encodes transcripts; ``None`` makes every row untranscribed.
        max_duration: seconds of padded audio per batch (per rank), by lhotse's rule: cuts are
            added while ``(n + 1) * longest`` stays within it, so a batch ends up at most one cut
            over.
        temperature, unit: language sampling (:mod:`just_asr.data.sampling`): ``p(l) ∝
            n_l^(1/τ)`` with ``n_l`` in ``"hours"`` (default) or ``"utterances"``. The effective
            proportions are logged; the :class:`~just_asr.data.sampling.LanguageMix` is at
            ``loader.language_mix``.
        num_workers: DataLoader worker processes (audio decoding and features run there).
        world_size, rank: distributed data parallel partitioning.
        seed: seeds the language mux, the sampler's shuffling and SpecAugment.
        spec_augment: adds ``supervised_features`` to each batch (see :mod:`just_asr.data.dataset`).
        cmvn: a :class:`~just_asr.data.features.GlobalCMVN` or the path of its JSON (must be
            ``None`` with ``feature_source="seamless"``).
        feature_source: ``auto`` | ``precomputed`` | ``on-the-fly`` (lhotse fbank) | ``seamless``
            (the SeamlessM4T recipe an imported w2v-BERT 2.0 encoder was trained on; see
            :mod:`just_asr.data.features`).
        num_buckets, max_cuts, quadratic_duration, buffer_size, shuffle_buffer_size,
            num_cuts_for_bins_estimate: passed to lhotse's ``DynamicBucketingSampler`` (the
            bucket edges are estimated from the first ``num_cuts_for_bins_estimate`` cuts of
            the mixed stream). ``num_buckets < 2`` uses lhotse's unbucketed
            ``DynamicCutSampler``.
        on_unknown_chars: policy for transcripts the tokenizer cannot spell (``skip`` filters them
            here with a report).
        errors: collector for bad cuts (default: a new ``skip`` collector at
            ``loader.errors``).
        stats: per-language cut counts/hours if already known (skips a counting pass).
        min_frames: cuts with fewer feature frames are reported and left out (the model's
            ``frontend.min_input_frames``; :class:`~just_asr.data.dataset.AsrDataset`).

    The loader's sampler is a :class:`ResumableSampler` (``loader.sampler.resume_from(n)`` continues
    the stream after ``n`` batches); SpecAugment is re-seeded per batch from ``(seed, rank, batch
    index)``.
    """
    check_loader_args(rank, world_size, max_duration, feature_source, cmvn)  # before the (possibly long) counting pass
    errors = errors if errors is not None else ErrorCollector("skip")
    cuts, mix = temperature_mux(cuts_by_lang, temperature, unit, seed=seed, stats=stats)
    if rank == 0 and not logging.getLogger("just_asr.data.sampling").isEnabledFor(logging.INFO):
        print(mix.describe(), flush=True)  # the proportions are shown even when INFO logs are off
    if tokenizer is not None and on_unknown_chars == "skip":
        cuts = cuts.filter(_SpellableFilter(tokenizer, errors))
    if min_frames > 1:
        cuts = cuts.filter(_LongEnoughFilter(min_frames, feature_source, errors))
    sampler = _sampler(
        cuts,
        num_buckets,
        max_duration=max_duration,
        max_cuts=max_cuts,
        shuffle=True,
        drop_last=True,
        quadratic_duration=quadratic_duration,
        buffer_size=buffer_size,
        shuffle_buffer_size=shuffle_buffer_size,
        num_cuts_for_bins_estimate=num_cuts_for_bins_estimate,
        world_size=world_size,
        rank=rank,
        seed=seed,
    )
    dataset = _StreamDataset(
        tokenizer,
        cmvn=_load_cmvn(cmvn),
        feature_source=feature_source,
        spec_augment=spec_augment,
        on_unknown_chars=on_unknown_chars,
        errors=errors,
        seed=seed + 7919 * rank,
        min_frames=min_frames,
        empty_batch="skip",
    )
    loader = SkipEmptyBatches(
        dataset,
        errors=errors,
        sampler=ResumableSampler(sampler),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    loader.language_mix = mix  # type: ignore[attr-defined]
    return loader


def read_cut_manifests(paths: Sequence[str | Path]) -> "CutSet":
    """Read lhotse cut manifests eagerly and combine them into one ``CutSet`` (in the given order):
    the evaluation input of ``just-asr decode`` and the decoding benchmarks.

    Raises ``ValueError`` naming the file for a missing or unreadable manifest and for a cut id that
    two manifests share (naming both), and when ``paths`` is empty.
    """
    from lhotse import CutSet
    from lhotse.cut import Cut

    from just_asr.data.mls import not_a_cut_manifest

    if not paths:
        raise ValueError("no cut manifests given")
    sets = []
    seen: dict[str, str] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise ValueError(f"{path}: cut manifest not found")
        try:
            cuts = CutSet.from_file(path)
            if cuts is None:  # lhotse's answer for an empty file
                cuts = CutSet.from_cuts([])
            ids = [c.id for c in cuts]  # some bad lines only fail here
        except Exception as exc:  # lhotse raises many types for a bad manifest
            raise ValueError(f"{path}: not a lhotse cut manifest ({type(exc).__name__}: {exc})") from None
        other = next((c for c in cuts if not isinstance(c, Cut)), None)
        if other is not None:  # lhotse reads a recordings manifest into a "CutSet" of recordings
            raise not_a_cut_manifest(path, other)
        if not ids:
            logger.warning("%s: the cut manifest holds no cuts", path)
        for cid in ids:
            if cid in seen:
                raise ValueError(f"{path}: cut id {cid!r} also appears in {seen[cid]}")
            seen[cid] = str(path)
        sets.append(cuts)
    combined = sets[0]
    for s in sets[1:]:
        combined = combined + s
    return combined


def make_eval_dataloader(
    cuts: "CutSet",
    tokenizer: "Tokenizer | None",
    *,
    max_duration: float,
    num_workers: int = 0,
    world_size: int = 1,
    rank: int = 0,
    cmvn: GlobalCMVN | str | Path | None = None,
    feature_source: str = "auto",
    num_buckets: int = 10,
    on_unknown_chars: str = "unk",
    errors: ErrorCollector | None = None,
    min_frames: int = 1,
) -> torch.utils.data.DataLoader:
    """One ordered pass over ``cuts`` in duration buckets (no shuffle, nothing dropped).

    With ``world_size > 1`` the ranks get disjoint cuts; lhotse evens the ranks out by repeating
    a few cuts with ids ending in ``_dup<k>``: drop those when gathering results.

    ``on_unknown_chars`` defaults to ``"unk"``: an evaluation cut is never silently removed (its
    reference text in ``texts`` is still scored as is). Audio that cannot be read, and cuts with
    fewer than ``min_frames`` feature frames (too short for the model's front end), are reported to
    ``errors`` (``loader.errors``) and left out of their batch; a batch left without a usable cut
    is reported and left out (:class:`SkipEmptyBatches`, no limit on how many; with
    ``world_size > 1`` a rank whose pass yields no batch at all stops with ``DataError``).

    ``cmvn`` and ``feature_source`` are as in :func:`make_train_dataloader` (a model imported from
    w2v-BERT 2.0 is evaluated with ``feature_source="seamless"`` and no CMVN).
    """
    check_loader_args(rank, world_size, max_duration, feature_source, cmvn)
    errors = errors if errors is not None else ErrorCollector("skip")
    if min_frames > 1:
        cuts = cuts.filter(_LongEnoughFilter(min_frames, feature_source, errors))
    n_cuts = sum(1 for _ in cuts)  # evaluation sets are small; lhotse needs buckets <= cuts
    if n_cuts == 0:
        raise ValueError("no cuts to evaluate")
    sampler = _sampler(
        cuts,
        min(num_buckets, n_cuts),
        max_duration=max_duration,
        shuffle=False,
        drop_last=False,
        world_size=world_size,
        rank=rank,
    )
    dataset = AsrDataset(
        tokenizer,
        cmvn=_load_cmvn(cmvn),
        feature_source=feature_source,
        on_unknown_chars=on_unknown_chars,
        errors=errors,
        min_frames=min_frames,
        empty_batch="skip",
    )
    loader = SkipEmptyBatches(
        dataset,
        errors=errors,
        max_empty_in_a_row=None,  # a finite pass: report every batch (decode lists the cuts it lost)
        require_a_batch=world_size > 1,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
    )
    return loader
