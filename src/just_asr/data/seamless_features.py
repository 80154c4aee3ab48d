"""The SeamlessM4T / w2v-BERT 2.0 feature recipe, in numpy (no ``transformers`` at run time).

A model imported from Hugging Face's ``facebook/w2v-bert-2.0`` (``just-asr import-w2v-bert``) was
trained on the features of ``SeamlessM4TFeatureExtractor``, which differ from just-asr's default
lhotse fbank (:mod:`just_asr.data.features`) in framing, scaling, flooring and normalisation. This
module reproduces that recipe step by step so an imported model sees what it expects:

1. mono 16 kHz float waveform, multiplied by ``32768`` (Kaldi's 16-bit integer convention);
2. frames of 400 samples (25 ms) every 160 samples (10 ms), Kaldi ``snip_edges=True`` framing
   (no padding: ``T = 1 + (N - 400) // 160`` frames for ``N >= 400`` samples), no dither;
3. per frame: remove the DC offset (frame mean), pre-emphasis 0.97 (``x[0] *= 1 - 0.97``),
   Povey window (``hann(400, symmetric) ** 0.85``), zero-padded 512-point FFT, power spectrum;
4. 80 triangular mel filters built in Kaldi's mel space (``1127 ln(1 + f / 700)``, 20 Hz ..
   8 kHz, no area normalisation), floored at ``1.1920929e-07`` (float32 epsilon), natural log;
5. per-utterance, per-mel-bin normalisation: ``(x - mean) / sqrt(var + 1e-7)`` with the unbiased
   (``ddof=1``) variance over the utterance's frames;
6. (in the model) 2-frame stacking to 160-d at 20 ms: frames ``2k, 2k+1`` form stacked frame
   ``k``; an odd trailing frame is dropped. just-asr keeps the 80-d frames in the batch and lets the
   ``stack`` front end (``frontend.kind: stack``) do this step; :func:`stack_frames` gives the
   stacked form that Hugging Face's ``input_features`` hold.

Steps 1-4 are computed in float64 with the spectrum rounded to complex64 (as the Hugging Face
extractor stores it); step 5 runs in float32 like the reference.

Example::

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    >>> f = seamless_fbank(x, 16000)
    >>> tuple(f.shape), num_frames(16000)
    ((98, 80), 98)
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from just_asr.data.audio import SAMPLE_RATE, AudioError, resample, to_mono

if TYPE_CHECKING:  # pragma: no cover
    from lhotse.cut import Cut

#: the value of ``features.type`` in a model directory's ``config.yaml`` for this recipe
FEATURE_TYPE = "seamless_fbank"
NUM_MEL_BINS = 80
FRAME_LENGTH_SAMPLES = 400
HOP_SAMPLES = 160
FFT_LENGTH = 512
PREEMPHASIS = 0.97
#: float32 machine epsilon, Kaldi's mel floor
MEL_FLOOR = 1.192092955078125e-07
#: waveforms in [-1, 1] are scaled to the 16-bit integer range before analysis
WAVEFORM_SCALE = 32768.0
LOW_FREQ = 20.0
NORM_EPS = 1e-7
#: frames stacked per model frame (80-d -> 160-d, 10 ms -> 20 ms)
STACK_FRAMES = 2


def seamless_feature_settings() -> dict[str, Any]:
    """The recipe as recorded under ``features`` in a model directory's ``config.yaml``."""
    return {
        "type": FEATURE_TYPE,
        "num_mel_bins": NUM_MEL_BINS,
        "frame_length": FRAME_LENGTH_SAMPLES / SAMPLE_RATE,
        "frame_shift": HOP_SAMPLES / SAMPLE_RATE,
        "sampling_rate": SAMPLE_RATE,
        "dither": 0.0,
        "snip_edges": True,
        "preemphasis": PREEMPHASIS,
        "remove_dc_offset": True,
        "window": "povey",
        "fft_length": FFT_LENGTH,
        "low_freq": LOW_FREQ,
        "mel_floor": MEL_FLOOR,
        "waveform_scale": WAVEFORM_SCALE,
        "normalize": "per_utterance_mean_var",
        "stack_frames": STACK_FRAMES,
    }


def num_frames(num_samples: int) -> int:
    """Frames the recipe gives for ``num_samples`` samples: ``1 + (N - 400) // 160`` (0 below 400)."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    if num_samples < FRAME_LENGTH_SAMPLES:
        return 0
    return 1 + (int(num_samples) - FRAME_LENGTH_SAMPLES) // HOP_SAMPLES


def _kaldi_mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


@lru_cache(maxsize=4)
def mel_filters(num_mel_bins: int = NUM_MEL_BINS, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular filters ``(FFT_LENGTH // 2 + 1, num_mel_bins)`` float64, triangles in mel space.

    Filter ``m`` rises from mel edge ``m`` to ``m + 1`` and falls to ``m + 2``, the ``num_mel_bins + 2``
    edges being equally spaced in Kaldi mel between ``LOW_FREQ`` and Nyquist; FFT bin ``i`` sits at
    ``i * sampling_rate / FFT_LENGTH`` Hz. No area normalisation. (Read-only: it is cached.)
    """
    n_bins = FFT_LENGTH // 2 + 1
    edges = np.linspace(_kaldi_mel(LOW_FREQ), _kaldi_mel(sampling_rate / 2), num_mel_bins + 2)  # (M+2,)
    bin_mel = _kaldi_mel(np.arange(n_bins) * (sampling_rate / FFT_LENGTH))  # (n_bins,)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]  # (M,)
    rise = (bin_mel[:, None] - left[None, :]) / (centre - left)[None, :]
    fall = (right[None, :] - bin_mel[:, None]) / (right - centre)[None, :]
    out = np.maximum(0.0, np.minimum(rise, fall))
    out.setflags(write=False)
    return out


@lru_cache(maxsize=1)
def povey_window() -> np.ndarray:
    """Kaldi's Povey window: symmetric Hann of 400 points raised to 0.85 (float64, read-only)."""
    n = np.arange(FRAME_LENGTH_SAMPLES, dtype=np.float64)
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / (FRAME_LENGTH_SAMPLES - 1))) ** 0.85
    w.setflags(write=False)
    return w


def log_mel_fbank(samples: np.ndarray) -> np.ndarray:
    """Steps 1-4: ``samples (N,)`` float in [-1, 1] at 16 kHz -> un-normalised log-mel ``(T, 80)`` float64.

    Raises ``ValueError`` when ``N < 400`` (not a single frame).
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"samples must be 1-D (N,), got shape {x.shape}")
    t = num_frames(len(x))
    if t == 0:
        raise ValueError(f"audio has {len(x)} samples; the SeamlessM4T recipe needs at least {FRAME_LENGTH_SAMPLES}")
    # Scale in float32 (exact: a power of two), as the reference does, then analyse in float64.
    x = (x.astype(np.float32) * np.float32(WAVEFORM_SCALE)).astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_LENGTH_SAMPLES)[::HOP_SAMPLES][:t].copy()  # (T, 400)
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= PREEMPHASIS * frames[:, :-1].copy()
    frames[:, 0] *= 1.0 - PREEMPHASIS
    frames *= povey_window()[None, :]
    # The reference keeps the spectrum in complex64; rounding it the same way keeps the log-mels
    # equal to ~1e-7, which matters after normalisation divides by small per-bin deviations.
    spec = np.fft.rfft(frames, n=FFT_LENGTH, axis=1).astype(np.complex64)  # (T, 257)
    power = np.abs(spec, dtype=np.float64) ** 2
    mel = np.maximum(MEL_FLOOR, power @ mel_filters())  # (T, 80)
    return np.log(mel)


def normalize_per_utterance(feats: np.ndarray) -> np.ndarray:
    """Step 5: ``feats (T, F)`` -> ``(x - mean_t) / sqrt(var_t(ddof=1) + 1e-7)`` per bin (``T >= 2``).

    Computed in float32 with numpy's reductions, as the reference extractor does: float32 rounding
    of the variance moves low-variance bins by up to ~1e-3 relative, and an imported model was
    trained on the float32 result, so we reproduce it rather than a float64 "better" value.
    Returns float32 ``(T, F)``."""
    if feats.ndim != 2:
        raise ValueError(f"features must be (T, F), got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"per-utterance normalisation needs at least 2 frames, got {feats.shape[0]}")
    # Fortran order, like the reference's transposed spectrogram: numpy then reduces each bin
    # along contiguous memory (pairwise summation), which gives the reference's exact rounding.
    x = np.asfortranarray(feats, dtype=np.float32)
    mean = x.mean(axis=0, keepdims=True)
    var = x.var(axis=0, ddof=1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(NORM_EPS))


def seamless_fbank(samples: np.ndarray, sampling_rate: int, normalize: bool = True) -> Tensor:
    """Features of one utterance for an imported w2v-BERT 2.0 model (steps 1-5).

    Args:
        samples: ``(N,)`` or ``(N, C)`` float waveform in [-1, 1]; several channels are averaged and
            other rates resampled to 16 kHz, as :func:`just_asr.data.audio.load_audio` does.
        sampling_rate: rate of ``samples``.
        normalize: apply the per-utterance mean/variance normalisation (step 5).

    Returns:
        float32 ``(T, 80)`` with ``T == num_frames(N at 16 kHz)``.

    Raises:
        ValueError: for bad shapes or audio shorter than 560 samples (two frames, the minimum the
            normalisation and the 2-frame stacking need).
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = to_mono(x)
    if x.ndim != 1:
        raise ValueError(f"samples must be (N,) or (N, C), got shape {x.shape}")
    if sampling_rate != SAMPLE_RATE:
        x = resample(x, sampling_rate, SAMPLE_RATE)
    min_samples = FRAME_LENGTH_SAMPLES + HOP_SAMPLES
    if len(x) < min_samples:
        raise ValueError(f"audio has {len(x)} samples at 16 kHz; the SeamlessM4T recipe needs at least {min_samples}")
    feats = log_mel_fbank(x)
    if normalize:
        feats = normalize_per_utterance(feats)
    return torch.from_numpy(feats.astype(np.float32))


def cut_seamless_features(cut: "Cut") -> Tensor:
    """A lhotse cut's features under this recipe, ``(T, 80)`` float32 (audio loaded and resampled
    with :func:`just_asr.data.audio.load_cut_audio`). Errors are :class:`AudioError` naming the cut."""
    from just_asr.data.audio import load_cut_audio

    samples = load_cut_audio(cut, SAMPLE_RATE)
    try:
        return seamless_fbank(samples, SAMPLE_RATE)
    except ValueError as exc:
        raise AudioError(f"cut {cut.id}", str(exc)) from None


def stack_frames(features: Tensor, lengths: Tensor, stack: int = STACK_FRAMES) -> tuple[Tensor, Tensor]:
    """Step 6 (what the model's ``stack`` front end does first), in Hugging Face's layout.

    Args:
        features: ``(B, T, F)`` zero-padded frames.
        lengths: ``(B,)`` valid frames per row.
        stack: frames per stacked frame.

    Returns:
        ``(stacked (B, T // stack, stack * F), stacked_lens (B,) = lengths // stack)``; the
        attention mask of ``SeamlessM4TFeatureExtractor`` is ``arange(T // stack) < stacked_lens``.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be (B, T, F), got shape {tuple(features.shape)}")
    if lengths.dim() != 1 or lengths.size(0) != features.size(0):
        raise ValueError(f"lengths must be (B,)={features.size(0)}, got shape {tuple(lengths.shape)}")
    b, t, f = features.shape
    t_out = t // stack
    stacked = features[:, : t_out * stack].reshape(b, t_out, stack * f)
    return stacked, torch.div(lengths, stack, rounding_mode="floor")


def pad_batch(feats: list[Tensor]) -> tuple[Tensor, Tensor]:
    """``[(T_i, F)]`` -> ``(padded (B, T_max, F) zero-filled, lengths (B,) int64)``."""
    if not feats:
        raise ValueError("pad_batch needs at least one utterance")
    lens = torch.tensor([f.shape[0] for f in feats], dtype=torch.int64)
    out = torch.zeros(len(feats), int(lens.max()), feats[0].shape[1], dtype=torch.float32)
    for i, f in enumerate(feats):
        out[i, : f.shape[0]] = f
    return out, lens


__all__ = [
    "FEATURE_TYPE",
    "STACK_FRAMES",
    "seamless_feature_settings",
    "num_frames",
    "mel_filters",
    "povey_window",
    "log_mel_fbank",
    "normalize_per_utterance",
    "seamless_fbank",
    "cut_seamless_features",
    "stack_frames",
    "pad_batch",
]
