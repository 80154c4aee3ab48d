"""Reading audio: the one loader training, feature extraction and inference share.

Everything goes through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, OGG/Opus, MP3) and
:func:`resample` (scipy polyphase filtering). Training batches and ``transcribe`` therefore see the
same samples for the same file.

Policies (what happens to audio that is not 16 kHz mono):

* **Wrong sampling rate: resample.** A file at 8, 22.05, 44.1 or 48 kHz holds perfectly good speech;
  only its format differs from MLS. It is resampled to 16 kHz with a band-limited polyphase filter
  (``scipy.signal.resample_poly``) and kept; ``prepare-mls`` reports it as a notice (action
  ``"kept"``) so a user can see that a corpus is not what they thought. Skipping would throw away
  transcribed speech for a format detail. Rates below :data:`MIN_SAMPLING_RATE` (8 kHz) carry too
  little of the speech band and are rejected with an :class:`AudioError`. Opus is always decoded
  at 48 kHz by libsndfile, so Opus files are resampled silently (that is their normal case).
* **More than one channel: downmix.** The channels are averaged to mono and the file is kept (a
  notice at prepare time). MLS is mono, so a stereo file is unusual but the average keeps the
  speech of every channel, and it is exactly what inference does with a user's stereo recording,
  so training and inference see the same signal.

Missing, empty, corrupt, truncated and zero-length files raise :class:`AudioError` (a
``ValueError``) whose message names the file and the problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from just_asr.data.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from lhotse.cut import Cut

#: the sampling rate of every model input
SAMPLE_RATE = 16000
#: the lowest sampling rate we accept (narrow-band telephone speech)
MIN_SAMPLING_RATE = 8000
#: file name suffixes :func:`find_audio_files` and ``prepare-untranscribed`` pick up
AUDIO_EXTENSIONS: tuple[str, ...] = (".flac", ".wav", ".opus", ".ogg", ".mp3")
#: a decoded file may be this many samples (at the target rate) shorter or longer than the
#: manifest says before :func:`load_cut_audio` calls it an error (resampling rounds lengths)
LENGTH_TOLERANCE = 160


class AudioError(DataError):
    """An audio file that cannot be used. ``str(exc)`` is ``"<file>: <problem>"``."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says (after checks)."""

    path: str
    sampling_rate: int  #: native rate of the file (Opus: 48000, libsndfile always decodes at 48 kHz)
    num_frames: int  #: samples per channel at ``sampling_rate``
    channels: int
    format: str  #: libsndfile container name, e.g. "FLAC", "OGG", "WAV"
    subtype: str  #: e.g. "PCM_16", "OPUS"

    @property
    def duration(self) -> float:
        """Seconds: ``num_frames / sampling_rate``."""
        return self.num_frames / self.sampling_rate


def _open_checks(path: Path) -> None:
    if not path.exists():
        raise AudioError(path, "audio file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _libsndfile_message(exc: Exception) -> str:
    msg = str(exc).strip()
    # soundfile prefixes "Error opening '<path>': " which repeats the file name; keep the reason
    if ": " in msg and msg.startswith("Error opening"):
        msg = msg.split(": ", 1)[1].strip()
    return msg or type(exc).__name__


def probe_audio(path: str | Path, *, decode: bool = False) -> AudioInfo:
    """Read and check an audio file's header; with ``decode=True`` also decode it all.

    Header-only probing is fast and catches missing, empty, unreadable (corrupt header, unknown
    format), zero-length and too-low-rate files. A truncated FLAC still has a valid header, so
    only ``decode=True`` (decoding every frame and comparing the count with the header) catches
    truncation and corrupt frames.

    Raises :class:`AudioError` naming the file and the problem.
    """
    path = Path(path)
    _open_checks(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types (LibsndfileError, RuntimeError)
        raise AudioError(path, f"cannot read audio header (corrupt file or unsupported format: {_libsndfile_message(exc)})") from None
    frames = int(info.frames)
    if frames <= 0:
        raise AudioError(path, "zero-length audio (0 samples)")
    if frames >= 2**62:  # libsndfile's "unknown length": a header that promises nothing
        raise AudioError(path, "corrupt audio header (unknown number of samples)")
    if info.samplerate < MIN_SAMPLING_RATE:
        raise AudioError(path, f"sampling rate {info.samplerate} Hz is below the {MIN_SAMPLING_RATE} Hz minimum")
    out = AudioInfo(str(path), int(info.samplerate), frames, int(info.channels), str(info.format), str(info.subtype))
    if decode:
        decoded = _count_decoded_frames(path)
        if decoded == 0:
            raise AudioError(path, "zero-length audio (no sample could be decoded)")
        # lossy codecs (Opus/MP3) may report a few frames of encoder delay differently
        lossless = out.format == "FLAC" or out.subtype.startswith(("PCM", "FLOAT", "DOUBLE"))
        slack = 0 if lossless else int(0.1 * out.sampling_rate)
        if decoded < frames - slack:
            raise AudioError(path, f"truncated audio: header says {frames} samples, only {decoded} decode")
        if decoded != frames:
            out = AudioInfo(out.path, out.sampling_rate, decoded, out.channels, out.format, out.subtype)
    return out


def _count_decoded_frames(path: Path, block: int = 1 << 18) -> int:
    total = 0
    try:
        with sf.SoundFile(str(path)) as f:
            while True:
                data = f.read(block, dtype="float32", always_2d=True)
                if len(data) == 0:
                    break
                if not np.isfinite(data).all():
                    raise AudioError(path, "audio contains non-finite samples (NaN/inf)")
                total += len(data)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(
            path, f"corrupt or truncated audio: decoding failed after {total} samples ({_libsndfile_message(exc)})"
        ) from None
    return total


def resample(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``samples: (N,)`` or ``(C, N)`` along the last axis with a polyphase filter.

    The output has ``round(N * target_sr / orig_sr)`` samples (halves rounded up), the count
    lhotse gives a resampled recording, so a whole file read here matches its manifest exactly.
    Returns float32.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if orig_sr == target_sr:
        return samples
    from scipy.signal import resample_poly

    ratio = Fraction(int(target_sr), int(orig_sr))
    up, down = ratio.numerator, ratio.denominator
    out = resample_poly(samples, up, down, axis=-1)  # ceil(N * up / down) samples
    n = samples.shape[-1]
    keep = (2 * n * up + down) // (2 * down)
    return np.ascontiguousarray(out[..., :keep], dtype=np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """``(N,)`` stays; ``(N, C)`` (soundfile's layout) is averaged over channels to ``(N,)``."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(f"expected (N,) or (N, C) samples, got shape {samples.shape}")
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]


def load_audio(
    path: str | Path,
    target_sr: int = SAMPLE_RATE,
    *,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Read an audio file as float32 mono at ``target_sr``: returns ``(N,)``.

    ``offset``/``duration`` (seconds) select a region; they are converted to native-rate frames
    before resampling. Several channels are averaged; other rates are resampled (see the module
    docstring for why). Raises :class:`AudioError` naming the file for missing, empty, corrupt,
    truncated or zero-length audio.
    """
    path = Path(path)
    _open_checks(path)
    try:
        f = sf.SoundFile(str(path))
    except Exception as exc:
        raise AudioError(path, f"cannot read audio (corrupt file or unsupported format: {_libsndfile_message(exc)})") from None
    with f:
        sr = int(f.samplerate)
        total = int(f.frames)
        lossless = f.format == "FLAC" or str(f.subtype).startswith(("PCM", "FLOAT", "DOUBLE"))
        if total <= 0:
            raise AudioError(path, "zero-length audio (0 samples)")
        if sr < MIN_SAMPLING_RATE:
            raise AudioError(path, f"sampling rate {sr} Hz is below the {MIN_SAMPLING_RATE} Hz minimum")
        start = int(round(offset * sr))
        if start < 0 or (start >= total and total < 2**62):
            raise AudioError(path, f"offset {offset:.3f}s is outside the audio ({total / sr:.3f}s)")
        want = -1 if duration is None else int(round(duration * sr))
        try:
            if start:
                f.seek(start)
            data = f.read(want, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(path, f"corrupt or truncated audio: decoding failed ({_libsndfile_message(exc)})") from None
    if len(data) == 0:
        raise AudioError(path, "zero-length audio (no sample could be decoded)")
    expected = (total - start) if want < 0 else want
    # lossless files decode exactly what the header says (1 sample of rounding slack for a
    # requested duration); lossy codecs may differ by their encoder delay
    slack = 1 if lossless else int(0.1 * sr)
    if len(data) < expected - slack and total < 2**62:
        raise AudioError(path, f"truncated audio: expected {expected} samples from {start}, decoded {len(data)}")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains non-finite samples (NaN/inf)")
    mono = to_mono(data)
    return resample(mono, sr, target_sr) if sr != target_sr else np.ascontiguousarray(mono)


def fit_length(samples: np.ndarray, num_samples: int, *, source: str | Path | None = None, tolerance: int = LENGTH_TOLERANCE) -> np.ndarray:
    """Trim or zero-pad ``samples: (N,)`` to exactly ``num_samples``.

    Differences up to ``tolerance`` samples come from rounding in resampling and seeking; larger
    ones mean the file does not match its manifest and raise :class:`AudioError`.
    """
    n = len(samples)
    if abs(n - num_samples) > tolerance:
        raise AudioError(source, f"audio has {n} samples where the manifest expects {num_samples} (file changed or truncated?)")
    if n > num_samples:
        return samples[:num_samples]
    if n < num_samples:
        return np.pad(samples, (0, num_samples - n))
    return samples


def cut_audio_path(cut: "Cut") -> str | None:
    """The file a cut's audio comes from (``None`` when the source is not a plain file)."""
    rec = getattr(cut, "recording", None)
    if rec is None or len(rec.sources) != 1 or rec.sources[0].type != "file":
        return None
    return str(rec.sources[0].source)


def _only_resampling(cut: "Cut") -> bool:
    """True when the recording's lhotse transforms (if any) only resample: then reading the file
    with :func:`load_audio` (which resamples itself) gives the same signal. Any other transform
    (speed or volume perturbation, reverb...) is left to lhotse."""
    rec = getattr(cut, "recording", None)
    for t in (rec.transforms or []) if rec is not None else []:
        name = t.get("name") if isinstance(t, dict) else type(t).__name__
        if name != "Resample":
            return False
    return True


def load_cut_audio(cut: "Cut", target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """A cut's audio as float32 mono at ``target_sr``: ``(cut.num_samples at target_sr,)``.

    File-backed recordings go through :func:`load_audio` (the same path as inference); a lhotse
    resampling transform on the recording is replaced by our own resampling. Other sources
    (in-memory, shar, URLs) and recordings with other transforms are read by lhotse, then
    downmixed and resampled the same way.
    """
    from lhotse.utils import compute_num_samples

    path = cut_audio_path(cut)
    if path is not None and _only_resampling(cut):
        samples = load_audio(path, target_sr, offset=cut.start, duration=cut.duration)
    else:
        try:
            raw = cut.load_audio()
        except Exception as exc:
            raise AudioError(f"cut {cut.id}", f"cannot load audio ({exc})") from None
        raw = np.asarray(raw, dtype=np.float32)
        mono = raw.mean(axis=0) if raw.ndim == 2 else raw
        samples = resample(mono, int(cut.sampling_rate), target_sr)
    return fit_length(samples, compute_num_samples(cut.duration, target_sr), source=path or f"cut {cut.id}")


def find_audio_files(root: str | Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """Every file under ``root`` whose suffix (case-insensitive) is in ``extensions``, sorted."""
    exts = {e.lower() for e in extensions}
    out: list[Path] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if os.path.splitext(name)[1].lower() in exts:
                out.append(Path(dirpath) / name)
    out.sort()
    return out



def _probe_one(args: tuple[str, bool]) -> tuple[str, AudioInfo | None, str | None]:
    path, decode = args
    try:
        return path, probe_audio(path, decode=decode), None
    except AudioError as exc:
        return path, None, exc.problem


def probe_many(
    paths: list[str | Path],
    *,
    jobs: int = 1,
    decode: bool = False,
    desc: str = "audio",
    progress: bool = True,
    chunk: int = 4096,
):
    """Yield ``(path, AudioInfo | None, problem | None)`` for each path, in order.

    Runs :func:`probe_audio` in ``jobs`` processes (in blocks of ``chunk`` files, with a tqdm bar).
    A failed file yields ``info=None`` and the problem text instead of raising.
    """
    from tqdm.auto import tqdm

    items = [(str(p), decode) for p in paths]
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=not progress)
    try:
        if jobs <= 1:
            for item in items:
                yield _probe_one(item)
                bar.update(1)
            return
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as ex:
            for i in range(0, len(items), chunk):
                block = items[i : i + chunk]
                for res in ex.map(_probe_one, block, chunksize=max(1, len(block) // (4 * jobs))):
                    yield res
                    bar.update(1)
    finally:
        bar.close()
