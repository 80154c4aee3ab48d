"""80-dimensional log-mel filterbank features, computed on the fly or stored with lilcom.

One extractor is used everywhere: :func:`fbank_extractor` (lhotse's ``Fbank``: Kaldi-compatible,
25 ms Povey window, 10 ms hop, 80 mel bins, no dither, ``snip_edges=False``). Training batches,
precomputed feature archives and inference (:func:`extract_fbank`) all call it on audio read by
:func:`just_asr.data.audio.load_audio`, so the same file gives the same features everywhere
(precomputed features differ only by lilcom's lossy compression, about 1e-3 relative).

Frame count. With ``snip_edges=False`` frames are centred every 160 samples and the signal edges
are reflected, so ``N`` samples at 16 kHz give

    num_frames(N) = (N + 80) // 160          (= round(N / 160), halves rounded up)

e.g. 1 s (16000 samples) -> 100 frames, 16079 samples -> 100, 16080 -> 101. :func:`num_frames`
implements this and the tests check it against the extractor.

Global CMVN. :class:`GlobalCMVN` holds a per-dimension mean and standard deviation computed over
every valid frame of the training cuts (``just-asr compute-cmvn``) and applies
``(x - mean) / std`` to valid frames only; padding stays zero.

Feature sources (:data:`FEATURE_SOURCES`, the ``feature_source`` of :func:`cut_features`, the
dataset and the loaders):

* ``"auto"``, ``"precomputed"``, ``"on-the-fly"``: the lhotse fbank above (stored or computed);
* ``"seamless"``: the SeamlessM4T / w2v-BERT 2.0 recipe of
  :mod:`just_asr.data.seamless_features` (``cut_seamless_features``), always computed from the
  audio (stored lhotse matrices are ignored), for models imported with ``just-asr import-w2v-bert``.
  Those features are 80-d per 10 ms frame, unstacked (the model's ``stack`` front end stacks
  pairs), with ``T = 1 + (N - 400) // 160`` frames, and already normalised per utterance, so global
  CMVN is refused with them (:func:`check_feature_source`).
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import torch

from just_asr.data import seamless_features
from just_asr.data.audio import SAMPLE_RATE, AudioError, load_cut_audio, resample, to_mono

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import CutSet
    from lhotse.cut import Cut

logger = logging.getLogger(__name__)

#: feature dimension (mel bins)
FBANK_DIM = 80
#: analysis window, seconds
FRAME_LENGTH = 0.025
#: hop between frames, seconds
FRAME_SHIFT = 0.01
#: hop in samples at 16 kHz
HOP_SAMPLES = int(round(FRAME_SHIFT * SAMPLE_RATE))

#: every accepted ``feature_source``: three ways to get lhotse fbank, and the SeamlessM4T recipe
FEATURE_SOURCES = ("auto", "precomputed", "on-the-fly", "seamless")
#: the ``feature_source`` selecting :mod:`just_asr.data.seamless_features`
SEAMLESS_SOURCE = "seamless"

_EXTRACTOR = None


def check_feature_source(source: str, cmvn: object | None = None) -> str:
    """Validate a ``feature_source`` (and its combination with global CMVN); returns ``source``.

    Raises ``ValueError`` for an unknown source, or for ``"seamless"`` together with a CMVN
    (``cmvn`` is the statistics object or its path; ``None`` means no CMVN): SeamlessM4T
    features are normalised per utterance and per mel bin already, and the imported w2v-BERT 2.0
    encoder was trained on exactly that, so a global normalisation on top would change its input.
    """
    if source not in FEATURE_SOURCES:
        raise ValueError(f"feature_source must be one of {', '.join(FEATURE_SOURCES)}; got {source!r}")
    if source == SEAMLESS_SOURCE and cmvn is not None:
        where = f" ({cmvn})" if isinstance(cmvn, (str, Path)) else ""
        raise ValueError(
            f"global CMVN{where} cannot be combined with feature_source 'seamless': SeamlessM4T features are "
            "already normalised per utterance; set cmvn to null (data.cmvn: null)"
        )
    return source


def fbank_extractor():
    """The lhotse ``Fbank`` extractor every part of just-asr uses (80 bins, 25 ms / 10 ms)."""
    global _EXTRACTOR
    if _EXTRACTOR is None:
        from lhotse import Fbank, FbankConfig

        _EXTRACTOR = Fbank(
            FbankConfig(
                sampling_rate=SAMPLE_RATE,
                frame_length=FRAME_LENGTH,
                frame_shift=FRAME_SHIFT,
                num_filters=FBANK_DIM,
                dither=0.0,
                snip_edges=False,
            )
        )
    return _EXTRACTOR


def num_frames(num_samples: int) -> int:
    """Frames the extractor gives for ``num_samples`` samples at 16 kHz: ``(N + 80) // 160``."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    return (int(num_samples) + HOP_SAMPLES // 2) // HOP_SAMPLES


def extract_fbank(samples: np.ndarray, sampling_rate: int) -> torch.Tensor:
    """Log-mel features of one utterance: ``samples (N,)`` or ``(N, C)`` -> ``(T, 80)`` float32.

    Audio at another rate is resampled to 16 kHz and several channels are averaged, exactly as
    :func:`just_asr.data.audio.load_audio` does, so ``extract_fbank(load_audio(p), 16000)`` equals
    the features a training batch holds for file ``p``. ``T == num_frames(N at 16 kHz)``.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = to_mono(x)
    if x.ndim != 1:
        raise ValueError(f"samples must be (N,) or (N, C), got shape {x.shape}")
    if sampling_rate != SAMPLE_RATE:
        x = resample(x, sampling_rate, SAMPLE_RATE)
    expected = num_frames(len(x))
    if expected == 0:  # under half a hop (5 ms)
        return torch.zeros(0, FBANK_DIM)
    try:
        feats = fbank_extractor().extract(x, SAMPLE_RATE)
    except RuntimeError:
        if len(x) >= HOP_SAMPLES:
            raise
        # lhotse's extractor fails below ~140 samples although the framing promises one frame
        # (N >= 80): zero-pad to one hop, which gives exactly that frame
        feats = fbank_extractor().extract(np.pad(x, (0, HOP_SAMPLES - len(x))), SAMPLE_RATE)
    feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
    if feats.shape[0] != expected:  # never seen; guards a change of lhotse's framing
        feats = _fit_frames(feats, expected)
    return feats


def _fit_frames(feats: torch.Tensor, expected: int, tolerance: int = 2, source: str | None = None) -> torch.Tensor:
    t = feats.shape[0]
    if abs(t - expected) > tolerance:
        raise AudioError(source, f"feature matrix has {t} frames where {expected} were expected")
    if t > expected:
        return feats[:expected]
    if t < expected:
        pad = feats[-1:].expand(expected - t, -1) if t > 0 else feats.new_zeros(expected - t, feats.shape[1])
        return torch.cat([feats, pad], dim=0)
    return feats


def cut_num_frames(cut: "Cut", source: str = "auto") -> int:
    """Frames a cut's features have under ``source``: ``num_frames`` of its sample count at 16 kHz
    (lhotse fbank), or :func:`just_asr.data.seamless_features.num_frames` for ``"seamless"``."""
    from lhotse.utils import compute_num_samples

    n = compute_num_samples(cut.duration, SAMPLE_RATE)
    if check_feature_source(source) == SEAMLESS_SOURCE:
        return seamless_features.num_frames(n)
    return num_frames(n)


def cut_features(cut: "Cut", source: str = "auto") -> torch.Tensor:
    """A cut's features ``(T, 80)`` float32, ``T == cut_num_frames(cut, source)``.

    ``source``: ``"precomputed"`` (read the stored lilcom matrix; error if the cut has none),
    ``"on-the-fly"`` (load audio and extract), ``"auto"`` (stored when present, else extract), or
    ``"seamless"`` (the SeamlessM4T recipe computed from the audio:
    :func:`just_asr.data.seamless_features.cut_seamless_features`; stored matrices are ignored).
    Errors are :class:`~just_asr.data.audio.AudioError` naming the cut or its audio file.
    """
    check_feature_source(source)
    if source == SEAMLESS_SOURCE:
        return seamless_features.cut_seamless_features(cut)
    expected = cut_num_frames(cut)
    if source == "precomputed" or (source == "auto" and cut.has_features):
        if not cut.has_features:
            raise AudioError(f"cut {cut.id}", "no precomputed features (run feature extraction or use on-the-fly features)")
        try:
            feats = torch.as_tensor(np.asarray(cut.load_features()), dtype=torch.float32)
        except Exception as exc:  # lhotse appends the whole cut's repr on further lines: keep the first
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            feats_info = getattr(cut, "features", None)  # (a MixedCut keeps them per track: none here)
            where = f" ({feats_info.storage_path}, key {feats_info.storage_key})" if feats_info is not None else ""
            raise AudioError(f"cut {cut.id}", f"cannot read stored features{where}: {reason}") from None
        if feats.ndim != 2 or feats.shape[1] != FBANK_DIM:
            raise AudioError(f"cut {cut.id}", f"stored features have shape {tuple(feats.shape)}, expected (T, {FBANK_DIM})")
        return _fit_frames(feats, expected, source=f"cut {cut.id}")
    samples = load_cut_audio(cut, SAMPLE_RATE)
    return _fit_frames(extract_fbank(samples, SAMPLE_RATE), expected, source=f"cut {cut.id}")


def _extract_for_cut(cut: "Cut") -> tuple[str, np.ndarray | None, tuple[str | None, str] | None]:
    try:
        return cut.id, cut_features(cut, "on-the-fly").numpy(), None
    except AudioError as exc:
        return cut.id, None, (exc.path, exc.problem)


_AUDIO_SECONDS_PER_WORKER = 1200.0


def _one_torch_thread() -> None:
    """Extraction runs on one torch thread (pool initialiser, and in-process): fbank is many small
    ops that OpenMP threads only slow down (prepare-mls of one 600-utterance language: 7.9/6.7 s before,
    3.3/3.6 s after on an idle machine; 19.3 -> 5.7 s beside a 2-thread training run)."""
    torch.set_num_threads(1)


def compute_and_store_features(
    cuts: "CutSet",
    storage_path: str | Path,
    *,
    jobs: int = 1,
    errors=None,
) -> "CutSet":
    """Extract features for every cut and store them with lilcom (``LilcomChunkyWriter``).

    Returns an eager CutSet whose cuts point at the stored matrices. Cuts whose audio fails are
    reported to ``errors`` (an :class:`~just_asr.data.errors.ErrorCollector`, default: one with
    the ``skip`` policy) and left out.
    """
    from lhotse import CutSet, Features, LilcomChunkyWriter
    from lhotse.utils import fastcopy

    from just_asr.data.errors import ErrorCollector

    errors = errors if errors is not None else ErrorCollector()
    # absolute, like the recordings' paths in the same manifests: a relative one would only resolve
    # from the directory the features were computed in
    storage_path = Path(storage_path).absolute()
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    cut_list = list(cuts)
    # a worker process costs about a second to start (it imports torch and lhotse), as much as
    # extracting ~10 minutes of audio: only split work that keeps each worker busy for much longer
    audio_seconds = sum(c.duration for c in cut_list)
    jobs = max(1, min(jobs, int(audio_seconds // _AUDIO_SECONDS_PER_WORKER)))
    out = []
    threads = torch.get_num_threads()
    with LilcomChunkyWriter(storage_path) as writer:
        if jobs > 1:
            ex = ProcessPoolExecutor(jobs, initializer=_one_torch_thread)
            results: Iterable = ex.map(_extract_for_cut, cut_list, chunksize=8)
        else:
            ex = None
            _one_torch_thread()  # in this process, restored below
            results = map(_extract_for_cut, cut_list)
        try:
            for cut, (cid, feats, err) in zip(cut_list, results):
                if feats is None:
                    path, problem = err if err is not None else (None, "feature extraction failed")
                    errors.report(path or cut_audio_path_or_id(cut), problem)
                    continue
                key = writer.write(cid, feats)
                features = Features(
                    type="kaldi-fbank",
                    num_frames=feats.shape[0],
                    num_features=feats.shape[1],
                    frame_shift=FRAME_SHIFT,
                    sampling_rate=SAMPLE_RATE,
                    start=cut.start,
                    duration=cut.duration,
                    storage_type=writer.name,
                    storage_path=str(writer.storage_path),
                    storage_key=key,
                    recording_id=cut.recording_id if cut.has_recording else None,
                    channels=0,
                )
                # the matrix covers exactly the cut: it starts where the cut starts in the recording
                out.append(fastcopy(cut, features=features))
        finally:
            torch.set_num_threads(threads)
            if ex is not None:
                ex.shutdown()
    return CutSet.from_cuts(out)


def cut_audio_path_or_id(cut: "Cut") -> str:
    from just_asr.data.audio import cut_audio_path

    return cut_audio_path(cut) or f"cut {cut.id}"


class GlobalCMVN:
    """Global per-dimension mean/variance normalisation of features.

    ``mean``, ``std``: ``(F,)`` float tensors; ``count``: frames they were computed from.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, count: int = 0, floor: float = 1e-5):
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != std.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} differ in shape")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("mean and std must be finite (NaN or infinite values would blank every feature)")
        if bool((std < 0).any()):
            raise ValueError("std must not be negative")
        self.mean = mean
        self.std = std.clamp_min(floor)
        self.count = int(count)

    @property
    def dim(self) -> int:
        return self.mean.numel()

    # -- computing ------------------------------------------------------------------------------
    @classmethod
    def from_features(cls, features: Iterable[torch.Tensor]) -> "GlobalCMVN":
        """Statistics over every row of every ``(T, F)`` matrix (float64 accumulation)."""
        acc = _Accumulator()
        for f in features:
            acc.add(f)
        return acc.result()

    @classmethod
    def from_cuts(
        cls,
        cuts: Iterable["Cut"],
        *,
        source: str = "auto",
        max_cuts: int | None = None,
        errors=None,
        progress: bool = False,
    ) -> "GlobalCMVN":
        """Statistics over the features of ``cuts`` (the first ``max_cuts`` if given).

        Cuts whose audio fails are reported to ``errors`` and left out.
        """
        from just_asr.data.errors import ErrorCollector

        if check_feature_source(source) == SEAMLESS_SOURCE:
            raise ValueError("global CMVN statistics are not used with feature_source 'seamless' (the SeamlessM4T "
                             "features are normalised per utterance); use auto, precomputed or on-the-fly")
        errors = errors if errors is not None else ErrorCollector()
        acc = _Accumulator()
        it: Iterator = iter(cuts)
        if progress:
            from tqdm.auto import tqdm

            it = iter(tqdm(it, desc="cmvn", unit="cut", total=max_cuts))
        for i, cut in enumerate(it):
            if max_cuts is not None and i >= max_cuts:
                break
            try:
                acc.add(cut_features(cut, source))
            except AudioError as exc:
                errors.add(exc)
        return acc.result()

    # -- applying -------------------------------------------------------------------------------
    def apply(self, features: torch.Tensor, lens: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise ``features: (B, T, F)`` (or ``(T, F)``) -> same shape.

        ``lens: (B,)`` valid frames per row; frames at or past ``lens[b]`` are set to 0 (padding
        stays padding). Without ``lens`` every frame is normalised.
        """
        if features.shape[-1] != self.dim:
            raise ValueError(f"features have {features.shape[-1]} dims, CMVN stats have {self.dim}")
        mean = self.mean.to(features.device, features.dtype)
        std = self.std.to(features.device, features.dtype)
        out = (features - mean) / std
        if lens is not None:
            if features.ndim != 3:
                raise ValueError("lens needs features of shape (B, T, F)")
            t = torch.arange(features.shape[1], device=features.device)
            valid = t[None, :] < lens.to(features.device)[:, None]
            out = out * valid[..., None].to(out.dtype)
        return out

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "type": "global_cmvn",
            "feature": f"fbank{self.dim}",
            "count": self.count,
            "mean": [float(x) for x in self.mean],
            "std": [float(x) for x in self.std],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "GlobalCMVN":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(torch.tensor(data["mean"]), torch.tensor(data["std"]), int(data.get("count", 0)))
        except FileNotFoundError:
            raise ValueError(f"{path}: CMVN stats file not found") from None
        except (KeyError, TypeError, json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as exc:
            raise ValueError(f"{path}: not a CMVN stats file ({exc})") from None
        except ValueError as exc:  # the constructor's checks, and torch.tensor of ragged lists
            raise ValueError(f"{path}: bad CMVN stats ({exc})") from None


class _Accumulator:
    def __init__(self) -> None:
        self.n = 0
        self.s: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def add(self, feats: torch.Tensor) -> None:
        f = torch.as_tensor(feats).to(torch.float64)
        if f.ndim != 2:
            raise ValueError(f"expected (T, F) features, got shape {tuple(f.shape)}")
        if self.s is None:
            self.s = torch.zeros(f.shape[1], dtype=torch.float64)
            self.s2 = torch.zeros(f.shape[1], dtype=torch.float64)
        self.s += f.sum(0)
        self.s2 += (f * f).sum(0)
        self.n += f.shape[0]

    def result(self) -> GlobalCMVN:
        if self.n == 0 or self.s is None:
            raise ValueError("no frames to compute CMVN statistics from (every cut failed or the input is empty)")
        mean = self.s / self.n
        var = (self.s2 / self.n - mean * mean).clamp_min(0.0)
        return GlobalCMVN(mean.float(), var.sqrt().float(), self.n)
