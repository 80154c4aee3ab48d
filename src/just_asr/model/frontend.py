"""Feature front ends: log-mel fbank ``(B, T, F)`` -> latent frames ``(B, T', d_model)``.

Two front ends:

* ``ConvSubsampling`` (``kind="conv2d"``): ``conv_layers`` (2 or 3) ``Conv2d(kernel 3, stride 2,
  no padding)`` + ReLU layers over (time, frequency), 4x or 8x time subsampling (10 ms -> 40 or
  80 ms), then a linear projection of ``channels * F'`` to ``d_model``. Output length (exact, per
  layer ``floor((n - 3) / 2) + 1 = (n - 1) // 2``)::

      T' = ((T - 1) // 2 - 1) // 2                 2 layers (needs T >= 7 for T' >= 1)
      T' = (((T - 1) // 2 - 1) // 2 - 1) // 2      3 layers (needs T >= 15)

  Without padding, each valid output frame only sees valid input frames, so padding never leaks.
* ``StackedProjection`` (``kind="stack"``): stack ``k`` consecutive frames (80-d -> 160-d at
  20 ms for k=2; an incomplete trailing group is dropped), then ``LayerNorm(k*F)`` + ``Linear`` to
  ``d_model``. This is HF ``Wav2Vec2BertFeatureProjection`` (``layer_norm``, ``projection``) fed
  with SeamlessM4T-style stacked features, so w2v-BERT 2.0 weights map onto it directly::

      T' = T // k

Example::

    >>> import torch
    >>> fe = ConvSubsampling(input_dim=80, channels=8, d_model=16)
    >>> y, n = fe(torch.randn(2, 50, 80), torch.tensor([50, 30]))
    >>> tuple(y.shape), n.tolist()
    ((2, 11, 16), [11, 6])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FrontendConfig


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """``lengths: (B,)`` -> bool ``(B, max_len)``, True at *valid* frames."""
    return torch.arange(max_len, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


# 16-bit pieces are used when rounding to a multiple of 2**-16 moves both p and 1 - p by at most this
# fraction of themselves (p = 0.1 moves by 6e-5 of itself, 0.01 by 6e-4; 0.001 would move by 7e-3,
# 0.9999 keeps 1e-4 of the elements and would move that by 7e-2: both take 32-bit pieces)
_WORD16_MAX_REL_ERROR = 1e-3


def _piece_bits(p: float) -> int:
    """16 when the 16-bit quantisation of ``p`` is within ``_WORD16_MAX_REL_ERROR`` of both ``p`` and
    ``1 - p`` (relative), else 32."""
    q_scaled = (1.0 - p) * 2**16
    error = abs(round(q_scaled) - q_scaled)
    return 16 if error <= _WORD16_MAX_REL_ERROR * min(p, 1.0 - p) * 2**16 else 32


def dropout_keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, device: torch.device, bits: int | None = None,
    dtype: torch.dtype = torch.bool,
) -> Tensor:
    """Keep-mask of ``shape``: each element is True (1) independently with probability ``1 - p``.

    Drawn from the global generator as 64-bit words cut into 16-bit pieces (four elements per draw):
    an element is kept iff its signed 16-bit word is below ``round((1 - p) * 2**16) - 2**15``, so the
    drop probability is ``p`` rounded to a multiple of ``2**-16``. That is used when it moves ``p`` by
    at most 0.1% of itself and moves ``1 - p`` by at most 0.1% of itself (every usual dropout rate:
    0.1 becomes 0.1000061); rates near 0 or 1 take 32-bit pieces (two elements per draw, ``p`` exact
    to ``2**-33``). Either way every element has the same keep probability and the elements are
    independent. This is the same Bernoulli mask as ``torch.bernoulli_``'s, drawn several times
    faster on the project's AMD EPYC machine (``bernoulli_`` there draws a double per element in a
    scalar loop; PyTorch only takes MKL's vectorised sampler on Intel CPUs; ``BENCHMARKS.md``).
    ``bits`` (16 or 32) forces the piece size (``benchmarks/dropout_mask.py`` compares them).
    ``dtype``: the mask's dtype (bool by default; a floating dtype gives 1.0 and 0.0, written by the
    comparison itself, one pass fewer than a bool mask converted afterwards).
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout_keep_mask: p must be in (0, 1), got {p}")
    n = 1
    for s in shape:
        n *= int(s)
    if bits is None:
        bits = _piece_bits(p)
    elif bits not in (16, 32):
        raise ValueError(f"dropout_keep_mask: bits must be 16 or 32, got {bits}")
    per_draw = 64 // bits
    words = torch.empty((n + per_draw - 1) // per_draw, dtype=torch.int64, device=device).random_(-(2**63), None)
    pieces = words.view(torch.int16 if bits == 16 else torch.int32)[:n]
    threshold = min(round((1.0 - p) * 2**bits) - 2 ** (bits - 1), 2 ** (bits - 1) - 1)
    if dtype == torch.bool:
        return (pieces < threshold).view(shape)
    return torch.lt(pieces, threshold, out=torch.empty(n, dtype=dtype, device=device)).view(shape)


def fast_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout, the math of ``F.dropout(x, p, training)``: in training each element is
    zeroed with probability ``p`` and the survivors are scaled by ``1 / (1 - p)`` (any shape; the
    output has ``x``'s shape and dtype). On CPU the mask comes from :func:`dropout_keep_mask` (global
    RNG); on other devices this is ``F.dropout`` (their fused kernels are fast already). Identity when
    not training or ``p == 0``; zeros when ``p == 1``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if p == 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    keep = dropout_keep_mask(x.shape, p, x.device, dtype=x.dtype)
    # as ATen's CPU dropout: (x * mask) * scale, the mask in x's dtype
    return x.mul(keep).mul(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """Drop-in ``nn.Dropout`` (same arguments, no parameters) computed with :func:`fast_dropout`.

    On the project's AMD EPYC machine a dropout forward + backward takes about 40% less time than
    ``nn.Dropout``'s (see ``BENCHMARKS.md``, training throughput). ``inplace`` is not supported.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        if inplace:
            raise ValueError("just_asr Dropout does not support inplace=True")
        super().__init__(p, inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return fast_dropout(x, self.p, self.training)


def _check_input(features: Tensor, lengths: Tensor, input_dim: int) -> None:
    if features.dim() != 3:
        raise ValueError(f"features must be (B, T, F), got shape {tuple(features.shape)}")
    if features.size(-1) != input_dim:
        raise ValueError(f"features have {features.size(-1)} bins per frame, the front end expects {input_dim}")
    if lengths.dim() != 1 or lengths.size(0) != features.size(0):
        raise ValueError(f"feature_lens must be (B,)={features.size(0)}, got shape {tuple(lengths.shape)}")
    if lengths.numel() and int(lengths.max()) > features.size(1):
        raise ValueError(f"feature_lens max {int(lengths.max())} exceeds padded length {features.size(1)}")


def _conv_out(n, num_layers: int):
    """Length after ``num_layers`` unpadded kernel-3 stride-2 convs: ``n -> (n - 1) // 2`` each time
    (``n`` an int or a tensor; may go below 1 for too-short inputs)."""
    for _ in range(num_layers):
        n = (n - 1) // 2
    return n


class ConvSubsampling(nn.Module):
    """``num_layers`` stride-2 3x3 Conv2d + ReLU layers and a projection (``2**num_layers`` x time
    subsampling).

    Args:
        input_dim: fbank bins F.
        channels: output channels of every conv layer.
        d_model: output width.
        dropout: dropout on the output.
        num_layers: conv layers: 2 (4x, 40 ms frames) or 3 (8x, 80 ms frames; the encoder then runs
            on half as many frames, about half the cost per audio-second for small models).
    """

    def __init__(
        self, input_dim: int, channels: int, d_model: int, dropout: float = 0.0, num_layers: int = 2
    ) -> None:
        super().__init__()
        if num_layers not in (2, 3):
            raise ValueError(f"ConvSubsampling: num_layers must be 2 or 3, got {num_layers}")
        self.input_dim = input_dim
        self.num_layers = num_layers
        self.subsampling = 2**num_layers
        self.min_input_frames = 2 ** (num_layers + 1) - 1  # 7 for 2 layers, 15 for 3
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2)
        self.conv3 = nn.Conv2d(channels, channels, kernel_size=3, stride=2) if num_layers == 3 else None
        freq = _conv_out(input_dim, num_layers)
        if freq < 1:
            raise ValueError(f"ConvSubsampling: {input_dim} bins are too few for {num_layers} conv layers")
        self.freq_out = freq
        self.proj = nn.Linear(channels * self.freq_out, d_model)
        self.dropout = Dropout(dropout)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``T' = (T - 1) // 2`` applied once per conv layer, for ``lengths: (B,)`` (clamped at 0)."""
        return _conv_out(lengths, self.num_layers).clamp(min=0)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``features: (B, T, F)``, ``lengths: (B,)`` -> ``(latent (B, T', d_model), lengths' (B,))``.

        Padded output frames are set to zero.
        """
        _check_input(features, lengths, self.input_dim)
        if lengths.numel() and int(lengths.min()) < self.min_input_frames:
            raise ValueError(
                f"an utterance has {int(lengths.min())} frames; the {self.num_layers}-layer conv2d front end "
                f"needs at least {self.min_input_frames} (filter short cuts out in the data pipeline)"
            )
        channels_last = features.device.type == "cpu"
        if channels_last:
            # oneDNN runs the stride-2 convolutions (forward and backward) about twice as fast on
            # channels-last tensors and weights (BENCHMARKS.md). The one-channel input viewed with
            # channels-last strides (no copy) makes the first convolution write its output in that
            # layout already, so the ReLU's saved output and its gradient share it too. The weight goes
            # in through a (C, 3, 3) view: its gradient then comes back with the parameter's strides,
            # not the convolution's channels-last ones on the size-1 dim (DDP warns about those)
            w1 = self.conv1.weight
            x = F.conv2d(features.unsqueeze(-1).permute(0, 3, 1, 2), w1.view(w1.size(0), *w1.shape[2:]).unsqueeze(1),
                         self.conv1.bias, stride=self.conv1.stride)  # (B, C, T1, F1), channels-last in memory
        else:
            x = self.conv1(features.unsqueeze(1))  # (B, C, T1, F1)
        x = torch.relu(x)
        for conv in (self.conv2, self.conv3):
            if conv is not None:
                weight = conv.weight.contiguous(memory_format=torch.channels_last) if channels_last else conv.weight
                x = torch.relu(F.conv2d(x, weight, conv.bias, stride=conv.stride))  # (B, C, T', F')
        b, c, t, f = x.shape
        if channels_last:
            # (B, T', F', C) in memory: read in place, the projection's columns taken in (f, c) order
            w = self.proj.weight.view(-1, c, f).transpose(1, 2).reshape(-1, f * c)
            x = F.linear(x.permute(0, 2, 3, 1).reshape(b, t, f * c), w, self.proj.bias)
        else:
            x = self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        out_lens = self.output_lengths(lengths)
        x = x * lengths_to_padding_mask(out_lens, t).unsqueeze(-1).to(x.dtype)
        return self.dropout(x), out_lens


class StackedProjection(nn.Module):
    """Stack ``stack_frames`` frames, then ``LayerNorm`` + ``Linear`` (the w2v-BERT 2.0 front end).

    Args:
        input_dim: fbank bins F (80); the projection reads ``stack_frames * F`` (160).
        stack_frames: frames per output frame.
        d_model: output width.
        dropout: dropout on the output.
        eps: layer-norm epsilon.
    """

    def __init__(
        self, input_dim: int, stack_frames: int, d_model: int, dropout: float = 0.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.stack_frames = stack_frames
        self.subsampling = stack_frames
        self.min_input_frames = stack_frames
        self.layer_norm = nn.LayerNorm(input_dim * stack_frames, eps=eps)
        self.projection = nn.Linear(input_dim * stack_frames, d_model)
        self.dropout = Dropout(dropout)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """``T' = T // stack_frames`` for ``lengths: (B,)``."""
        return torch.div(lengths, self.stack_frames, rounding_mode="floor")

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``features: (B, T, F)``, ``lengths: (B,)`` -> ``(latent (B, T // k, d_model), lengths' (B,))``.

        Padded output frames are set to zero.
        """
        _check_input(features, lengths, self.input_dim)
        if lengths.numel() and int(lengths.min()) < self.min_input_frames:
            raise ValueError(
                f"an utterance has {int(lengths.min())} frames; stacking {self.stack_frames} frames needs "
                f"at least {self.min_input_frames}"
            )
        b, t, f = features.shape
        t_out = t // self.stack_frames
        x = features[:, : t_out * self.stack_frames].reshape(b, t_out, self.stack_frames * f)
        x = self.projection(self.layer_norm(x))
        out_lens = self.output_lengths(lengths)
        x = x * lengths_to_padding_mask(out_lens, t_out).unsqueeze(-1).to(x.dtype)
        return self.dropout(x), out_lens


def build_frontend(cfg: FrontendConfig, d_model: int) -> ConvSubsampling | StackedProjection:
    """Front end named by ``cfg.kind``."""
    if cfg.kind == "conv2d":
        return ConvSubsampling(cfg.input_dim, cfg.conv_channels, d_model, cfg.dropout, cfg.conv_layers)
    if cfg.kind == "stack":
        return StackedProjection(cfg.input_dim, cfg.stack_frames, d_model, cfg.dropout, cfg.layer_norm_eps)
    raise ValueError(f"unknown frontend kind {cfg.kind!r}; choose 'conv2d' or 'stack'")
