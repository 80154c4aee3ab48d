"""Untranscribed audio -> cuts without text (input to the self-supervised losses only).

``just-asr prepare-untranscribed AUDIO_DIR OUT_DIR [--lang xx]`` walks ``AUDIO_DIR`` for audio
files (wav, flac, opus, ogg, mp3), checks each one like ``prepare-mls`` does (missing, empty,
corrupt, truncated, zero-length audio are reported and skipped; other rates are resampled and
several channels downmixed, with a notice), and writes

    OUT_DIR/untranscribed[-<iso>]_{recordings,cuts}.jsonl.gz
    OUT_DIR/prepare_errors.json

Each cut's id is the file's path relative to ``AUDIO_DIR`` without its suffix, with ``/``
replaced by ``__`` (two files that map to the same id are reported, the second skipped). Each cut
carries one supervision spanning it with ``text=None`` and ``language`` set to the ISO code when
``--lang`` is given (``None`` otherwise), so the dataset marks it ``has_text = False``.

Long files can be cut into fixed windows (``window`` seconds; the last, shorter piece is kept
when it is at least ``min_duration`` long) so a one-hour recording does not become one cut. A
whole file shorter than ``min_duration`` is reported and left out.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

from just_asr.data.audio import AUDIO_EXTENSIONS, find_audio_files, probe_many
from just_asr.data.errors import ErrorCollector, OnError
from just_asr.data.languages import get_language
from just_asr.data.mls import ERRORS_FILE, audio_notices, build_cut, build_recording

logger = logging.getLogger(__name__)


def untranscribed_manifest_path(out_dir: str | Path, kind: str, lang: str | None = None) -> Path:
    """``OUT_DIR/untranscribed[-<iso>]_<kind>.jsonl.gz`` (``kind``: recordings or cuts)."""
    tag = f"untranscribed-{get_language(lang).iso}" if lang else "untranscribed"
    return Path(out_dir) / f"{tag}_{kind}.jsonl.gz"


def recording_id_for(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    return "__".join(rel.parts)


def prepare_untranscribed(
    audio_dir: str | Path,
    out_dir: str | Path,
    lang: str | None = None,
    *,
    jobs: int = 1,
    on_error: OnError | str = "skip",
    verify_audio: bool = True,
    window: float | None = None,
    min_duration: float = 0.5,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    errors: ErrorCollector | None = None,
    progress: bool = True,
):
    """Write recordings and cuts (without text) for every audio file under ``audio_dir``.

    Returns the cuts (an eager CutSet). ``lang``: ISO code or MLS name, optional. ``window``:
    split recordings longer than this many seconds into windows of this length.
    """
    from lhotse import CutSet, RecordingSet, SupervisionSegment

    errors = errors if errors is not None else ErrorCollector(on_error)
    audio_dir = Path(audio_dir)
    out_dir = Path(out_dir)
    if not audio_dir.is_dir():
        raise ValueError(f"{audio_dir}: audio folder not found")
    if not math.isfinite(min_duration) or min_duration < 0:
        raise ValueError(f"min_duration (--min-duration) must be a finite number of seconds >= 0, got {min_duration}")
    if window is not None and not (math.isfinite(window) and window > 0):
        raise ValueError(f"window (--window) must be a finite number of seconds > 0, got {window}")
    if window is not None and window < min_duration:
        raise ValueError(f"--window ({window} s) is shorter than --min-duration ({min_duration} s): every window "
                         "would be left out as too short")
    iso = get_language(lang).iso if lang else None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        files = find_audio_files(audio_dir, tuple(extensions))
        if not files:
            raise ValueError(f"{audio_dir}: no audio files ({', '.join(extensions)})")
        by_id: dict[str, Path] = {}
        for f in files:
            rid = recording_id_for(f, audio_dir)
            if rid in by_id:
                errors.report(f, f"same recording id {rid!r} as {by_id[rid]}")
                continue
            by_id[rid] = f
        recordings = []
        cuts = []
        ids = sorted(by_id)
        for rid, (path, info, problem) in zip(
            ids, probe_many([by_id[i] for i in ids], jobs=jobs, decode=verify_audio, desc="untranscribed", progress=progress)
        ):
            if info is None:
                errors.report(path, problem or "unusable audio")
                continue
            audio_notices(info, errors, opus_expected=True)
            rec = build_recording(rid, info)
            if rec.duration < min_duration:
                errors.report(path, f"too short: {rec.duration:.3f} s, under the minimum of {min_duration} s")
                continue
            recordings.append(rec)
            sup = SupervisionSegment(
                id=rid,
                recording_id=rid,
                start=0.0,
                duration=rec.duration,
                channel=0 if info.channels == 1 else list(range(info.channels)),
                text=None,
                language=iso,
            )
            cut = build_cut(rec, sup)
            if window is not None and cut.duration > window:
                pieces = cut.cut_into_windows(duration=window)
                for k, piece in enumerate(pieces):
                    if piece.duration < min_duration:
                        continue
                    piece = piece.with_id(f"{rid}-{k:04d}")
                    cuts.append(piece)
            else:
                cuts.append(cut)
        RecordingSet.from_recordings(recordings).to_file(untranscribed_manifest_path(out_dir, "recordings", iso))
        cutset = CutSet.from_cuts(cuts)
        cutset.to_file(untranscribed_manifest_path(out_dir, "cuts", iso))
        logger.info("untranscribed: %d recordings, %d cuts, %.2f h", len(recordings), len(cuts), sum(c.duration for c in cuts) / 3600)
    finally:
        errors.to_json(out_dir / ERRORS_FILE)
    return cutset
