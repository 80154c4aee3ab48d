"""Sharded corpora in lhotse's Shar format, for MLS-scale training that streams from disk or object storage.

A corpus the size of MLS (about 50k hours, millions of files) cannot be read by random access
from network storage at training speed. ``just-asr export-shar`` (:func:`export_shar`) rewrites
the cut manifests of ``just-asr prepare-mls`` into lhotse Shar shards: for every language and
split, a sequence of shards, each one ``cuts.NNNNNN.jsonl.gz`` (the cut metadata, transcripts
included) plus one tar file per data field, ``recording.NNNNNN.tar`` (the audio of each cut,
re-encoded as FLAC by default) and/or ``features.NNNNNN.tar`` (the 80-d log-mel fbank of
:mod:`just_asr.data.features`, lilcom-compressed). Training reads a shard from its first byte
to its last; nothing is ever looked up.

Layout written under ``OUT``::

    OUT/shar_index.json
    OUT/<iso>/<split>/cuts.000000.jsonl.gz
    OUT/<iso>/<split>/recording.000000.tar      (fields "audio" or "both")
    OUT/<iso>/<split>/features.000000.tar       (fields "features" or "both")
    ...

``shar_index.json`` (:class:`SharIndex`) lists, per language and split, the shard files (paths
relative to the index), the number of cuts and hours (so training needs no counting pass for
the language-sampling weights), and the fields present. Exporting more languages or splits into
the same folder later adds them to the index.

Reading for training (:func:`make_shar_train_dataloader`, used by ``JustDataModule`` when
``data.shar_dir`` is set):

* every data-loading *slot* (``rank * num_workers + worker``, ``world_size * num_workers`` slots
  in all) reads its own shards: at each pass ("epoch") over a language the shard list is
  shuffled with ``seed + epoch`` (the same order on every slot) and slot ``s`` takes shards
  ``s, s + slots, s + 2 * slots, ...``. So one pass over a language gives every cut to exactly one
  slot of one rank (:func:`slot_cuts`). A language with fewer shards than slots is split by cut
  instead (every slot reads all of its shards and keeps every ``slots``-th cut), still a
  partition, at the cost of reading that language's shards on every slot;
* the languages are mixed with temperature weights (:mod:`just_asr.data.sampling`; cut counts and
  hours come from the index) by a per-slot seeded draw, each language repeating endlessly
  (train with ``trainer.max_steps``);
* batches are made *inside* each DataLoader worker by lhotse's ``DynamicBucketingSampler``
  (``world_size=1`` there: the split already happened at the shard level) and turned into the
  batch dict of docs/architecture.md by the same :class:`~just_asr.data.dataset.AsrDataset`.
  The loader is a ``torch.utils.data.IterableDataset`` (lhotse's ``IterableDatasetWrapper``), so
  Lightning never replaces its sampler.

Limitations: the Shar training stream does not support the exact mid-epoch resume of
:class:`~just_asr.data.loader.ResumableSampler` (a resumed run restarts the stream with its seed),
and the ranks do not synchronise the duration bucket they draw from (each rank's batches are
bucketed on their own).
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np
import torch.utils.data

from just_asr.data.errors import ErrorCollector

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import CutSet
    from lhotse.cut import Cut

    from just_asr.data.augment import SpecAugment
    from just_asr.data.features import GlobalCMVN
    from just_asr.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

#: name of the index file at the root of an exported Shar folder
INDEX_NAME = "shar_index.json"
#: ``format`` value of the index
INDEX_FORMAT = "just-asr-shar"
INDEX_VERSION = 1
#: ``--fields`` choices -> the lhotse Shar fields written
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "audio": ("recording",),
    "features": ("features",),
    "both": ("recording", "features"),
}
#: audio encodings accepted for the ``recording`` field
AUDIO_FORMATS = ("flac", "wav", "opus")


# ---------------------------------------------------------------------------------------- index
@dataclass
class SharSet:
    """One language and split of an exported corpus.

    Attributes:
        lang: ISO code.
        split: ``train``, ``dev``, ``test``, ``train-9hr``, ...
        num_cuts: cuts over all shards.
        hours: audio hours over all shards.
        shards: per shard, field name (``cuts``, ``recording``, ``features``) -> path relative to
            the index folder.
        shard_size: cuts per shard this set was exported with (0 when unknown).
    """

    lang: str
    split: str
    num_cuts: int
    hours: float
    shards: list[dict[str, str]] = field(default_factory=list)
    shard_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"num_cuts": self.num_cuts, "hours": self.hours, "shard_size": self.shard_size, "shards": self.shards}


@dataclass
class SharIndex:
    """The contents of ``shar_index.json`` (see the module docstring).

    ``root`` is the folder (or URL prefix, e.g. ``s3://bucket/mls-shar``) the shard paths are
    relative to; :meth:`shard_fields` gives the full paths lhotse opens.
    """

    root: str
    fields: tuple[str, ...]
    shard_size: int
    audio_format: str | None
    sets: dict[tuple[str, str], SharSet] = field(default_factory=dict)

    # ------------------------------------------------------------------ (de)serialisation
    @property
    def path(self) -> str:
        return _join(self.root, INDEX_NAME)

    def to_dict(self) -> dict[str, Any]:
        langs: dict[str, dict[str, Any]] = {}
        for (lang, split), s in sorted(self.sets.items()):
            langs.setdefault(lang, {})[split] = s.to_dict()
        return {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "fields": list(self.fields),
            "shard_size": self.shard_size,
            "audio_format": self.audio_format,
            "sets": langs,
        }

    def save(self) -> Path:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, where: str | Path) -> "SharIndex":
        """Read the index of the Shar folder ``where`` (a folder, a URL prefix, or the index file).

        Raises ``ValueError`` naming the file for a missing, unreadable or malformed index.
        """
        where = str(where)
        if where.endswith(".json"):
            path, root = where, where.rsplit("/", 1)[0] if "/" in where else "."
        else:
            root = where.rstrip("/") or "/"
            path = _join(root, INDEX_NAME)
        try:
            text = _read_text(path)
        except FileNotFoundError:
            raise ValueError(f"{path}: Shar index not found (write it with just-asr export-shar)") from None
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the Shar index ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
        return cls.from_dict(data, root=root, source=path)

    @classmethod
    def from_dict(cls, data: Any, root: str, source: str = INDEX_NAME) -> "SharIndex":
        def bad(problem: str) -> ValueError:
            return ValueError(f"{source}: {problem}")

        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            raise bad(f"not a just-asr Shar index (expected \"format\": \"{INDEX_FORMAT}\")")
        if int(data.get("version", -1)) != INDEX_VERSION:
            raise bad(f"unsupported index version {data.get('version')!r} (this just-asr reads {INDEX_VERSION})")
        fields = tuple(data.get("fields") or ())
        if not fields or any(f not in ("recording", "features") for f in fields):
            raise bad(f"\"fields\" must list recording and/or features, got {list(fields)}")
        sets: dict[tuple[str, str], SharSet] = {}
        for lang, splits in (data.get("sets") or {}).items():
            if not isinstance(splits, dict):
                raise bad(f"sets.{lang} must map split names to shard lists")
            for split, entry in splits.items():
                where = f"sets.{lang}.{split}"
                try:
                    shards = [dict(s) for s in entry["shards"]]
                    num_cuts, hours = int(entry["num_cuts"]), float(entry["hours"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise bad(f"{where}: needs shards, num_cuts and hours ({exc})") from None
                for i, s in enumerate(shards):
                    missing = [f for f in ("cuts", *fields) if f not in s]
                    if missing:
                        raise bad(f"{where}.shards[{i}] lacks the field(s) {', '.join(missing)}")
                sets[(lang, split)] = SharSet(lang, split, num_cuts, hours, shards, int(entry.get("shard_size") or 0))
        return cls(root=root, fields=fields, shard_size=int(data.get("shard_size") or 0),
                   audio_format=data.get("audio_format"), sets=sets)

    # ------------------------------------------------------------------ queries
    def get(self, lang: str, split: str) -> SharSet:
        """The :class:`SharSet` of ``lang``/``split``; ``ValueError`` naming the index if absent."""
        s = self.sets.get((lang, split))
        if s is None:
            have = ", ".join(f"{l}/{sp}" for l, sp in sorted(self.sets)) or "nothing"
            raise ValueError(f"{self.path}: no Shar shards for language {lang!r}, split {split!r} (the index has {have})")
        if not s.shards:
            raise ValueError(f"{self.path}: language {lang!r}, split {split!r} has no shards (no usable cuts were exported)")
        return s

    def has(self, lang: str, split: str) -> bool:
        return (lang, split) in self.sets

    def shard_fields(self, shard: Mapping[str, str], fields: Iterable[str]) -> dict[str, str]:
        """Full paths of one shard's ``cuts`` file and of the requested data ``fields``."""
        return {f: _join(self.root, shard[f]) for f in ("cuts", *fields)}

    def read_fields(self, feature_source: str) -> tuple[str, ...]:
        """The Shar fields a training/eval stream with ``feature_source`` must read.

        ``auto``: the stored features when exported, else the audio; ``precomputed``: the
        features; ``on-the-fly`` / ``seamless``: the audio. Only what is needed is read (reading the
        features alone skips the audio tar files)."""
        have = set(self.fields)
        if feature_source == "auto":
            return ("features",) if "features" in have else ("recording",)
        need = "features" if feature_source == "precomputed" else "recording"
        if need not in have:
            kind = "features (--fields features or both)" if need == "features" else "audio (--fields audio or both)"
            raise ValueError(f"{self.path}: feature_source {feature_source!r} needs {kind}, but the shards hold only "
                             f"{', '.join(self.fields)}")
        return (need,)


def _join(root: str, rel: str) -> str:
    if "://" in root or root.startswith("pipe:"):
        return root.rstrip("/") + "/" + rel
    return str(Path(root) / rel)


def _read_text(path: str) -> str:
    if "://" in path or path.startswith("pipe:"):
        from lhotse.serialization import open_best

        with open_best(path, "r") as f:
            return f.read()
    return Path(path).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------- export
@dataclass
class ExportReport:
    """What :func:`export_shar` wrote: per ``(lang, split)`` the number of cuts, and the index."""

    index: SharIndex
    written: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: ErrorCollector | None = None


def _features_for(cut: "Cut") -> tuple[str, np.ndarray | None, tuple[str | None, str] | None]:
    """Worker: ``(cut id, (T, 80) float32 fbank or None, (path, problem) when it failed)``."""
    from just_asr.data.audio import AudioError, cut_audio_path
    from just_asr.data.features import cut_features

    try:
        return cut.id, cut_features(cut, "on-the-fly").numpy(), None
    except AudioError as exc:
        return cut.id, None, (exc.path or cut_audio_path(cut), exc.problem)


def _with_memory_features(cut: "Cut", feats: np.ndarray) -> "Cut":
    """``cut`` with ``feats (T, 80)`` attached as lilcom-compressed in-memory features."""
    from lhotse import Features
    from lhotse.features.io import MemoryLilcomWriter
    from lhotse.utils import fastcopy

    from just_asr.data.audio import SAMPLE_RATE
    from just_asr.data.features import FRAME_SHIFT

    with MemoryLilcomWriter() as w:
        blob = w.write(cut.id, np.ascontiguousarray(feats, dtype=np.float32))
    features = Features(
        type="kaldi-fbank", num_frames=int(feats.shape[0]), num_features=int(feats.shape[1]),
        frame_shift=FRAME_SHIFT, sampling_rate=SAMPLE_RATE, start=cut.start, duration=cut.duration,
        storage_type=MemoryLilcomWriter.name, storage_path="", storage_key=blob,
        recording_id=cut.recording_id if cut.has_recording else None, channels=0,
    )
    return fastcopy(cut, features=features)


def _write_problem(cut: "Cut", exc: Exception) -> str:
    """One line on why lhotse could not write ``cut``: lhotse's audio errors run to several lines
    (every backend tried, the calls made), so the audio is read again with the project's own loader,
    whose errors say what is wrong with the file; otherwise the first line of lhotse's message."""
    from just_asr.data.audio import AudioError, load_cut_audio

    try:
        load_cut_audio(cut)
    except AudioError as audio_exc:
        return audio_exc.problem
    except Exception:  # noqa: BLE001 - the first line of lhotse's message below
        pass
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _chunks(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(it)
    while True:
        chunk = list(itertools.islice(it, n))
        if not chunk:
            return
        yield chunk


def export_shar(
    manifest_dir: str | Path,
    out_dir: str | Path,
    *,
    langs: list[str] | str | None = None,
    splits: Iterable[str] = ("train", "dev"),
    fields: str = "audio",
    audio_format: str = "flac",
    shard_size: int = 1000,
    jobs: int = 1,
    errors: ErrorCollector | None = None,
    progress: bool = False,
) -> ExportReport:
    """Write the cut manifests of ``manifest_dir`` as Shar shards under ``out_dir`` (see the module docstring).

    Args:
        manifest_dir: folder of ``just-asr prepare-mls`` (``mls-<iso>_cuts_<split>.jsonl.gz``).
        out_dir: output folder; ``<iso>/<split>/`` shards and ``shar_index.json`` go there (an
            existing index is extended; the language/split entries written now replace old ones).
        langs: ISO codes / MLS names (``None``: every language).
        splits: the splits to export.
        fields: ``audio`` (the cut's audio, re-encoded), ``features`` (fbank computed exactly as in
            training, lilcom), or ``both``.
        audio_format: ``flac`` (lossless; default), ``wav`` or ``opus``.
        shard_size: cuts per shard (the unit of shuffling and of the split between ranks/workers;
            keep ``num_shards >= GPUs * workers`` for the large languages).
        jobs: processes for feature extraction.
        errors: collector for unreadable audio (default: ``skip`` policy, report and leave out).
        progress: print one line per language and split.

    Cuts are streamed (the manifests are read lazily), so memory does not grow with the corpus.
    """
    from lhotse.shar import SharWriter

    from just_asr.data.languages import resolve_languages
    from just_asr.data.mls import load_manifests

    if fields not in FIELD_CHOICES:
        raise ValueError(f"fields must be one of {', '.join(FIELD_CHOICES)}, got {fields!r}")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {', '.join(AUDIO_FORMATS)}, got {audio_format!r}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    errors = errors if errors is not None else ErrorCollector("skip")
    out = Path(out_dir)
    field_names = FIELD_CHOICES[fields]
    writer_fields = {"recording": audio_format, "features": "lilcom"}
    writer_fields = {k: v for k, v in writer_fields.items() if k in field_names}
    index_path = out / INDEX_NAME
    if index_path.is_file():
        index = SharIndex.load(out)
        if set(index.fields) != set(field_names):
            raise ValueError(f"{index_path}: existing shards hold {', '.join(index.fields)}; cannot add shards with "
                             f"{', '.join(field_names)} to the same folder (use another output folder)")
    else:
        index = SharIndex(root=str(out), fields=field_names, shard_size=shard_size,
                          audio_format=audio_format if "recording" in field_names else None)
    index.root = str(out)
    index.shard_size = shard_size  # the latest export's; each set records its own
    report = ExportReport(index=index, errors=errors)
    pool = None
    if "features" in field_names and jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(jobs)
    try:
        for lang in [l.iso for l in resolve_languages(langs)]:
            for split in splits:
                cuts = load_manifests(manifest_dir, lang, split)  # ValueError naming the file when missing
                set_dir = out / lang / split
                for old in set_dir.glob("*.*"):  # a re-export replaces the old shards
                    if old.name.startswith(("cuts.", "recording.", "features.")):
                        old.unlink()
                set_dir.mkdir(parents=True, exist_ok=True)
                n = 0
                secs = 0.0
                with SharWriter(set_dir, fields=writer_fields, shard_size=shard_size, warn_unused_fields=False) as w:
                    for chunk in _chunks(cuts, 64):
                        if "features" in field_names:
                            results = pool.map(_features_for, chunk) if pool is not None else map(_features_for, chunk)
                            ready = []
                            for cut, (_, feats, err) in zip(chunk, results):
                                if feats is None:
                                    path, problem = err or (None, "feature extraction failed")
                                    errors.report(path or f"cut {cut.id}", problem)
                                    continue
                                ready.append(_with_memory_features(cut, feats))
                        else:
                            ready = chunk
                        for cut in ready:
                            try:
                                w.write(cut)  # loads the audio first: a failure writes nothing
                            except Exception as exc:  # noqa: BLE001 - reported with the file, the cut is skipped
                                from just_asr.data.dataset import cut_source

                                errors.report(cut_source(cut), f"cannot export cut {cut.id} ({_write_problem(cut, exc)})")
                                continue
                            n += 1
                            secs += float(cut.duration)
                    paths = w.output_paths
                shards = []
                for i, cuts_path in enumerate(paths.get("cuts", [])):
                    entry = {"cuts": str(Path(cuts_path).relative_to(out))}
                    for f in field_names:
                        entry[f] = str(Path(paths[f][i]).relative_to(out))
                    shards.append(entry)
                index.sets[(lang, split)] = SharSet(lang, split, n, secs / 3600.0, shards, shard_size)
                report.written[(lang, split)] = n
                index.save()  # after every set, so an interrupted export leaves a usable index
                if progress:
                    print(f"{lang}/{split}: {n} cuts, {secs / 3600:.2f} h in {len(shards)} shards -> {set_dir}", flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
    return report


# ---------------------------------------------------------------------------------------- reading
def slot_of(rank: int, world_size: int) -> tuple[int, int]:
    """``(slot, num_slots)`` of the calling process: ``rank * num_workers + worker`` of
    ``world_size * num_workers`` (a process outside a DataLoader worker counts as worker 0 of 1)."""
    info = torch.utils.data.get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world_size * nw


def epoch_shard_order(num_shards: int, epoch: int, seed: int, shuffle: bool = True) -> list[int]:
    """Shard indices in the order of pass ``epoch`` (the same on every rank and worker)."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def slot_cuts(
    index: SharIndex,
    shar_set: SharSet,
    fields: tuple[str, ...],
    *,
    epoch: int,
    slot: int,
    num_slots: int,
    seed: int = 0,
    shuffle_shards: bool = True,
) -> Iterator["Cut"]:
    """The cuts slot ``slot`` of ``num_slots`` reads in pass ``epoch`` over ``shar_set``.

    Over ``slot = 0 .. num_slots - 1`` these partition the set's cuts (every cut exactly once).
    With at least ``num_slots`` shards the split is by shard (each slot reads only its shards);
    otherwise by cut position in the pass (every slot reads all shards, keeps every
    ``num_slots``-th cut). Shards are read sequentially, lazily, through lhotse's Shar reader.
    """
    from lhotse import CutSet

    if not 0 <= slot < num_slots:
        raise ValueError(f"slot must be in [0, {num_slots}), got {slot}")
    order = epoch_shard_order(len(shar_set.shards), epoch, seed, shuffle_shards)
    by_shard = len(order) >= num_slots
    mine = order[slot::num_slots] if by_shard else order
    if not mine:
        return
    paths = [index.shard_fields(shar_set.shards[i], fields) for i in mine]
    cuts = CutSet.from_shar(fields={f: [p[f] for p in paths] for f in ("cuts", *fields)})
    for i, cut in enumerate(cuts):
        if by_shard or i % num_slots == slot:
            yield cut


class ShardedCutStream:
    """A lazy, picklable cut stream over the Shar shards of several languages (lhotse ``CutSet`` data).

    Each iteration works out its slot (:func:`slot_of`; ``rank``/``world_size`` are fixed at
    construction, the DataLoader worker is read when iterating) and yields, for ``infinite``,
    an endless mix: each next cut comes from language ``l`` with probability ``weights[l]``
    (drawn by a ``random.Random`` seeded from ``seed`` and the slot), each language cycling through
    its passes (:func:`slot_cuts` with epoch 0, 1, 2, ...). With ``infinite=False`` it yields one
    pass over each language in turn (no mixing): used to check the partition.

    ``cut_filter``: optional predicate; cuts for which it is false are skipped.
    """

    def __init__(
        self,
        index: SharIndex,
        langs: list[str],
        split: str,
        fields: tuple[str, ...],
        weights: Mapping[str, float] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_shards: bool = True,
        infinite: bool = True,
        cut_filter: Any = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.index = index
        self.langs = list(langs)
        self.sets = {l: index.get(l, split) for l in self.langs}
        self.fields = tuple(fields)
        self.weights = dict(weights) if weights is not None else {l: 1.0 for l in self.langs}
        if not self.langs:
            raise ValueError("no languages to read")
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.shuffle_shards, self.infinite, self.cut_filter = shuffle_shards, infinite, cut_filter

    def _lang_seed(self, lang: str) -> int:
        return self.seed + zlib.crc32(lang.encode())  # stable across processes (unlike hash())

    def _passes(self, lang: str, slot: int, num_slots: int) -> Iterator["Cut"]:
        for epoch in itertools.count():
            n = 0
            for cut in slot_cuts(self.index, self.sets[lang], self.fields, epoch=epoch, slot=slot,
                                 num_slots=num_slots, seed=self._lang_seed(lang), shuffle_shards=self.shuffle_shards):
                if self.cut_filter is None or self.cut_filter(cut):
                    n += 1
                    yield cut
            if not self.infinite:
                return
            if n == 0:
                raise ValueError(f"{self.index.path}: language {lang!r} gave no usable cut to data-loading slot "
                                 f"{slot} of {num_slots} (too few cuts for this many ranks x workers?)")

    def __iter__(self) -> Iterator["Cut"]:
        slot, num_slots = slot_of(self.rank, self.world_size)
        if not self.infinite:
            for lang in self.langs:
                yield from self._passes(lang, slot, num_slots)
            return
        streams = {l: self._passes(l, slot, num_slots) for l in self.langs}
        if len(self.langs) == 1:
            yield from streams[self.langs[0]]
            return
        rng = random.Random(self.seed * 7_919 + slot)
        langs = self.langs
        w = [float(self.weights[l]) for l in langs]
        while True:
            yield next(streams[rng.choices(langs, weights=w)[0]])


def _duration_bins(index: SharIndex, sets: Mapping[str, SharSet], weights: Mapping[str, float], num_buckets: int,
                   max_cuts: int) -> list[float]:
    """Bucket edges from the cut *metadata* of the first shards (no audio is read), each language
    contributing in proportion to its mux weight."""
    from lhotse import CutSet
    from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

    sample = []
    for lang, s in sets.items():
        want = max(num_buckets, int(round(weights[lang] * max_cuts)))
        got = 0
        for shard in s.shards:
            for cut in CutSet.from_jsonl_lazy(index.shard_fields(shard, ())["cuts"]):
                sample.append(cut)
                got += 1
                if got >= want:
                    break
            if got >= want:
                break
    if len(sample) < num_buckets:
        raise ValueError(f"{index.path}: {len(sample)} cuts are too few for {num_buckets} duration buckets "
                         "(lower data.num_buckets)")
    return list(estimate_duration_buckets(CutSet.from_cuts(sample), num_buckets=num_buckets))


class _AllOf:
    """A cut predicate true when all of ``predicates`` are (picklable, for DataLoader workers)."""

    def __init__(self, predicates: tuple) -> None:
        self.predicates = predicates

    def __call__(self, cut: Any) -> bool:
        return all(p(cut) for p in self.predicates)


def make_shar_train_dataloader(
    index: SharIndex | str | Path,
    langs: list[str],
    split: str,
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
    cmvn: "GlobalCMVN | str | Path | None" = None,
    feature_source: str = "auto",
    num_buckets: int = 10,
    max_cuts: int | None = None,
    buffer_size: int = 20000,
    num_cuts_for_bins_estimate: int = 5000,
    on_unknown_chars: str = "skip",
    errors: ErrorCollector | None = None,
    min_frames: int = 1,
) -> torch.utils.data.DataLoader:
    """The training DataLoader over Shar shards (an endless stream; see the module docstring).

    Arguments are those of :func:`just_asr.data.loader.make_train_dataloader`; ``index`` is a
    :class:`SharIndex` or the Shar folder. Each of the ``world_size`` ranks (and each DataLoader
    worker) reads its own shards, so ``rank``/``world_size`` must be the true distributed ones.
    Returns a DataLoader of batch dicts (docs/architecture.md) with ``loader.language_mix`` and
    ``loader.errors`` (the issues found in DataLoader workers, where the filters run here too,
    come back with the batches and are gathered and logged there).
    """
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
    from lhotse.dataset.iterable_dataset import IterableDatasetWrapper

    from just_asr.data.dataset import AsrDataset
    from just_asr.data.loader import SkipEmptyBatches, _load_cmvn, _LongEnoughFilter, _SpellableFilter, check_loader_args
    from just_asr.data.sampling import LanguageStats, language_mix

    check_loader_args(rank, world_size, max_duration, feature_source, cmvn)
    index = index if isinstance(index, SharIndex) else SharIndex.load(index)
    fields = index.read_fields(feature_source)
    sets = {l: index.get(l, split) for l in langs}
    for l, s in sets.items():
        if s.num_cuts == 0:
            raise ValueError(f"{index.path}: language {l!r}, split {split!r} has no cuts")
    stats = {l: LanguageStats(s.num_cuts, s.hours) for l, s in sets.items()}
    mix = language_mix(stats, temperature, unit)
    if rank == 0:
        print(mix.describe(), flush=True)
    slots = world_size * max(1, num_workers)
    for l, s in sets.items():
        if len(s.shards) < slots:
            logger.warning("%s: %s/%s has %d shards for %d data-loading slots (ranks x workers): split by cut, "
                           "every slot reads all of its shards", index.path, l, split, len(s.shards), slots)
    errors = errors if errors is not None else ErrorCollector("skip")
    predicate = _SpellableFilter(tokenizer, errors) if tokenizer is not None and on_unknown_chars == "skip" else None
    if min_frames > 1:
        long_enough = _LongEnoughFilter(min_frames, feature_source, errors)
        predicate = long_enough if predicate is None else _AllOf((predicate, long_enough))
    stream = ShardedCutStream(index, list(langs), split, fields, mix.mux_weights, rank=rank, world_size=world_size,
                              seed=seed, cut_filter=predicate)
    cuts = CutSet(stream)
    common = dict(max_duration=max_duration, max_cuts=max_cuts, shuffle=True, drop_last=True, world_size=1, rank=0,
                  seed=seed)
    if num_buckets >= 2:
        bins = _duration_bins(index, sets, mix.mux_weights, num_buckets, num_cuts_for_bins_estimate)
        sampler = DynamicBucketingSampler(cuts, duration_bins=bins, buffer_size=buffer_size,
                                          sync_buckets=False, **common)
    else:
        sampler = DynamicCutSampler(cuts, **common)
    dataset = AsrDataset(tokenizer, cmvn=_load_cmvn(cmvn), feature_source=feature_source, spec_augment=spec_augment,
                         on_unknown_chars=on_unknown_chars, errors=errors, seed=seed + 7919 * rank,
                         min_frames=min_frames, empty_batch="skip")
    loader = SkipEmptyBatches(
        IterableDatasetWrapper(dataset, sampler),
        errors=errors,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    loader.language_mix = mix  # type: ignore[attr-defined]
    return loader


def read_shar_cuts(index: SharIndex | str | Path, lang: str, split: str, feature_source: str = "auto") -> "CutSet":
    """Every cut of ``lang``/``split`` in shard order, data loaded in memory (an eager CutSet: for
    the small dev and test sets)."""
    from lhotse import CutSet

    index = index if isinstance(index, SharIndex) else SharIndex.load(index)
    s = index.get(lang, split)
    fields = index.read_fields(feature_source)
    cuts = slot_cuts(index, s, fields, epoch=0, slot=0, num_slots=1, shuffle_shards=False)
    return CutSet.from_cuts(list(cuts))
