"""Conformer blocks with Shaw-style clipped relative position keys.

One block (Gulati et al. 2020, as in HF ``Wav2Vec2BertEncoderLayer``)::

    x = x + 0.5 * FFN1(LN(x))                 # macaron half-step feed-forward
    x = x + Dropout(MHSA(LN(x)))              # relative-position self-attention
    x = x + Conv(x)                           # LN, pointwise, GLU, depthwise, norm, act, pointwise
    x = x + 0.5 * FFN2(LN(x))
    x = LN(x)

Relative positions (``pos_encoding="shaw"``) follow HF's ``position_embeddings_type="relative_key"``
exactly: for query i and key j, ``d = clamp(j - i, -left_max_position, right_max_position)`` and

    score[i, j] = (q_i . k_j + q_i . E[d + left_max_position]) / sqrt(head_dim)

with one learned ``distance_embedding`` ``E: (left + right + 1, head_dim)`` per layer shared by the
heads. The relative term is computed as ``q @ E^T`` (``(B, H, T, P)``, cheap) and gathered into a
``(B, H, T, T)`` float bias that goes into ``scaled_dot_product_attention`` as an additive mask
together with the key-padding mask.

Module and parameter names mirror HF's (``linear_q``, ``distance_embedding``, ``ffn1.intermediate_dense``,
``conv_module.pointwise_conv1``, ``final_layer_norm``...), so that importing w2v-BERT 2.0 weights is a
renaming exercise. HF's w2v-BERT 2.0 corresponds to ``conv_causal=True``, ``conv_bias=False``,
``conv_norm="layer"``, ``activation="swish"``, ``conv_kernel=31``, left/right 64/8, d_model 1024,
16 heads, FFN 4096, 8 contrastive + 16 MLM layers, ``frontend.kind="stack"``. Key mapping (HF
``Wav2Vec2BertModel`` -> ``JustModel``)::

    feature_projection.{layer_norm,projection}.*  -> frontend.{layer_norm,projection}.*
    encoder.layers.{i}.<name>                     -> contrastive_stack.layers.{i}.<name>   (i < N)
                                                     mlm_stack.layers.{i - N}.<name>       (i >= N)
    masked_spec_embed                             -> masker.mask_embedding  (masking.replace="learned")

Padding: keys beyond each row's length are masked out of attention, and the convolution module
zeroes padded frames right before the depthwise convolution; with ``conv_norm="batch"`` the batch
statistics are taken over valid frames only. So in eval mode an utterance's outputs in a padded batch
equal its outputs alone (and padded output frames are zeroed).

Example::

    >>> import torch
    >>> from just_asr.model.config import EncoderConfig
    >>> stack = ConformerStack(EncoderConfig(d_model=16, num_heads=2, ffn_dim=32, conv_kernel=3), 2)
    >>> y = stack(torch.randn(2, 9, 16), torch.tensor([9, 4]))
    >>> tuple(y.shape)
    (2, 9, 16)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import EncoderConfig
from .frontend import Dropout, fast_dropout, lengths_to_padding_mask


def _activation(name: str) -> nn.Module:
    table = {"swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU}
    if name not in table:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(table)}")
    return table[name]()


def relative_position_index(t_query: int, t_key: int, left: int, right: int, device: torch.device) -> Tensor:
    """``(t_query, t_key)`` int64 index ``clamp(j - i, -left, right) + left`` into the distance table."""
    i = torch.arange(t_query, device=device).unsqueeze(1)
    j = torch.arange(t_key, device=device).unsqueeze(0)
    return (j - i).clamp(-left, right) + left


def _plain_clipped_gather(rel: Tensor, left: int, right: int) -> Tensor:
    t = rel.size(-2)
    idx = relative_position_index(t, t, left, right, rel.device)
    return rel.gather(-1, idx.expand(*rel.shape[:-1], t))


class _ClippedRelativeGather(torch.autograd.Function):
    """:func:`_plain_clipped_gather` with a backward free of atomics.

    The gather's own backward is a ``scatter_add`` of the ``(B, H, T, T)`` gradient into the
    ``(B, H, T, P)`` table: every key beyond the clipping distances lands on the first or the last
    slot, so on a GPU hundreds of atomic bf16 adds per query row hit one address (measured on an H100:
    about 6 ms per layer at B=32, T'=468, a fifth of the paper-size model's step). Here the clipped
    slots are read off a prefix sum along the keys (the last one as the row total minus a prefix)
    and the ``P - 2`` slots in between (one key each) are gathered: one pass, no atomics. Sums are
    float32 (float64 for float64), as accurate as the scatter's on attention gradients; a
    non-finite gradient entry can make its whole row's last slot NaN (the step is skipped then).
    Needs ``P >= 2``: :func:`clipped_relative_gather` takes the plain gather for ``P == 1``.
    """

    @staticmethod
    def forward(ctx, rel: Tensor, left: int, right: int) -> Tensor:  # type: ignore[override]
        if rel.size(-1) != left + right + 1 or rel.size(-1) < 2:
            raise ValueError(f"_ClippedRelativeGather: needs left + right + 1 = P >= 2 slots, got "
                             f"P={rel.size(-1)}, left={left}, right={right}")
        ctx.shape, ctx.left, ctx.right = rel.shape, left, right
        return _plain_clipped_gather(rel, left, right)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        b, h, t, p = ctx.shape
        left, right = ctx.left, ctx.right
        acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
        # prefix[..., i, k] = sum of the keys j < k of query i, k = 0..T
        prefix = grad.new_zeros((b, h, t, t + 1), dtype=acc)
        torch.cumsum(grad, -1, dtype=acc, out=prefix[..., 1:])
        i = torch.arange(t, device=grad.device)

        def at(k: Tensor) -> Tensor:  # prefix[..., i, k_i] for one k per query row, k clamped to [0, T]
            return prefix.gather(-1, k.clamp(0, t).view(1, 1, t, 1).expand(b, h, t, 1))

        first = at(i - left + 1)  # slot 0: keys j <= i - left
        last = prefix[..., -1:] - at(i + right)  # slot P-1: keys j >= i + right
        parts = [first]
        if p > 2:  # slots 1..P-2: distance d = slot - left, one key j = i + d each (none outside [0, T))
            j = i[:, None] + torch.arange(1 - left, right, device=grad.device)[None, :]  # (T, P-2)
            one = grad.gather(-1, j.clamp(0, t - 1).expand(b, h, t, p - 2)).to(acc)
            parts.append(torch.where((j >= 0) & (j < t), one, one.new_zeros(())))
        parts.append(last)
        return torch.cat(parts, -1).to(grad.dtype), None, None


def clipped_relative_gather(rel: Tensor, left: int, right: int, atomic_free: bool | None = None) -> Tensor:
    """``(B, H, T, left + right + 1)`` distance scores -> ``(B, H, T, T)`` scores of each (query, key)
    pair: ``out[..., i, j] = rel[..., i, clamp(j - i, -left, right) + left]`` (a fresh tensor).

    ``atomic_free``: whether the backward is :class:`_ClippedRelativeGather`'s (prefix sums) instead
    of the plain gather's ``scatter_add``. ``None`` (default): on every device but the CPU, where the
    scatter has no atomics to contend on and measured 1-2% faster per tiny-model step."""
    if rel.size(-1) != left + right + 1:
        raise ValueError(f"clipped_relative_gather: rel has {rel.size(-1)} slots, expected {left + right + 1}")
    if atomic_free is None:
        atomic_free = rel.device.type != "cpu"
    if not atomic_free or left + right == 0 or not torch.is_grad_enabled() or not rel.requires_grad:
        return _plain_clipped_gather(rel, left, right)
    return _ClippedRelativeGather.apply(rel, left, right)


class FeedForward(nn.Module):
    """``Linear(d, ffn) -> act -> dropout -> Linear(ffn, d) -> dropout`` on ``(B, T, d)``."""

    def __init__(self, d_model: int, ffn_dim: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(d_model, ffn_dim)
        self.activation = _activation(activation)
        self.intermediate_dropout = Dropout(dropout)
        self.output_dense = nn.Linear(ffn_dim, d_model)
        self.output_dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(self.activation(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with optional Shaw clipped relative keys.

    Args:
        d_model: width; ``head_dim = d_model // num_heads``.
        num_heads: heads.
        dropout: dropout on attention probabilities (training only).
        pos_encoding: ``"shaw"`` or ``"none"``.
        left_max_position, right_max_position: clipping distances (keys before / after the query).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        dropout: float = 0.0,
        pos_encoding: str = "shaw",
        left_max_position: int = 64,
        right_max_position: int = 8,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if pos_encoding not in ("shaw", "none"):
            raise ValueError(f"unknown pos_encoding {pos_encoding!r}; choose 'shaw' or 'none'")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.pos_encoding = pos_encoding
        self.left_max_position = left_max_position
        self.right_max_position = right_max_position
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        if pos_encoding == "shaw":
            self.distance_embedding = nn.Embedding(left_max_position + right_max_position + 1, self.head_dim)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x: (B, T, d_model)``, ``valid: (B, T)`` bool (True at real frames) -> ``(B, T, d_model)``.

        Padded keys get no attention; padded query rows produce finite values that callers ignore.
        """
        b, t, _ = x.shape
        h, dh = self.num_heads, self.head_dim
        q = self.linear_q(x).view(b, t, h, dh).transpose(1, 2)  # (B, H, T, dh)
        k = self.linear_k(x).view(b, t, h, dh).transpose(1, 2)
        v = self.linear_v(x).view(b, t, h, dh).transpose(1, 2)
        key_ok = valid[:, None, None, :]  # (B, 1, 1, T)
        if self.pos_encoding == "shaw":
            # Scale the small (B, H, T, P) table, not the (B, H, T, T) bias.
            table = self.distance_embedding.weight.to(q.dtype) * (1.0 / math.sqrt(dh))  # (P, dh)
            rel = torch.matmul(q, table.t())  # (B, H, T, P)
            mask: Tensor = clipped_relative_gather(rel, self.left_max_position, self.right_max_position)
            mask.masked_fill_(~key_ok, float("-inf"))  # in place is safe: the gather's backward needs no output
        else:
            mask = key_ok
        p = self.dropout if self.training else 0.0
        if p > 0.0 and x.device.type == "cpu" and bool(valid.any(dim=1).all()):
            # (an utterance without a single valid frame is left to SDPA, whose softmax gives such
            # fully masked rows zeros instead of NaN)
            out = _attention_with_fast_dropout(q, k, v, mask, p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, dh)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, h * dh))


def _attention_with_fast_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p: float) -> Tensor:
    """``scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)`` written out, with the
    attention-probability dropout from :func:`fast_dropout`.

    On the CPU, SDPA with dropout takes its math path, whose mask is ``bernoulli_``: about 6 ns per
    element on the project's AMD machine, 15% of a tiny JUST training step at 15 s utterances
    (``BENCHMARKS.md``). The integer-draw mask of :class:`Dropout` is several times cheaper. The
    rest is the math path's arithmetic: bf16/fp16 inputs are computed in float32 (so under autocast
    the scores are not rounded to bf16 before the softmax; float64 stays float64), the mask is
    added (float) or masks keys (bool), and the result has ``q``'s dtype. Two differences: the
    scale ``1/sqrt(head_dim)`` multiplies the query alone (the math path puts its square root on
    both ``q`` and ``k``: equal up to rounding), and a query row whose keys are all masked gives NaN
    (the math path's softmax gives zeros; the module sends such batches to SDPA).
    """
    out_dtype = q.dtype
    cd = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        b, h, t, dh = q.shape
        qs = (q.to(cd) * (1.0 / math.sqrt(dh))).reshape(b * h, t, dh)
        ks = k.to(cd).reshape(b * h, -1, dh)
        if mask.dtype == torch.bool:
            scores = torch.bmm(qs, ks.transpose(1, 2)).view(b, h, t, -1).masked_fill(~mask, float("-inf"))
        else:
            bias = mask.to(cd).expand(b, h, t, ks.size(1)).reshape(b * h, t, -1)
            scores = torch.baddbmm(bias, qs, ks.transpose(1, 2)).view(b, h, t, -1)
        attn = fast_dropout(torch.softmax(scores, dim=-1), p, True)
        return torch.matmul(attn, v.to(cd)).to(out_dtype)


class MaskedBatchNorm1d(nn.Module):
    """Batch norm over ``(B, C, T)`` whose statistics use only valid frames.

    Training: per-channel mean and (biased) variance over the valid frames of the batch; running
    statistics are updated with ``momentum`` (unbiased variance, as ``nn.BatchNorm1d``). Eval: running
    statistics. Padded frames never influence the statistics, so padding cannot change the outputs.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x: (B, C, T)``, ``valid: (B, T)`` bool -> ``(B, C, T)``."""
        if self.training:
            m = valid.unsqueeze(1).to(x.dtype)  # (B, 1, T)
            n = m.sum().clamp(min=1.0)
            mean = (x * m).sum(dim=(0, 2)) / n
            var = (((x - mean[None, :, None]) ** 2) * m).sum(dim=(0, 2)) / n
            with torch.no_grad():
                unbiased = var * (n / (n - 1.0).clamp(min=1.0))
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased.detach().to(self.running_var.dtype))
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        y = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


class ConvModule(nn.Module):
    """Conformer convolution module on ``(B, T, d)``.

    ``LN -> pointwise Conv1d(d, 2d) -> GLU -> zero padded frames -> depthwise Conv1d(kernel)
    -> norm (layer or masked batch) -> activation -> pointwise Conv1d(d, d) -> dropout``.
    """

    def __init__(
        self,
        d_model: int,
        kernel_size: int,
        norm: str = "layer",
        causal: bool = False,
        bias: bool = True,
        activation: str = "swish",
        dropout: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv kernel must be odd, got {kernel_size}")
        if norm not in ("layer", "batch"):
            raise ValueError(f"unknown conv_norm {norm!r}; choose 'layer' or 'batch'")
        self.kernel_size = kernel_size
        self.causal = causal
        self.norm_kind = norm
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, bias=bias)
        if norm == "layer":
            self.depthwise_layer_norm = nn.LayerNorm(d_model, eps=eps)
        else:
            self.depthwise_batch_norm = MaskedBatchNorm1d(d_model, eps=eps)
        self.activation = _activation(activation)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x: (B, T, d)``, ``valid: (B, T)`` bool -> ``(B, T, d)`` (the residual branch only).

        Computed in the ``(B, T, d)`` layout throughout (same math as the ``Conv1d`` modules on
        ``(B, d, T)``, without the transposes): the pointwise convolutions are ``F.linear`` with the
        ``(out, in, 1)`` kernels viewed as ``(out, in)``, and the depthwise convolution is a grouped
        ``conv2d`` over the ``(B, d, 1, T)`` channels-last view of the ``(B, T, d)`` tensor, which
        oneDNN runs without reordering (forward + backward 2.3x faster than ``conv1d`` on a padded
        ``(B, d, T)`` copy in float32; see ``BENCHMARKS.md``, training throughput); in float32 on
        CPU even under bf16 autocast (:meth:`_depthwise`).
        """
        y = self.layer_norm(x)  # (B, T, d)
        y = F.linear(y, self.pointwise_conv1.weight.squeeze(-1), self.pointwise_conv1.bias)  # (B, T, 2d)
        y = F.glu(y, dim=-1)  # (B, T, d): first half * sigmoid(second half), as GLU over channels
        y = y.masked_fill(~valid.unsqueeze(-1), 0.0)
        if self.causal:
            y = F.pad(y, (0, 0, self.kernel_size - 1, 0))  # left-pad time
            pad = 0
        else:
            pad = (self.kernel_size - 1) // 2
        y = self._depthwise(y, pad)  # (B, T, d)
        if self.norm_kind == "layer":
            y = self.depthwise_layer_norm(y)
        else:
            y = self.depthwise_batch_norm(y.transpose(1, 2), valid).transpose(1, 2)
        y = F.linear(self.activation(y), self.pointwise_conv2.weight.squeeze(-1), self.pointwise_conv2.bias)
        return self.dropout(y)


    def _depthwise(self, y: Tensor, pad: int) -> Tensor:
        """The depthwise convolution of ``y: (B, T, d)`` (time already padded when causal) ->
        ``(B, T, d)``, as a grouped ``conv2d`` over the ``(B, d, 1, T)`` channels-last view.

        On CPU it runs in float32 (float64 stays float64), outside autocast, and the result is
        cast back to ``y``'s dtype: oneDNN's float32 kernel reads the channels-last view without a
        copy and is the fastest, while its bf16 one on that view never returns with more than one
        thread at some shapes (torch 2.13: B=15, T=38, d=144, kernel 15, 2 threads spins forever;
        any even T did at B=15) and on a contiguous copy takes 5-7x the forward time of the cast
        plus the float32 kernel on the view (fwd + bwd 1.6-1.8x; ``BENCHMARKS.md``, decoding
        speed). Under bf16 autocast the weights therefore stay float32 and only the input and the
        result are bf16 (the bf16 kernel also rounded weight and bias to bf16). CUDA runs the view
        in the input's dtype.
        """
        d = y.size(-1)
        # (d, 1, 1, kernel) through a (d, kernel) view: the weight's gradient then comes back with the
        # parameter's own strides (an unsqueeze passes on the convolution's channels-last strides of
        # its size-1 dims, and DDP warned "Grad strides do not match bucket view strides")
        weight = self.depthwise_conv.weight.view(d, -1)[:, None, None, :]
        bias = self.depthwise_conv.bias
        if y.is_cuda:
            out = F.conv2d(y.transpose(1, 2).unsqueeze(2), weight, bias, padding=(0, pad), groups=d)
            return out.squeeze(2).transpose(1, 2)
        dtype = y.dtype
        compute = torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> float32, float64 stays
        with torch.autocast(y.device.type, enabled=False):
            v = y.to(compute).transpose(1, 2).unsqueeze(2)  # (B, d, 1, T_pad), channels-last strides
            out = F.conv2d(v, weight.to(compute), None if bias is None else bias.to(compute), padding=(0, pad),
                           groups=d)
        return out.squeeze(2).transpose(1, 2).to(dtype)


class ConformerBlock(nn.Module):
    """One conformer block (see the module docstring) built from an ``EncoderConfig``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d, eps = cfg.d_model, cfg.layer_norm_eps
        self.ffn1_layer_norm = nn.LayerNorm(d, eps=eps)
        self.ffn1 = FeedForward(d, cfg.ffn_dim, cfg.activation, cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=eps)
        self.self_attn = RelativeSelfAttention(
            d, cfg.num_heads, cfg.attention_dropout, cfg.pos_encoding, cfg.left_max_position, cfg.right_max_position
        )
        self.self_attn_dropout = Dropout(cfg.dropout)
        self.conv_module = ConvModule(
            d, cfg.conv_kernel, cfg.conv_norm, cfg.conv_causal, cfg.conv_bias, cfg.activation, cfg.dropout, eps
        )
        self.ffn2_layer_norm = nn.LayerNorm(d, eps=eps)
        self.ffn2 = FeedForward(d, cfg.ffn_dim, cfg.activation, cfg.dropout)
        self.final_layer_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x: (B, T, d)``, ``valid: (B, T)`` bool -> ``(B, T, d)``."""
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.self_attn_dropout(self.self_attn(self.self_attn_layer_norm(x), valid))
        x = x + self.conv_module(x, valid)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class ConformerStack(nn.Module):
    """``num_layers`` conformer blocks. Padded frames are zeroed on input and output.

    Args:
        cfg: block settings.
        num_layers: depth (0 gives an identity that still zeroes padding).
    """

    def __init__(self, cfg: EncoderConfig, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ConformerBlock(cfg) for _ in range(num_layers)])

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """``x: (B, T, d)``, ``lengths: (B,)`` valid frames -> ``(B, T, d)``."""
        valid = lengths_to_padding_mask(lengths, x.size(1))
        keep = valid.unsqueeze(-1).to(x.dtype)
        x = x * keep
        for layer in self.layers:
            x = layer(x, valid)
        return x * keep
