"""Typed configuration of the JUST model.

``ModelConfig`` is a tree of plain dataclasses (type hints + defaults only, no jsonargparse import)
so that the training layer can expose it as Lightning CLI arguments. ``ModelConfig.from_dict``
rejects unknown keys and wrong value types with a message naming the offending key path;
``load_model_config(path)`` reads a YAML preset, where the config sits under ``model: arch:``
(the layout of ``configs/model/*.yaml``) or, for convenience, at the top level.

Example::

    >>> cfg = ModelConfig.from_dict({"encoder": {"d_model": 64, "num_heads": 2}})
    >>> cfg.encoder.d_model, cfg.masking.span
    (64, 10)
    >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

import dataclasses
import os
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


@dataclass
class FrontendConfig:
    """Feature front end: fbank ``(B, T, input_dim)`` -> latent ``(B, T', d_model)``.

    Attributes:
        kind: ``"conv2d"``: ``conv_layers`` 3x3 stride-2 Conv2d + ReLU layers (4x or 8x subsampling)
            followed by a linear projection; ``"stack"``: stack ``stack_frames`` consecutive frames
            (80-d -> 160-d at 20 ms), then layer norm + linear projection, no convolutions (the
            w2v-BERT 2.0 / HF ``Wav2Vec2BertFeatureProjection`` front end).
        input_dim: fbank bins per frame.
        conv_channels: output channels of every conv layer (``conv2d`` only). This dominates the
            front end's cost, so keep it modest for small models.
        conv_layers: stride-2 conv layers (``conv2d`` only): 2 (4x subsampling, 40 ms frames) or 3
            (8x, 80 ms frames: half the encoder frames; mind that CTC needs at least as many frames
            as tokens, and masking spans are counted in these frames).
        stack_frames: frames stacked per output frame (``stack`` only).
        layer_norm_eps: epsilon of the ``stack`` front end's layer norm.
        dropout: dropout on the projected latent.
    """

    kind: Literal["conv2d", "stack"] = "conv2d"
    input_dim: int = 80
    conv_channels: int = 64
    conv_layers: int = 2
    stack_frames: int = 2
    layer_norm_eps: float = 1e-5
    dropout: float = 0.1


@dataclass
class EncoderConfig:
    """Settings shared by every conformer block (contrastive and MLM stacks).

    Attributes:
        d_model: model width.
        num_heads: attention heads (``d_model`` must be divisible by it).
        ffn_dim: hidden width of each macaron feed-forward module.
        conv_kernel: depthwise convolution kernel (odd, typically 5..31).
        conv_norm: normalisation after the depthwise conv. ``"layer"`` (default) is per frame and
            therefore padding-safe. ``"batch"`` is a *masked* batch norm whose statistics are taken
            over valid (unpadded) frames only, so it stays padding-invariant in training too.
        conv_causal: pad the depthwise conv on the left only (w2v-BERT 2.0 does this);
            ``False`` pads symmetrically.
        conv_bias: bias in the convolution module's pointwise/depthwise convs (HF w2v-BERT 2.0: no).
        activation: ``swish``/``silu``, ``relu`` or ``gelu`` (feed-forward and conv module).
        pos_encoding: ``"shaw"``: Shaw-style clipped relative keys (HF ``relative_key``): a learned
            ``distance_embedding`` per layer of ``left_max_position + right_max_position + 1``
            vectors of head size, shared by the heads; ``"none"``: plain attention.
        left_max_position: clipping distance for keys left of (before) the query.
        right_max_position: clipping distance for keys right of (after) the query.
        dropout: residual and feed-forward dropout.
        attention_dropout: dropout on attention probabilities.
        residual_init_scale: multiplies the initial weights of the last layer of every residual
            branch (feed-forward output, attention output, conv module's second pointwise conv), so
            each block starts close to the identity. ``1.0`` is PyTorch's default initialisation;
            small values (icefall initialises these layers at 0.25) let a deep encoder trained
            from scratch on little data leave the blank-only plateau in hundreds of steps instead
            of thousands. Only initialisation: loaded weights are unaffected.
        layer_norm_eps: epsilon of every layer norm.
    """

    d_model: int = 144
    num_heads: int = 4
    ffn_dim: int = 576
    conv_kernel: int = 15
    conv_norm: Literal["layer", "batch"] = "layer"
    conv_causal: bool = False
    conv_bias: bool = True
    activation: Literal["swish", "silu", "relu", "gelu"] = "swish"
    pos_encoding: Literal["shaw", "none"] = "shaw"
    left_max_position: int = 64
    right_max_position: int = 8
    dropout: float = 0.1
    attention_dropout: float = 0.1
    residual_init_scale: float = 1.0
    layer_norm_eps: float = 1e-5


@dataclass
class MaskingConfig:
    """Span masking of the latent frames (w2v-BERT).

    Every valid frame starts a span with probability ``prob``; spans cover ``span`` frames and are
    cut at the utterance's valid length; at least ``min_spans`` spans per utterance (fewer only
    when the utterance has fewer frames). About ``1 - (1 - prob) ** span`` (0.489 at the defaults)
    of the frames end up masked. Masked frames are replaced by ``N(0, noise_std**2)`` noise
    (``replace="noise"``) or by one learned vector (``replace="learned"``).
    """

    prob: float = 0.065
    span: int = 10
    min_spans: int = 2
    replace: Literal["noise", "learned"] = "noise"
    noise_std: float = 0.1


@dataclass
class QuantizerConfig:
    """Gumbel-softmax quantiser over the unmasked latents.

    Attributes:
        num_codebooks: G.
        codebook_size: V entries per codebook.
        code_dim: width of a quantised vector (split evenly across codebooks); ``None``: d_model.
        temperature_start, temperature_end, temperature_decay: Gumbel temperature schedule
            ``max(end, start * decay ** step)``; the model starts at ``temperature_start``.
    """

    num_codebooks: int = 1
    codebook_size: int = 1024
    code_dim: int | None = None
    temperature_start: float = 2.0
    temperature_end: float = 0.1
    temperature_decay: float = 0.999995


@dataclass
class ContrastiveConfig:
    """Contrastive module: ``num_layers`` conformer blocks over the masked latents, then context and
    targets are projected to ``final_dim``; ``num_distractors`` negatives per masked frame drawn from
    the same utterance's masked frames; cosine similarity divided by ``kappa``."""

    num_layers: int = 2
    final_dim: int = 128
    num_distractors: int = 100
    kappa: float = 0.1


@dataclass
class MlmConfig:
    """MLM module: ``num_layers`` conformer blocks over the contrastive module's output, then a linear
    head over the G x V code ids."""

    num_layers: int = 4


@dataclass
class DecoderConfig:
    """RNN-T prediction network, joiner (see ``just_asr.model.transducer``) and how the RNN-T loss
    is computed.

    Attributes:
        predictor: ``"lstm"`` (embedding + LSTM, the paper's) or ``"stateless"`` (icefall's
            embedding + a causal convolution over the last ``context_size`` tokens; its width is
            ``embed_dim``): it cannot memorise transcripts, which helps small corpora.
        context_size: tokens the stateless predictor sees (icefall: 2).
        embed_dim, hidden_dim, num_layers, dropout: predictor (embedding + LSTM) sizes.
        joint_dim: width of the joiner's joint space.
        joiner_activation: non-linearity inside the joiner.
        joiner_precision: ``"float32"`` (default): the joiner (projections, activation, output
            layer) runs in float32 with autocast turned off, so the RNN-T loss reads float32
            logits computed from float32 weights. ``"autocast"``: the joiner runs under the
            training step's autocast (bf16 matmuls under ``bf16-mixed``; no change without
            autocast) and its logits are cast to float32 before the loss, which still computes in
            float32 (what NeMo and icefall do under mixed precision). On CPU this makes a tiny
            bf16 JUST step about 10% faster (``BENCHMARKS.md``); the logits are then rounded to
            bf16 (8 significant bits) before the loss.
        rnnt: ``"full"``: the joiner over the whole ``(T', U+1)`` lattice and the full fused RNN-T
            loss (``just_asr.losses.rnnt``); ``"pruned"``: k2's pruned RNN-T
            (``just_asr.losses.pruned_rnnt``): two extra linear "simple" heads (encoder -> V,
            predictor -> V) give a cheap simple loss whose occupancies choose ``prune_range`` label
            positions per frame, and the joiner runs only there. The RNN-T term is then
            ``simple_scale * simple + pruned_scale * pruned`` with icefall's warm-up (see
            ``pruned_loss_scales``): simple 1.0 -> ``simple_loss_scale`` and pruned 0.1 -> 1.0
            linearly over the first ``rnnt_warmup_steps`` steps (the model reads the step from
            ``JustModel.set_step``).
        prune_range: window width S of the pruned loss (icefall: 5).
        simple_loss_scale: weight of the simple loss after the warm-up (icefall: 0.5).
        rnnt_warmup_steps: warm-up length in optimiser steps (icefall's ``warm_step``: 2000);
            0 disables the warm-up.
        simple_am_only_scale, simple_lm_only_scale: smoothing of the simple loss with the
            encoder-only / predictor-only log-softmaxes (icefall's ``am_scale=0``,
            ``lm_scale=0.25``).
        fused_batch_size: ``None`` builds the whole ``(B, T', U+1, V)`` joiner output (``rnnt:
            full``) or ``(B, T', S, V)`` pruned output (``rnnt: pruned``) at once; an integer runs
            the joiner + loss over sub-batches of that many utterances with activation
            recomputation in backward, so peak memory is bounded by one sub-batch's lattice. The
            loss and gradients are identical (NeMo's "fused batch size").
    """

    predictor: Literal["lstm", "stateless"] = "lstm"
    context_size: int = 2
    embed_dim: int = 128
    hidden_dim: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    joint_dim: int = 256
    joiner_activation: Literal["tanh", "relu", "swish", "silu", "gelu"] = "tanh"
    joiner_precision: Literal["float32", "autocast"] = "float32"
    rnnt: Literal["full", "pruned"] = "full"
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    rnnt_warmup_steps: int = 2000
    simple_am_only_scale: float = 0.0
    simple_lm_only_scale: float = 0.25
    fused_batch_size: int | None = None


@dataclass
class LossWeights:
    """Weights of ``L = rnnt * L_rnnt + ssl * (L_contrastive + diversity * L_diversity + mlm * L_mlm)``.

    Attributes:
        rnnt: w_rnnt. ``0`` turns the supervised branch off: pure w2v-BERT pretraining, the
            predictor and joiner are not run.
        ssl: beta. ``0`` turns the model into a supervised-only RNN-T: no masking, quantiser,
            contrastive projections or MLM head are run. Default 1.0, i.e. the self-supervised
            terms at w2v-BERT's own unit weights (the JUST paper's beta is unknown; sweep it,
            e.g. 0.01..1).
        diversity: alpha (0.1 as in w2v-BERT).
        mlm: gamma (1.0 as in w2v-BERT).
        ctc: weight of an auxiliary CTC loss on the encoder output that feeds the joiner (a linear
            head ``ctc_head``, blank 0; same reduction as the RNN-T term). ``0`` (default, the
            paper) builds no head. A small weight (ESPnet/NeMo use 0.1-0.3) speeds up the encoder's
            alignment learning when training from scratch on little data.
        rnnt_ramp_steps: ``0`` (default): the RNN-T term has weight ``rnnt`` from the first step;
            ``n > 0``: its weight rises linearly from 0 to ``rnnt`` over the first ``n`` optimiser
            steps (the model reads the step from ``JustModel.set_step``). With ``ctc > 0`` this
            lets the encoder learn alignments from the CTC term first: from scratch on little data
            the RNN-T gradient slows the encoder's escape from the blank-only plateau.
        ssl_start_step, ssl_ramp_steps: beta is 0 (and the self-supervised branch is not run) before
            optimiser step ``ssl_start_step``, then rises linearly to ``ssl`` over ``ssl_ramp_steps``
            steps (defaults 0, 0: beta from the first step, the paper's setting). From scratch on
            little data, the self-supervised gradients slow the encoder's first alignment learning;
            the demo starts them once the supervised terms have left the blank plateau.
        rnnt_reduction: ``"token"`` (default): the summed negative log-likelihood of all transcribed
            utterances divided by their total number of target tokens (per-token mean, which keeps
            L_rnnt on the same per-frame/per-token scale as the self-supervised terms);
            ``"utterance"``: the mean over transcribed utterances of each utterance's negative
            log-likelihood. Rows without text never count in either.
    """

    rnnt: float = 1.0
    ssl: float = 1.0
    diversity: float = 0.1
    mlm: float = 1.0
    ctc: float = 0.0
    rnnt_ramp_steps: int = 0
    ssl_start_step: int = 0
    ssl_ramp_steps: int = 0
    rnnt_reduction: Literal["token", "utterance"] = "token"


@dataclass
class ModelConfig:
    """The whole JUST model.

    ``rnnt_branch``: ``"unmasked"`` (default): a second forward of the full encoder without masking
    feeds the RNN-T; ``"masked"``: the RNN-T reads the MLM stack's output on the masked input (one
    encoder forward; masking doubles as augmentation; the paper's likely reading, not confirmed).
    The default is the miniature's dev winner (``recipes/synthetic``, RESULTS.md): JUST from scratch
    at beta 0.02, 1800 steps, dev WER 62.7% unmasked vs 83.3% masked. The unmasked branch costs a
    second encoder pass per step while the self-supervised terms are on (computed in the same
    module calls as the masked pass, concatenated along the batch: ``JustModel.joint_stacks_active``).
    """

    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    rnnt_branch: Literal["masked", "unmasked"] = "unmasked"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any] | None, source: str = "model config", lines: dict[str, int] | None = None
    ) -> "ModelConfig":
        """Build from a (possibly partial) nested dict; missing keys keep their defaults.

        Args:
            data: nested mapping of field values.
            source: name used in error messages (e.g. the YAML file).
            lines: optional ``{"encoder.d_model": line_number}`` map so errors also give the line.

        Raises:
            ValueError: naming ``source`` (and line) and the key path for unknown keys, wrong types
                and invalid values.
        """
        loc = _Loc(source, lines or {})
        cfg = _build(cls, data or {}, loc, "")
        validate_config(cfg, source, lines)
        return cfg


# --------------------------------------------------------------------------------------------
# dict -> dataclass conversion with clear errors


class _Loc:
    """Formats ``source`` or ``source:line`` for a key path."""

    def __init__(self, source: str, lines: dict[str, int]) -> None:
        self.source = source
        self.lines = lines

    def at(self, path: str) -> str:
        while path:
            if path in self.lines:
                return f"{self.source}:{self.lines[path]}"
            path = path.rpartition(".")[0]
        return self.source


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, loc: _Loc, path: str) -> Any:
    where = loc.at(path)
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: '{path}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, loc, path)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ValueError(f"{where}: '{path}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ValueError(f"{where}: '{path}' must not be null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, loc, path)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: bad value for '{path}'")
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: '{path}' must be true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: '{path}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: '{path}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: '{path}' must be a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported field type {_type_name(tp)} at '{path}'")


def _build(cls: Any, data: dict[str, Any], loc: _Loc, prefix: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            path = f"{prefix}.{key}" if prefix else str(key)
            raise ValueError(
                f"{loc.at(path)}: unknown key '{path}' (allowed under '{prefix or '<top>'}': {sorted(names)})"
            )
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _convert(hints[key], value, loc, path)
    return cls(**kwargs)


def validate_config(cfg: ModelConfig, source: str = "model config", lines: dict[str, int] | None = None) -> None:
    """Check value ranges that types cannot express; raises ``ValueError`` naming the key (and the
    line, when ``lines`` maps key paths to line numbers)."""
    loc = _Loc(source, lines or {})

    def need(cond: bool, key: str, why: str) -> None:
        if not cond:
            raise ValueError(f"{loc.at(key)}: '{key}' {why}")

    e = cfg.encoder
    need(e.d_model > 0, "encoder.d_model", "must be positive")
    need(e.num_heads > 0 and e.d_model % e.num_heads == 0, "encoder.num_heads",
         f"must divide encoder.d_model={e.d_model}")
    need(e.ffn_dim > 0, "encoder.ffn_dim", "must be positive")
    need(e.conv_kernel >= 1 and e.conv_kernel % 2 == 1, "encoder.conv_kernel", "must be a positive odd number")
    need(e.left_max_position >= 0, "encoder.left_max_position", "must be >= 0")
    need(e.right_max_position >= 0, "encoder.right_max_position", "must be >= 0")
    for name in ("dropout", "attention_dropout"):
        need(0.0 <= getattr(e, name) < 1.0, f"encoder.{name}", "must be in [0, 1)")
    need(e.residual_init_scale > 0.0, "encoder.residual_init_scale", "must be positive")
    f = cfg.frontend
    need(f.input_dim > 0, "frontend.input_dim", "must be positive")
    need(f.conv_channels > 0, "frontend.conv_channels", "must be positive")
    need(f.stack_frames >= 1, "frontend.stack_frames", "must be >= 1")
    need(f.conv_layers in (2, 3), "frontend.conv_layers", "must be 2 (4x subsampling) or 3 (8x)")
    min_bins = 2 ** (f.conv_layers + 1) - 1  # ConvSubsampling.min_input_frames (config must not import model)
    need(f.kind != "conv2d" or f.input_dim >= min_bins, "frontend.input_dim",
         f"must be >= {min_bins} for the {f.conv_layers}-layer conv2d front end")
    need(0.0 <= f.dropout < 1.0, "frontend.dropout", "must be in [0, 1)")
    m = cfg.masking
    need(0.0 <= m.prob <= 1.0, "masking.prob", "must be in [0, 1]")
    need(m.span >= 1, "masking.span", "must be >= 1")
    need(m.min_spans >= 0, "masking.min_spans", "must be >= 0")
    need(m.noise_std >= 0.0, "masking.noise_std", "must be >= 0")
    q = cfg.quantizer
    need(q.num_codebooks >= 1, "quantizer.num_codebooks", "must be >= 1")
    need(q.codebook_size >= 2, "quantizer.codebook_size", "must be >= 2")
    code_dim = q.code_dim if q.code_dim is not None else e.d_model
    need(code_dim > 0 and code_dim % q.num_codebooks == 0, "quantizer.code_dim",
         f"must be positive and divisible by quantizer.num_codebooks={q.num_codebooks}")
    need(q.temperature_start > 0 and q.temperature_end > 0, "quantizer.temperature_start",
         "and temperature_end must be positive")
    need(0.0 < q.temperature_decay <= 1.0, "quantizer.temperature_decay", "must be in (0, 1]")
    c = cfg.contrastive
    need(c.num_layers >= 0, "contrastive.num_layers", "must be >= 0")
    need(c.final_dim > 0, "contrastive.final_dim", "must be positive")
    need(c.num_distractors >= 1, "contrastive.num_distractors", "must be >= 1")
    need(c.kappa > 0, "contrastive.kappa", "must be positive")
    need(cfg.mlm.num_layers >= 0, "mlm.num_layers", "must be >= 0")
    need(c.num_layers + cfg.mlm.num_layers >= 1, "contrastive.num_layers", "+ mlm.num_layers must be >= 1")
    d = cfg.decoder
    for name in ("embed_dim", "hidden_dim", "num_layers", "joint_dim"):
        need(getattr(d, name) > 0, f"decoder.{name}", "must be positive")
    need(d.context_size >= 1, "decoder.context_size", "must be >= 1")
    need(d.prune_range >= 2, "decoder.prune_range", "must be >= 2")
    need(d.simple_loss_scale >= 0.0, "decoder.simple_loss_scale", "must be >= 0")
    need(d.rnnt_warmup_steps >= 0, "decoder.rnnt_warmup_steps", "must be >= 0")
    for name in ("simple_am_only_scale", "simple_lm_only_scale"):
        need(0.0 <= getattr(d, name) <= 1.0, f"decoder.{name}", "must be in [0, 1]")
    need(d.simple_am_only_scale + d.simple_lm_only_scale <= 1.0, "decoder.simple_lm_only_scale",
         "+ decoder.simple_am_only_scale must be <= 1")
    need(d.fused_batch_size is None or d.fused_batch_size >= 1, "decoder.fused_batch_size",
         "must be null or >= 1")
    w = cfg.loss
    for name in ("rnnt", "ssl", "diversity", "mlm", "ctc"):
        need(getattr(w, name) >= 0.0, f"loss.{name}", "must be >= 0")
    need(w.rnnt > 0 or w.ssl > 0, "loss.rnnt", "and loss.ssl cannot both be 0 (nothing to train)")
    need(w.rnnt_ramp_steps >= 0, "loss.rnnt_ramp_steps", "must be >= 0")
    need(w.ssl_start_step >= 0, "loss.ssl_start_step", "must be >= 0")
    need(w.ssl_ramp_steps >= 0, "loss.ssl_ramp_steps", "must be >= 0")
    need(w.rnnt > 0 or (w.ssl_start_step == 0 and w.ssl_ramp_steps == 0), "loss.ssl_start_step",
         "and loss.ssl_ramp_steps need loss.rnnt > 0 (otherwise nothing trains before beta starts)")
    need(w.ctc == 0 or w.rnnt > 0, "loss.ctc", "needs loss.rnnt > 0 (the CTC head reads the RNN-T branch's encoder output)")


# --------------------------------------------------------------------------------------------
# YAML helpers


def _key_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    """Record the 1-based line of every mapping key under a composed YAML node."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)


def yaml_error_text(exc: Exception) -> str:
    """One line for a PyYAML error: ``invalid YAML at line L, column C: <problem>`` (PyYAML's own
    text runs over several lines and names the stream ``"<unicode string>"``, not the file)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if mark is None and getattr(exc, "position", None) is not None:  # a ReaderError (a bad character)
        where = f" at character {exc.position + 1}"
        problem = problem.split(' in "<', 1)[0]
    context = getattr(exc, "context", None)
    return f"invalid YAML{where}: {problem}" + (f" ({context})" if context else "")


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Read a YAML file holding a ``ModelConfig`` under ``model: arch:`` (preset layout) or at the
    top level. Errors name the file and, where possible, the line."""
    import yaml

    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: model config file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{source}: is a folder, not a model config file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: {yaml_error_text(exc)}") from None
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    if "model" in data:
        model = data["model"]
        if not isinstance(model, dict) or "arch" not in model:
            raise ValueError(f"{source}:{lines.get('model', 1)}: expected the model config under 'model: arch:'")
        data = model["arch"] or {}
        lines = {k[len("model.arch."):]: v for k, v in lines.items() if k.startswith("model.arch.")}
    return ModelConfig.from_dict(data, source=source, lines=lines)


def save_model_config(cfg: ModelConfig, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML in the preset layout (``model: arch: ...``)."""
    import yaml

    with open(os.fspath(path), "w", encoding="utf-8") as fh:
        yaml.safe_dump({"model": {"arch": cfg.to_dict()}}, fh, sort_keys=False)


__all__ = [
    "FrontendConfig",
    "EncoderConfig",
    "MaskingConfig",
    "QuantizerConfig",
    "ContrastiveConfig",
    "MlmConfig",
    "DecoderConfig",
    "LossWeights",
    "ModelConfig",
    "validate_config",
    "load_model_config",
    "save_model_config",
]
