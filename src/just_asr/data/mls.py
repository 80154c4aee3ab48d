"""Reading Multilingual LibriSpeech (and the synthetic MLS-format corpus) into lhotse manifests.

Input layout (one folder per language; the Opus release is ``mls_<lang>_opus`` with ``.opus``
files)::

    CORPUS/mls_<lang>[_opus]/
      metainfo.txt                 # "speaker | gender | partition | minutes | book | title | chapter"
      {train,dev,test}/
        transcripts.txt            # "<utt_id>\\t<transcript>"
        segments.txt               # not read: durations come from the audio headers
        audio/<speaker>/<book>/<utt_id>.flac   (.opus)
      train/limited_supervision/9hr/handles.txt
      train/limited_supervision/1hr/{0..5}/handles.txt

Output (``OUT_DIR``, ISO language codes, see docs/architecture.md)::

    mls-<iso>_{recordings,supervisions,cuts}_<split>.jsonl.gz     split in train/dev/test
    mls-<iso>_cuts_train-9hr.jsonl.gz     cuts listed in 9hr/handles.txt
    mls-<iso>_cuts_train-1hr.jsonl.gz     union of the six 1hr folds
    mls-<iso>_cuts_train-10hr.jsonl.gz    9hr ∪ 1hr (the Libri-light style 10 h set)
    prepare_errors.json                   every problem met, with file and line
    features/mls-<iso>_<split>.lca        only with ``compute_features``: lilcom fbank archives

Each utterance becomes a recording (duration read from the audio header, never from
segments.txt), a supervision (text, ``language`` = ISO code, ``speaker``, ``gender`` M/F from
metainfo.txt, also in ``custom["gender"]``) and a cut with the utterance id as its id.

Bad input is reported to an :class:`~just_asr.data.errors.ErrorCollector` and, under the default
``skip`` policy, left out while everything else is kept:

* transcripts.txt: a line without a tab, an empty transcript, a duplicate id, a line that is not
  UTF-8 (file and line number in the message);
* audio: missing, empty, unreadable/corrupt, truncated (caught when ``verify_audio`` decodes every
  file, the default), zero-length, sampling rate below 8 kHz;
* notices (kept): a sampling rate other than 16 kHz (resampled: the recording manifest records
  the native rate plus lhotse's resample transform, and :func:`just_asr.data.audio.load_audio`
  resamples), more than one channel (downmixed), an audio file with no transcript line (unused),
  a limited-supervision handle that names an utterance not in the usable train set.

Characters the tokenizer lacks are not checked here (the tokenizer does not exist yet when
manifests are made); the dataset checks them and reports.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from just_asr.data.audio import SAMPLE_RATE, AudioInfo, probe_many
from just_asr.data.errors import ErrorCollector, OnError
from just_asr.data.languages import Language, get_language, resolve_languages

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "dev", "test")
#: limited-supervision cut sets derived from the train split
LIMITED_SUBSETS: tuple[str, ...] = ("train-9hr", "train-1hr", "train-10hr")
ERRORS_FILE = "prepare_errors.json"


def manifest_path(out_dir: str | Path, lang: str, kind: str, split: str) -> Path:
    """``OUT_DIR/mls-<iso>_<kind>_<split>.jsonl.gz`` (``kind``: recordings, supervisions, cuts)."""
    return Path(out_dir) / f"mls-{get_language(lang).iso}_{kind}_{split}.jsonl.gz"


def load_manifests(manifest_dir: str | Path, lang: str, split: str, *, lazy: bool = True):
    """The cuts of one language and split (``train``, ``dev``, ``test``, ``train-9hr``, ...).

    ``lang``: ISO code or MLS name. ``lazy`` (default) streams the file instead of loading it
    (English train has millions of cuts). Raises ``ValueError`` naming the file when it is missing.
    """
    from lhotse import CutSet

    path = manifest_path(manifest_dir, lang, "cuts", split)
    if not path.is_file():
        have = sorted(p.name for p in Path(manifest_dir).glob("mls-*_cuts_*.jsonl.gz")) if Path(manifest_dir).is_dir() else []
        raise ValueError(f"{path}: cut manifest not found (run just-asr prepare-mls); found: {', '.join(have) or 'none'}")
    manifest = NamedLazyManifest(path)
    return CutSet(manifest) if lazy else CutSet.from_cuts(manifest)


def not_a_cut_manifest(path: str | Path, item: object, line: int | None = None) -> ValueError:
    """The error for a manifest that holds something else than cuts (``item``, found at ``line``
    when known): a recordings or supervisions manifest, which ``prepare-mls`` writes beside the
    cuts and a glob such as ``mls-pl_*.jsonl.gz`` picks up."""
    kinds = {"Recording": "recordings", "SupervisionSegment": "supervisions", "Features": "features"}
    kind = kinds.get(type(item).__name__, type(item).__name__)
    where = f"line {line} holds" if line is not None else "it holds"
    return ValueError(f"{path}: not a cut manifest ({where} {kind}; pass the *_cuts_*.jsonl.gz manifests)")


class NamedLazyManifest:
    """A lazily read lhotse manifest (what ``CutSet.from_jsonl_lazy`` wraps) whose read errors name
    the file: a bad line or a truncated ``.gz`` surfaces only when the stream reaches it, deep in
    a sampler, where lhotse's own error (``JSONDecodeError``, ``EOFError``...) says nothing of
    which file. Raises ``ValueError("<path>: <problem> at line <n> (<lhotse's error>)")`` instead
    (lhotse decodes one line at a time, so its own "line 1" means the n-th); ``problem`` defaults
    to "unreadable cut manifest". A manifest of something else than cuts (a recordings or
    supervisions manifest, which ``prepare-mls`` writes beside the cuts and a glob such as
    ``mls-pl_*.jsonl.gz`` picks up) raises ``ValueError`` saying what it holds."""

    def __init__(self, path: str | Path, problem: str = "unreadable cut manifest") -> None:
        from lhotse.lazy import LazyManifestIterator

        self.path = Path(path)
        self.problem = problem
        self._inner = LazyManifestIterator(path)

    def _error(self, exc: Exception, line: int | None = None) -> ValueError:
        where = f" at line {line}" if line is not None else ""
        if isinstance(exc, json.JSONDecodeError) and line is not None:  # its own "line 1" is within the line
            return ValueError(f"{self.path}: {self.problem}{where}, column {exc.colno} (JSONDecodeError: {exc.msg})")
        return ValueError(f"{self.path}: {self.problem}{where} ({type(exc).__name__}: {exc})")

    def __iter__(self):
        from lhotse.cut import Cut

        it = iter(self._inner)
        line = 0
        while True:
            line += 1
            try:
                item = next(it)
            except StopIteration:
                return
            except Exception as exc:  # lhotse raises many types for a bad manifest
                raise self._error(exc, line) from None
            if not isinstance(item, Cut):
                raise not_a_cut_manifest(self.path, item, line)
            yield item

    def __len__(self) -> int:
        try:
            return len(self._inner)  # reads the whole file
        except Exception as exc:
            raise self._error(exc) from None


@dataclass(frozen=True)
class LanguageDir:
    language: Language
    path: Path
    extensions: tuple[str, ...]  #: audio suffixes read in this folder

    @property
    def opus(self) -> bool:
        return ".opus" in self.extensions


def _parse_folder_name(name: str) -> tuple[str, bool] | None:
    """``mls_polish`` -> ("polish", False); ``mls_polish_opus`` -> ("polish", True)."""
    if not name.startswith("mls_") or "_lm_" in name:
        return None
    rest = name[4:]
    opus = rest.endswith("_opus")
    if opus:
        rest = rest[: -len("_opus")]
    return rest, opus


def find_language_dirs(
    corpus_dir: str | Path, langs: Sequence[str] | str | None = None, audio_format: str = "auto"
) -> list[LanguageDir]:
    """The language folders of an MLS(-format) corpus, in MLS order.

    ``corpus_dir`` holds ``mls_<lang>[_opus]`` folders, or is one. ``audio_format``: ``auto``
    (FLAC folder when a language has both), ``flac`` or ``opus``. Raises ``ValueError`` when a
    requested language (or any language, when none is requested) has no folder.
    """
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise ValueError(f"{corpus_dir}: corpus folder not found")
    if audio_format not in ("auto", "flac", "opus"):
        raise ValueError(f"audio_format must be auto, flac or opus, got {audio_format!r}")
    candidates = [corpus_dir] if _parse_folder_name(corpus_dir.name) else sorted(p for p in corpus_dir.iterdir() if p.is_dir())
    found: dict[str, dict[bool, Path]] = {}
    for d in candidates:
        parsed = _parse_folder_name(d.name)
        if parsed is None:
            continue
        name, opus = parsed
        try:
            lang = get_language(name)
        except ValueError:
            logger.warning("%s: not an MLS language folder; ignored", d)
            continue
        found.setdefault(lang.iso, {})[opus] = d
    wanted = resolve_languages(langs) if langs else [l for l in resolve_languages(None) if l.iso in found]
    if not wanted:
        raise ValueError(f"{corpus_dir}: no mls_<language> folders found")
    out = []
    for lang in wanted:
        variants = found.get(lang.iso, {})
        if audio_format == "flac":
            variants = {k: v for k, v in variants.items() if not k}
        elif audio_format == "opus":
            variants = {k: v for k, v in variants.items() if k}
        if not variants:
            kind = "" if audio_format == "auto" else f" ({audio_format})"
            raise ValueError(f"{corpus_dir}: no folder {lang.folder}{kind} for language {lang.iso}")
        opus = False if False in variants else True
        out.append(LanguageDir(lang, variants[opus], (".opus",) if opus else (".flac",)))
    return out


def read_metainfo(path: Path, errors: ErrorCollector) -> dict[str, str]:
    """Speaker id -> gender (``M``/``F``) from ``metainfo.txt``; bad lines are notices."""
    if not path.is_file():
        errors.warn(path, "metainfo.txt not found: speakers get no gender")
        return {}
    out: dict[str, str] = {}
    for lineno, line in _read_lines(path, errors):
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 2 or not fields[0]:
            errors.warn(path, "expected 'speaker | gender | ...' fields separated by '|'", lineno)
            continue
        spk, gender = fields[0], fields[1].upper()
        if spk.upper() == "SPEAKER":  # the header line of the real MLS files
            continue
        if gender not in ("M", "F"):
            errors.warn(path, f"gender {fields[1]!r} of speaker {spk} is not M or F", lineno)
            continue
        out[spk] = gender
    return out


def _read_lines(path: Path, errors: ErrorCollector) -> Iterable[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; lines that are not UTF-8 are reported."""
    data = path.read_bytes()
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            errors.report(path, f"line is not valid UTF-8 ({exc.reason} at byte {exc.start})", lineno)
            continue
        if line.strip():
            yield lineno, line.lstrip("\ufeff") if lineno == 1 else line


@dataclass(slots=True)
class _Utterance:
    id: str
    text: str
    line: int
    speaker: str


def read_transcripts(path: Path, errors: ErrorCollector) -> list[_Utterance]:
    """Parse ``transcripts.txt`` (``<utt_id>\\t<text>`` per line), reporting bad lines."""
    utts: list[_Utterance] = []
    first_line: dict[str, int] = {}
    for lineno, line in _read_lines(path, errors):
        if "\t" not in line:
            hint = " (the id must be followed by a tab, not spaces)" if " " in line.strip() else ""
            errors.report(path, f"no tab between utterance id and transcript{hint}", lineno)
            continue
        uid, text = line.split("\t", 1)
        uid = uid.strip()
        text = " ".join(text.split())
        if not uid:
            errors.report(path, "empty utterance id", lineno)
            continue
        if not text:
            errors.report(path, f"empty transcript for utterance {uid}", lineno)
            continue
        if uid in first_line:
            errors.report(path, f"duplicate utterance id {uid} (first on line {first_line[uid]})", lineno)
            continue
        first_line[uid] = lineno
        utts.append(_Utterance(uid, text, lineno, uid.split("_")[0]))
    return utts


def index_audio(audio_dir: Path, extensions: tuple[str, ...], errors: ErrorCollector) -> dict[str, str]:
    """Utterance id (file stem) -> audio path for every file under ``audio_dir``."""
    out: dict[str, str] = {}
    exts = {e.lower() for e in extensions}
    if not audio_dir.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(audio_dir):
        dirnames.sort()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in exts:
                continue
            p = os.path.join(dirpath, name)
            if stem in out:
                errors.warn(p, f"second audio file for utterance {stem} (using {out[stem]})")
                continue
            out[stem] = p
    return out


def build_recording(rec_id: str, info: AudioInfo):
    """A lhotse Recording for a probed file; non-16 kHz audio gets lhotse's resample transform so
    that ``recording.sampling_rate == 16000`` downstream (just-asr itself reads the file with
    :func:`~just_asr.data.audio.load_audio`, which resamples the same way inference does)."""
    from lhotse import AudioSource, Recording

    channels = list(range(info.channels))
    rec = Recording(
        id=rec_id,
        sources=[AudioSource(type="file", channels=channels, source=str(Path(info.path).resolve()))],
        sampling_rate=info.sampling_rate,
        num_samples=info.num_frames,
        duration=info.num_frames / info.sampling_rate,
        channel_ids=channels,
    )
    if info.sampling_rate != SAMPLE_RATE:
        rec = rec.resample(SAMPLE_RATE)
    return rec


def build_cut(rec, supervision=None):
    """A cut spanning the whole recording (MultiCut for several channels), id = recording id."""
    from lhotse import MonoCut, MultiCut

    sups = [supervision] if supervision is not None else []
    if len(rec.channel_ids) == 1:
        return MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=rec.channel_ids[0], recording=rec, supervisions=sups)
    return MultiCut(id=rec.id, start=0.0, duration=rec.duration, channel=list(rec.channel_ids), recording=rec, supervisions=sups)


def audio_notices(info: AudioInfo, errors: ErrorCollector, *, opus_expected: bool) -> None:
    """Notices (kept items) for audio that is usable but not 16 kHz mono."""
    is_opus = info.subtype.upper() == "OPUS"
    if info.sampling_rate != SAMPLE_RATE and not (is_opus and opus_expected):
        errors.warn(info.path, f"sampling rate {info.sampling_rate} Hz, not {SAMPLE_RATE} Hz: resampled to {SAMPLE_RATE} Hz")
    if info.channels > 1:
        errors.warn(info.path, f"{info.channels} channels, not mono: downmixed (channel average)")


def read_handles(split_dir: Path, errors: ErrorCollector) -> dict[str, dict[str, tuple[Path, int]]]:
    """Utterance ids of the limited-supervision subsets: ``{"train-9hr": {uid: (file, line)}, "train-1hr": ...}``."""
    base = split_dir / "limited_supervision"
    out: dict[str, dict[str, tuple[Path, int]]] = {}
    groups = {"train-9hr": sorted((base / "9hr").glob("*.txt")), "train-1hr": sorted((base / "1hr").glob("*/*.txt"))}
    for name, files in groups.items():
        if not files:
            continue
        ids: dict[str, tuple[Path, int]] = {}
        for f in files:
            for lineno, line in _read_lines(f, errors):
                uid = line.strip().split()[0]
                ids.setdefault(uid, (f, lineno))
        out[name] = ids
    if out:
        tenh = dict(out.get("train-1hr", {}))
        tenh.update(out.get("train-9hr", {}))
        out["train-10hr"] = tenh
    return out


def _partial(path: Path) -> Path:
    return path.with_name(path.name.replace(".jsonl.gz", ".partial.jsonl.gz"))


def prepare_mls(
    corpus_dir: str | Path,
    out_dir: str | Path,
    langs: Sequence[str] | str | None = None,
    splits: Sequence[str] = SPLITS,
    jobs: int = 1,
    on_error: OnError | str = "skip",
    *,
    verify_audio: bool = True,
    audio_format: str = "auto",
    compute_features: bool = False,
    errors: ErrorCollector | None = None,
    progress: bool = True,
) -> dict:
    """Write the lhotse manifests of an MLS(-format) corpus and return them.

    Args:
        corpus_dir: folder holding ``mls_<lang>[_opus]`` folders (or one such folder).
        out_dir: where the ``.jsonl.gz`` manifests and ``prepare_errors.json`` go.
        langs: languages by ISO code or MLS name (default: every language folder found).
        splits: any of ``train``, ``dev``, ``test``; ``train`` also gives the limited-supervision
            sets ``train-9hr``, ``train-1hr`` and ``train-10hr`` when the corpus has them.
        jobs: processes probing audio files.
        on_error: ``skip`` (report bad items, keep the rest) or ``fail`` (stop at the first).
        verify_audio: decode every file to catch truncated/corrupt audio (slower; default on).
            Off, only headers are read.
        audio_format: ``auto`` (FLAC when a language has both), ``flac`` or ``opus``.
        compute_features: also extract the fbank features now and store them with lilcom under
            ``out_dir/features/`` (the cut manifests then point at them; training reads them
            instead of decoding audio). Off by default: features are computed on the fly.
        errors: a collector to report to (default: a new one with ``on_error``'s policy).

    Returns ``{iso: {split: {"recordings", "supervisions", "cuts"}}}`` for the splits, plus
    ``{iso: {"train-9hr": {"cuts"}, ...}}``; the manifests are lazily opened from ``out_dir``.
    """
    errors = errors if errors is not None else ErrorCollector(on_error)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(splits, str):
        splits = [x for x in splits.replace(",", " ").split() if x]
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"unknown split(s) {bad}; use {', '.join(SPLITS)}")
    result: dict = {}
    try:
        for ldir in find_language_dirs(corpus_dir, langs, audio_format):
            logger.info("MLS %s: reading %s", ldir.language.iso, ldir.path)
            spk2gender = read_metainfo(ldir.path / "metainfo.txt", errors)
            result[ldir.language.iso] = {}
            for split in splits:
                result[ldir.language.iso].update(
                    _prepare_split(
                        ldir, split, out_dir, spk2gender, errors,
                        jobs=jobs, verify_audio=verify_audio, compute_features=compute_features, progress=progress,
                    )
                )
    finally:
        errors.to_json(out_dir / ERRORS_FILE)
    return result


def _prepare_split(
    ldir: LanguageDir,
    split: str,
    out_dir: Path,
    spk2gender: dict[str, str],
    errors: ErrorCollector,
    *,
    jobs: int,
    verify_audio: bool,
    compute_features: bool,
    progress: bool,
) -> dict:
    """Manifests of one language and split (and its limited-supervision subsets for ``train``)."""
    from lhotse import CutSet, RecordingSet, SupervisionSegment, SupervisionSet

    iso = ldir.language.iso
    split_dir = ldir.path / split
    if not split_dir.is_dir():
        errors.warn(split_dir, "split folder not found: no manifests for it")
        return {}
    tpath = split_dir / "transcripts.txt"
    if not tpath.is_file():
        errors.report(tpath, "transcripts file not found: split skipped")
        return {}
    utts = read_transcripts(tpath, errors)
    audio = index_audio(split_dir / "audio", ldir.extensions, errors)
    wanted_ids = {u.id for u in utts}
    for uid in sorted(set(audio) - wanted_ids):
        errors.warn(audio[uid], f"audio file has no line in {tpath.name}: not used")
    present = []
    for u in utts:
        if u.id not in audio:
            errors.report(tpath, f"audio for utterance {u.id} not found (no {u.id}{ldir.extensions[0]} under {split_dir / 'audio'})", u.line)
            continue
        present.append(u)
    present.sort(key=lambda u: u.id)
    handles = read_handles(split_dir, errors) if split == "train" else {}
    subset_cuts: dict[str, list] = {name: [] for name in handles}
    paths = {kind: manifest_path(out_dir, iso, kind, split) for kind in ("recordings", "supervisions", "cuts")}
    # written under a ".partial" name and renamed at the end, so a run stopped by --on-error fail
    # (or a crash) never leaves a manifest that looks complete
    partial = {k: _partial(p) for k, p in paths.items()}
    n_kept = 0
    hours = 0.0
    with RecordingSet.open_writer(partial["recordings"]) as rw, SupervisionSet.open_writer(
        partial["supervisions"]
    ) as sw, CutSet.open_writer(partial["cuts"]) as cw:
        probes = probe_many(
            [audio[u.id] for u in present], jobs=jobs, decode=verify_audio, desc=f"{iso}/{split}", progress=progress
        )
        for u, (path, info, problem) in zip(present, probes):
            if info is None:
                errors.report(path, problem or "unusable audio")
                continue
            audio_notices(info, errors, opus_expected=ldir.opus)
            rec = build_recording(u.id, info)
            gender = spk2gender.get(u.speaker)
            sup = SupervisionSegment(
                id=u.id,
                recording_id=u.id,
                start=0.0,
                duration=rec.duration,
                channel=0 if info.channels == 1 else list(range(info.channels)),
                text=u.text,
                language=iso,
                speaker=u.speaker,
                gender=gender,
                custom={"gender": gender} if gender else None,
            )
            cut = build_cut(rec, sup)
            rw.write(rec)
            sw.write(sup)
            cw.write(cut)
            n_kept += 1
            hours += rec.duration / 3600
            for name, ids in handles.items():
                if u.id in ids:
                    subset_cuts[name].append(cut)
    if compute_features:
        from just_asr.data.features import compute_and_store_features

        stored = compute_and_store_features(
            CutSet.from_jsonl_lazy(partial["cuts"]), out_dir / "features" / f"mls-{iso}_{split}", jobs=jobs, errors=errors
        )
        stored.to_file(partial["cuts"])
        by_id = {c.id: c for c in stored if any(c.id in ids for ids in handles.values())}
        subset_cuts = {name: [by_id[c.id] for c in cs if c.id in by_id] for name, cs in subset_cuts.items()}
    for kind, p in paths.items():
        partial[kind].replace(p)
    logger.info("MLS %s/%s: %d utterances, %.2f h", iso, split, n_kept, hours)
    out = {
        split: {
            "recordings": RecordingSet.from_jsonl_lazy(paths["recordings"]),
            "supervisions": SupervisionSet.from_jsonl_lazy(paths["supervisions"]),
            "cuts": CutSet.from_jsonl_lazy(paths["cuts"]),
        }
    }
    for name, ids in handles.items():
        kept = {c.id for c in subset_cuts[name]}
        if name != "train-10hr":  # its handles are the 9hr and 1hr ones, reported already
            for uid, (hfile, lineno) in ids.items():
                if uid not in kept:
                    errors.warn(hfile, f"utterance {uid} is not among the usable train utterances", lineno)
        p = manifest_path(out_dir, iso, "cuts", name)
        CutSet.from_cuts(subset_cuts[name]).to_file(p)
        out[name] = {"cuts": CutSet.from_jsonl_lazy(p)}
        logger.info("MLS %s/%s: %d utterances", iso, name, len(subset_cuts[name]))
    return out
