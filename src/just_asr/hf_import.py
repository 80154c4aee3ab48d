"""Import a Hugging Face ``Wav2Vec2BertModel`` (w2v-BERT 2.0) as a just-asr model directory.

``facebook/w2v-bert-2.0`` is a 24-layer conformer (8 contrastive + 16 MLM layers in its fairseq2
pretraining) over 160-d stacked fbank frames. just-asr's model layer was written so that this
encoder maps onto it by renaming (see ``just_asr.model.conformer``):

=====================================================  ============================================
HF ``Wav2Vec2BertModel`` key                           ``JustModel`` key
=====================================================  ============================================
``feature_projection.layer_norm.{weight,bias}``        ``frontend.layer_norm.*`` (``kind: stack``)
``feature_projection.projection.{weight,bias}``        ``frontend.projection.*``
``encoder.layers.{i}.<name>``, ``i < N``               ``contrastive_stack.layers.{i}.<name>``
``encoder.layers.{i}.<name>``, ``i >= N``              ``mlm_stack.layers.{i - N}.<name>``
``masked_spec_embed``                                  ``masker.mask_embedding`` (``replace: learned``)
=====================================================  ============================================

``N`` is ``contrastive_layers`` (8 for the public model). A ``wav2vec2_bert.`` prefix (the
task models, e.g. ``Wav2Vec2BertForCTC``) is stripped first. Every other key (a CTC ``lm_head``,
...) is reported as *unused*. The quantiser, contrastive projections, MLM head, RNN-T predictor and
joiner have no counterpart in the checkpoint and keep a fresh initialisation (reported as *fresh*).

The structural options are translated, not assumed (:func:`hf_config_to_model_config`):
``position_embeddings_type: relative_key`` -> ``pos_encoding: shaw`` with the same left/right
clipping; the convolution module is HF's (causal depthwise conv padded ``kernel - 1`` on the left,
no conv biases, depthwise layer norm); ``hidden_act`` -> ``activation``; ``layer_norm_eps`` for every
norm. What the model layer cannot express is refused with a message naming ``config.json`` and
the option: an ``adapter`` (``add_adapter: true``), the ``intermediate_ffn`` before it
(``use_intermediate_ffn_before_adapter: true``), and ``position_embeddings_type`` ``relative``
(Transformer-XL) or ``rotary``. These change the eval-mode function, so importing them "almost"
would be wrong.

Training-time-only differences (they do not change the function in eval mode; the import reports
them): HF has four dropouts (``hidden_dropout`` on the FFN outputs and the encoder input,
``activation_dropout`` inside the FFNs, ``attention_dropout`` on attention probabilities *and* on
the attention output, ``conformer_conv_dropout`` on the conv module output) where just-asr has
``encoder.dropout`` (residual, FFN and conv) and ``encoder.attention_dropout`` (probabilities);
the import sets ``encoder.dropout`` to the largest of HF's non-attention dropouts. HF's
``layerdrop`` (0.1 in the public config) has no just-asr counterpart and is not applied.

Input features: the imported encoder expects the SeamlessM4T recipe
(:mod:`just_asr.data.seamless_features`), recorded as ``features.type: seamless_fbank`` in the
model directory's ``config.yaml``; just-asr's default lhotse fbank is different (framing, scale,
normalisation).

Example::

    from just_asr.hf_import import import_w2v_bert, write_model_dir
    result = import_w2v_bert("w2v-bert-2.0", vocab_size=None, tokenizer="data/tokenizer.model")
    print(result.summary())
    write_model_dir(result, "exp/w2v-bert-2.0-import")
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from just_asr.model import JustModel, ModelConfig
from just_asr.model.config import save_model_config

#: HF ``model_type`` of ``Wav2Vec2BertConfig``
HF_MODEL_TYPE = "wav2vec2-bert"
#: prefix of the base model inside HF task models (``Wav2Vec2BertForCTC`` ...)
HF_BASE_PREFIX = "wav2vec2_bert."
#: default split of the public 24-layer model (fairseq2's w2v-BERT 2.0: 8 contrastive + 16 MLM)
DEFAULT_CONTRASTIVE_LAYERS = 8
#: files :func:`write_model_dir` adds next to the inference layer's ones
ARCH_NAME = "model_arch.yaml"
REPORT_NAME = "import_report.json"
#: largest RNN-T vocabulary accepted (SentencePiece vocabularies are at most a few hundred thousand
#: units; beyond this the decoder's embedding and output layer alone need gigabytes)
MAX_VOCAB_SIZE = 1_000_000

_ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu"}
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")


class HfImportError(ValueError):
    """A Hugging Face directory that cannot be imported; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# reading the HF directory


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    """``HF_DIR/config.json`` as a dict, checked to be a ``Wav2Vec2BertModel`` config."""
    path = Path(hf_dir) / "config.json"
    if not Path(hf_dir).is_dir():
        raise HfImportError(f"{hf_dir}: Hugging Face model directory not found")
    if not path.is_file():
        raise HfImportError(f"{path}: not found (expected the config.json written by save_pretrained)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise HfImportError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise HfImportError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); expected JSON") from None
    except OSError as exc:
        raise HfImportError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(cfg, dict):
        raise HfImportError(f"{path}: expected a JSON object at the top level")
    model_type = cfg.get("model_type")
    if model_type != HF_MODEL_TYPE:
        raise HfImportError(
            f"{path}: model_type is {model_type!r}, expected {HF_MODEL_TYPE!r} (a Wav2Vec2BertModel such as "
            "facebook/w2v-bert-2.0)"
        )
    return cfg


def _hf(cfg: dict[str, Any], key: str, default: Any) -> Any:
    """A config value with ``Wav2Vec2BertConfig``'s default when the key is absent."""
    value = cfg.get(key, default)
    return default if value is None and default is not None else value


def _hf_int(cfg: dict[str, Any], key: str, default: int, source: str) -> int:
    """An integer config value (JSON number without a fraction), refused naming ``source`` and ``key``."""
    value = _hf(cfg, key, default)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HfImportError(f"{source}: '{key}' = {value!r}: expected an integer")
    return value


def _hf_float(cfg: dict[str, Any], key: str, default: float, source: str) -> float:
    """A finite real config value, refused naming ``source`` and ``key``."""
    value = _hf(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HfImportError(f"{source}: '{key}' = {value!r}: expected a finite number")
    return float(value)


def _weight_files(hf_dir: Path) -> list[Path]:
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise HfImportError(f"{index}: not a safetensors index (no valid 'weight_map': {exc})") from None
        if not isinstance(weight_map, dict):
            raise HfImportError(f"{index}: 'weight_map' is a {type(weight_map).__name__}, expected an object "
                                "{tensor name: file name}")
        for key, name in weight_map.items():
            if not isinstance(name, str) or not name:
                raise HfImportError(f"{index}: weight_map[{key!r}] = {name!r}, expected a file name (string)")
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise HfImportError(f"{index}: weight_map[{key!r}] = {name!r} points outside {hf_dir}; shards are "
                                    "named relative to the checkpoint directory")
        files = sorted({hf_dir / name for name in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise HfImportError(f"{f}: listed in {index.name} but missing")
        return files
    single = hf_dir / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(hf_dir.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = (
        f"; found {', '.join(pickles)} (pickle), which is never loaded: re-save it with "
        "model.save_pretrained(dir, safe_serialization=True)" if pickles else ""
    )
    raise HfImportError(f"{hf_dir}: no safetensors weights (model.safetensors){hint}")


def read_hf_weights(hf_dir: str | Path) -> dict[str, Tensor]:
    """All tensors of the HF directory's safetensors weights (single file or shards), as float32.

    Never unpickles: a directory holding only ``pytorch_model.bin`` is refused with a hint.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    state: dict[str, Tensor] = {}
    for f in _weight_files(hf_dir):
        try:
            part = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as exc:
            raise HfImportError(f"{f}: not a valid safetensors file ({exc})") from None
        for k, v in part.items():
            if k in state:
                raise HfImportError(f"{f}: tensor {k!r} appears in more than one weights file")
            state[k] = v.float() if v.is_floating_point() else v
    return state


# --------------------------------------------------------------------------------------------
# configuration


def default_base_config(d_model: int) -> ModelConfig:
    """Settings of the parts the checkpoint does not hold (quantiser, contrastive head, masking,
    decoder, loss weights) when no ``base`` config is given: JUST's w2v-BERT values (1 x 1024
    Gumbel codebook of ``code_dim = d_model``, 100 distractors, kappa 0.1, span masking 0.065 x 10,
    beta 0.3) and the w2v-BERT fine-tuning decoder (2 x 640 LSTM, joint 640), narrowed to
    ``d_model`` for models thinner than 640."""
    dec = min(640, d_model)
    return ModelConfig.from_dict(
        {
            "quantizer": {"num_codebooks": 1, "codebook_size": 1024, "code_dim": d_model},
            "contrastive": {"final_dim": 768 if d_model >= 1024 else max(8, (3 * d_model) // 4),
                            "num_distractors": 100, "kappa": 0.1},
            "decoder": {"embed_dim": dec, "hidden_dim": dec, "num_layers": 2, "joint_dim": dec, "dropout": 0.1},
            "loss": {"rnnt": 1.0, "ssl": 0.3, "diversity": 0.1, "mlm": 1.0},
        },
        source="hf_import default",
    )


def hf_config_to_model_config(
    hf_cfg: dict[str, Any],
    contrastive_layers: int = DEFAULT_CONTRASTIVE_LAYERS,
    base: ModelConfig | None = None,
    mask_replace: str = "learned",
    encoder_dropout: float | None = None,
    source: str = "config.json",
) -> tuple[ModelConfig, list[str]]:
    """Translate a ``Wav2Vec2BertConfig`` dict into a :class:`ModelConfig`.

    Args:
        hf_cfg: the parsed ``config.json``.
        contrastive_layers: the first ``N`` HF layers form the contrastive stack, the rest the MLM
            stack (``0 <= N <= num_hidden_layers``).
        base: settings of everything the checkpoint does not define (see :func:`default_base_config`);
            its ``frontend``, ``encoder`` and layer counts are replaced.
        mask_replace: ``masking.replace`` (``"learned"`` imports ``masked_spec_embed``).
        encoder_dropout: overrides ``encoder.dropout`` (default: the largest of HF's
            ``hidden_dropout``, ``activation_dropout``, ``conformer_conv_dropout``).
        source: file named in error messages.

    Returns:
        ``(config, notes)``: notes list the training-time differences (dropouts, layerdrop).

    Raises:
        HfImportError: naming ``source`` and the option the model layer cannot express.
    """

    def refuse(key: str, why: str) -> HfImportError:
        return HfImportError(f"{source}: '{key}' = {hf_cfg.get(key)!r}: {why}")

    notes: list[str] = []
    if _hf(hf_cfg, "add_adapter", False):
        raise refuse("add_adapter", "the adapter (strided conv + attention layers after the encoder) has no "
                     "just-asr counterpart; the model layer would need an adapter stack after mlm_stack")
    if _hf(hf_cfg, "use_intermediate_ffn_before_adapter", False):
        raise refuse("use_intermediate_ffn_before_adapter",
                     "h + 0.5 * FFN_relu(h) after the last layer has no just-asr counterpart; the model layer "
                     "would need an optional half-step feed-forward after mlm_stack")
    pos = hf_cfg.get("position_embeddings_type", "relative_key")
    if pos == "relative_key":
        pos_encoding = "shaw"
    elif pos is None:
        pos_encoding = "none"
    else:
        raise refuse("position_embeddings_type",
                     "only 'relative_key' (Shaw clipped relative keys) or null can be imported; 'relative' "
                     "(Transformer-XL with pos_bias_u/v and linear_pos) and 'rotary' would need new attention "
                     "variants in just_asr.model.conformer")
    act = _hf(hf_cfg, "hidden_act", "swish")
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        raise refuse("hidden_act", f"supported activations are {sorted(_ACTIVATIONS)}")
    kernel = _hf_int(hf_cfg, "conv_depthwise_kernel_size", 31, source)
    if kernel < 1 or kernel % 2 != 1:
        raise refuse("conv_depthwise_kernel_size", "must be a positive odd number")
    in_dim = _hf_int(hf_cfg, "feature_projection_input_dim", 160, source)
    stack = 2
    if in_dim < stack or in_dim % stack:
        raise refuse("feature_projection_input_dim",
                     f"must be {stack} stacked fbank frames (a positive multiple of {stack})")
    n_layers = _hf_int(hf_cfg, "num_hidden_layers", 24, source)
    if n_layers < 0:
        raise refuse("num_hidden_layers", "must be >= 0")
    if not 0 <= contrastive_layers <= n_layers:
        raise HfImportError(
            f"{source}: contrastive_layers={contrastive_layers} must be between 0 and num_hidden_layers={n_layers}"
        )
    d = _hf_int(hf_cfg, "hidden_size", 1024, source)
    if d < 1:
        raise refuse("hidden_size", "must be >= 1")
    eps = _hf_float(hf_cfg, "layer_norm_eps", 1e-5, source)
    dropouts = {k: _hf_float(hf_cfg, k, 0.0, source) for k in ("hidden_dropout", "activation_dropout", "conformer_conv_dropout")}
    attn_dropout = _hf_float(hf_cfg, "attention_dropout", 0.0, source)
    enc_dropout = max(dropouts.values()) if encoder_dropout is None else float(encoder_dropout)
    notes.append(
        "dropout (training only): HF " + ", ".join(f"{k}={v}" for k, v in dropouts.items())
        + f", attention_dropout={attn_dropout} (probabilities and attention output) -> just-asr "
        f"encoder.dropout={enc_dropout} (residual, feed-forward, conv), encoder.attention_dropout={attn_dropout}"
    )
    layerdrop = _hf_float(hf_cfg, "layerdrop", 0.1, source)
    if layerdrop > 0:
        notes.append(f"layerdrop={layerdrop} (training only) has no just-asr counterpart and is not applied")

    base = base if base is not None else default_base_config(d)
    data = base.to_dict()
    data["frontend"] = {
        "kind": "stack",
        "input_dim": in_dim // stack,
        "conv_channels": data["frontend"]["conv_channels"],
        "stack_frames": stack,
        "layer_norm_eps": eps,
        "dropout": _hf_float(hf_cfg, "feat_proj_dropout", 0.0, source),
    }
    data["encoder"] = {
        "d_model": d,
        "num_heads": _hf_int(hf_cfg, "num_attention_heads", 16, source),
        "ffn_dim": _hf_int(hf_cfg, "intermediate_size", 4096, source),
        "conv_kernel": kernel,
        "conv_norm": "layer",
        "conv_causal": True,
        "conv_bias": False,
        "activation": _ACTIVATIONS[act],
        "pos_encoding": pos_encoding,
        "left_max_position": _hf_int(hf_cfg, "left_max_position_embeddings", 64, source),
        "right_max_position": _hf_int(hf_cfg, "right_max_position_embeddings", 8, source),
        "dropout": enc_dropout,
        "attention_dropout": attn_dropout,
        "layer_norm_eps": eps,
    }
    data["contrastive"]["num_layers"] = contrastive_layers
    data["mlm"]["num_layers"] = n_layers - contrastive_layers
    data["masking"]["replace"] = mask_replace
    try:
        cfg = ModelConfig.from_dict(data, source=f"{source} (translated)")
    except ValueError as exc:
        raise HfImportError(str(exc)) from None
    return cfg, notes


# --------------------------------------------------------------------------------------------
# weights


def map_hf_key(key: str, contrastive_layers: int, mask_replace: str) -> tuple[str | None, str]:
    """The ``JustModel`` name of HF tensor ``key``, or ``(None, reason)`` when it has none."""
    if key.startswith(HF_BASE_PREFIX):
        key = key[len(HF_BASE_PREFIX):]
    if key.startswith("feature_projection."):
        rest = key[len("feature_projection."):]
        if rest.split(".")[0] in ("layer_norm", "projection"):
            return "frontend." + rest, ""
        return None, "unknown feature_projection tensor"
    m = _LAYER_KEY.match(key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if i < contrastive_layers:
            return f"contrastive_stack.layers.{i}.{rest}", ""
        return f"mlm_stack.layers.{i - contrastive_layers}.{rest}", ""
    if key == "masked_spec_embed":
        if mask_replace == "learned":
            return "masker.mask_embedding", ""
        return None, "masking.replace is 'noise' (masked frames get random vectors, not this embedding)"
    return None, "no counterpart in JustModel"


def _encoder_prefixes() -> tuple[str, ...]:
    return ("frontend.", "contrastive_stack.", "mlm_stack.")


@dataclass
class ImportResult:
    """What :func:`import_w2v_bert` built.

    Attributes:
        model: the ``JustModel`` (eval mode) with the imported encoder.
        config: its :class:`ModelConfig`.
        vocab_size: output units including blank.
        tokenizer: the tokenizer file, when given.
        imported: ``{just-asr name: HF name}`` of every loaded tensor.
        fresh: just-asr tensors that keep a fresh initialisation.
        unused: ``{HF name: reason}`` of checkpoint tensors that were not loaded.
        notes: training-time differences worth knowing (dropouts, layerdrop).
        hf_config: the HF ``config.json``.
        source: the HF directory.
    """

    model: JustModel
    config: ModelConfig
    vocab_size: int
    tokenizer: Path | None
    imported: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    unused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hf_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def summary(self, max_names: int | None = None) -> str:
        """Human-readable report: the imported / fresh / unused lists and the notes."""

        def block(title: str, names: list[str]) -> list[str]:
            shown = names if max_names is None else names[:max_names]
            out = [f"{title} ({len(names)} tensors):"] + [f"  {n}" for n in shown]
            if len(shown) < len(names):
                out.append(f"  ... (+{len(names) - len(shown)})")
            return out

        c = self.config
        lines = [
            f"imported {self.source}: {c.contrastive.num_layers} contrastive + {c.mlm.num_layers} MLM layers, "
            f"d_model {c.encoder.d_model}, {c.encoder.num_heads} heads, FFN {c.encoder.ffn_dim}, "
            f"conv kernel {c.encoder.conv_kernel}, vocab size {self.vocab_size}",
        ]
        lines += block("imported", [f"{k} <- {v}" for k, v in sorted(self.imported.items())])
        lines += block("fresh (initialised randomly)", sorted(self.fresh))
        lines += block("unused (in the checkpoint, not loaded)", [f"{k} ({why})" for k, why in sorted(self.unused.items())])
        lines += ["notes:"] + [f"  {n}" for n in self.notes]
        return "\n".join(lines)

    def report(self) -> dict[str, Any]:
        """JSON-serialisable form of the report (written as ``import_report.json``)."""
        return {
            "source": self.source,
            "vocab_size": self.vocab_size,
            "contrastive_layers": self.config.contrastive.num_layers,
            "mlm_layers": self.config.mlm.num_layers,
            "imported": dict(sorted(self.imported.items())),
            "fresh": sorted(self.fresh),
            "unused": dict(sorted(self.unused.items())),
            "notes": list(self.notes),
            "hf_config": self.hf_config,
        }


def import_w2v_bert(
    hf_dir: str | Path,
    vocab_size: int | None = None,
    tokenizer: str | Path | None = None,
    contrastive_layers: int | None = None,
    base: ModelConfig | None = None,
    mask_replace: str = "auto",
    encoder_dropout: float | None = None,
    seed: int = 0,
) -> ImportResult:
    """Build a ``JustModel`` whose encoder is the HF checkpoint in ``hf_dir``.

    Args:
        hf_dir: directory with ``config.json`` and safetensors weights of a ``Wav2Vec2BertModel``.
        vocab_size: RNN-T output units including blank; taken from ``tokenizer`` when that is given.
        tokenizer: a just-asr SentencePiece ``.model`` (or a directory holding ``tokenizer.model``).
        contrastive_layers: the split (default 8, the public model's 8 + 16; for checkpoints with
            fewer than 9 layers, a third of the layers rounded down).
        base: config of the parts the checkpoint does not hold (default :func:`default_base_config`).
        mask_replace: ``"learned"`` (import ``masked_spec_embed`` as the mask vector), ``"noise"``
            (JUST's random vectors; ``masked_spec_embed`` unused) or ``"auto"``: learned when the
            checkpoint has ``masked_spec_embed``, else noise.
        encoder_dropout: see :func:`hf_config_to_model_config`.
        seed: seeds the fresh initialisation of the non-imported parts.

    Raises:
        HfImportError: naming the file and the problem (unsupported option, missing or misshapen
            tensor, pickle-only weights...).
    """
    hf_dir = Path(hf_dir)
    hf_cfg = read_hf_config(hf_dir)
    cfg_file = str(hf_dir / "config.json")
    tok_path: Path | None = None
    if tokenizer is not None:
        from just_asr.data.tokenizer import Tokenizer

        tok_path = Path(tokenizer)
        if tok_path.is_dir():
            tok_path = tok_path / "tokenizer.model"
        tok_vocab = Tokenizer(tok_path).vocab_size
        if vocab_size is not None and vocab_size != tok_vocab:
            raise HfImportError(f"{tok_path}: tokenizer has {tok_vocab} units but vocab_size={vocab_size} was given")
        vocab_size = tok_vocab
    if vocab_size is None:
        raise HfImportError("the RNN-T decoder needs its output size: give a tokenizer or vocab_size")
    if vocab_size < 2:
        raise HfImportError(f"vocab_size must be >= 2 (blank + at least one unit), got {vocab_size}")
    if vocab_size > MAX_VOCAB_SIZE:
        raise HfImportError(f"vocab_size must be <= {MAX_VOCAB_SIZE:,} (the RNN-T decoder's output units), got {vocab_size:,}")
    n_layers = _hf_int(hf_cfg, "num_hidden_layers", 24, cfg_file)
    if contrastive_layers is None:
        contrastive_layers = DEFAULT_CONTRASTIVE_LAYERS if n_layers > DEFAULT_CONTRASTIVE_LAYERS else n_layers // 3
    if mask_replace not in ("auto", "learned", "noise"):
        raise HfImportError(f"mask_replace must be 'auto', 'learned' or 'noise', got {mask_replace!r}")
    # refuse a config.json that cannot be translated before reading (gigabytes of) weights
    hf_config_to_model_config(hf_cfg, contrastive_layers, base, "noise" if mask_replace == "noise" else "learned",
                              encoder_dropout, cfg_file)
    state = read_hf_weights(hf_dir)
    if mask_replace == "auto":
        has_embed = any(k in state for k in ("masked_spec_embed", HF_BASE_PREFIX + "masked_spec_embed"))
        mask_replace = "learned" if has_embed else "noise"
    cfg, notes = hf_config_to_model_config(hf_cfg, contrastive_layers, base, mask_replace, encoder_dropout, cfg_file)

    # names and shapes from a model on the meta device (no memory): a config.json that does not
    # describe the weights (e.g. a mistyped hidden_size) is refused before a real model is allocated
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        own = JustModel(cfg, vocab_size).state_dict()
    take: dict[str, Tensor] = {}
    imported: dict[str, str] = {}
    unused: dict[str, str] = {}
    weights_name = ", ".join(p.name for p in _weight_files(hf_dir))
    for key, tensor in state.items():
        name, why = map_hf_key(key, contrastive_layers, mask_replace)
        if name is None:
            unused[key] = why
            continue
        if name not in own:
            raise HfImportError(
                f"{hf_dir / weights_name}: tensor {key!r} maps to {name!r}, which the translated config does not "
                f"have (does {cfg_file} describe these weights?)"
            )
        if name in take:
            raise HfImportError(f"{hf_dir / weights_name}: two tensors map to {name!r} (second: {key!r})")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise HfImportError(
                f"{hf_dir / weights_name}: tensor {key!r} has shape {tuple(tensor.shape)} but {cfg_file} implies "
                f"{tuple(own[name].shape)} for {name!r}"
            )
        take[name] = tensor.to(own[name].dtype)
        imported[name] = key
    missing = sorted(k for k in own if k.startswith(_encoder_prefixes()) and k not in take)
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise HfImportError(
            f"{hf_dir / weights_name}: the checkpoint lacks {len(missing)} encoder tensors that {cfg_file} implies "
            f"({shown}); is the file complete?"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JustModel(cfg, vocab_size)
    model.load_state_dict({**model.state_dict(), **take}, strict=True)
    model.eval()
    fresh = sorted(k for k in own if k not in take)
    return ImportResult(
        model=model, config=cfg, vocab_size=int(vocab_size), tokenizer=tok_path, imported=imported, fresh=fresh,
        unused=unused, notes=notes, hf_config=hf_cfg, source=str(hf_dir),
    )


# --------------------------------------------------------------------------------------------
# writing the model directory


def check_output_dir(hf_dir: str | Path, out_dir: str | Path) -> None:
    """Refuse an output directory the import would damage: the Hugging Face directory itself (its
    ``model.safetensors`` would be overwritten), any folder holding a ``config.json`` (a Hugging Face
    checkpoint), or a path that is not a directory. An existing just-asr model directory is fine:
    its files are replaced, as ``just-asr export`` does.

    Raises:
        HfImportError: naming ``out_dir`` and the problem.
    """
    hf, out = Path(hf_dir), Path(out_dir)
    same = out.resolve() == hf.resolve()
    if not same and out.exists() and hf.exists():
        try:
            same = os.path.samefile(out, hf)
        except OSError:
            pass
    if same:
        raise HfImportError(f"{out}: the output directory is the Hugging Face directory {hf}; writing there would "
                            "overwrite its model.safetensors: choose another OUT_DIR")
    if out.exists() and not out.is_dir():
        raise HfImportError(f"{out}: exists and is not a directory")
    if (out / "config.json").exists():
        raise HfImportError(f"{out}: holds a config.json (a Hugging Face checkpoint directory?), whose "
                            "model.safetensors the import would overwrite: choose another OUT_DIR")


def write_model_dir(result: ImportResult, out_dir: str | Path) -> Path:
    """Write ``result`` as a just-asr model directory and return its path.

    Files: ``model.safetensors`` and ``config.yaml`` (the inference layer's layout; ``features``
    records the SeamlessM4T recipe, ``extra.import`` the provenance), ``tokenizer.model`` when the
    import had a tokenizer, ``model_arch.yaml`` (the model config in the preset layout, for
    ``just-asr fit --config``) and ``import_report.json`` (imported / fresh / unused lists).

    Without a tokenizer the directory still serves ``just-asr fit --model.init_from`` (which reads
    only the weights), but not ``transcribe``; a ``tokenizer.model``, ``tokenizer.json`` or
    ``cmvn.json`` left there by an earlier export is removed.

    Raises:
        HfImportError: ``out_dir`` is the source directory or another Hugging Face checkpoint
            directory (see :func:`check_output_dir`).
    """
    from safetensors.torch import save_model

    from just_asr import inference
    from just_asr.data.seamless_features import seamless_feature_settings

    check_output_dir(result.source, out_dir)
    out = Path(out_dir)
    extra = {
        "import": {
            "source": result.source,
            "format": "huggingface Wav2Vec2BertModel",
            "contrastive_layers": result.config.contrastive.num_layers,
            "imported_tensors": len(result.imported),
            "fresh_tensors": len(result.fresh),
            "unused_tensors": sorted(result.unused),
        }
    }
    if result.tokenizer is not None:
        # (save_model_dir also removes a stale tokenizer.json when the tokenizer has none)
        inference.save_model_dir(out, result.model, result.config, result.tokenizer, cmvn=None, extra=extra)
        config = yaml.safe_load((out / inference.CONFIG_NAME).read_text(encoding="utf-8"))
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_model(result.model, str(out / inference.WEIGHTS_NAME),
                   metadata={"format": "pt", "just_asr_format_version": str(inference.FORMAT_VERSION)})
        for stale in (inference.TOKENIZER_NAME, inference.TOKENIZER_SIDECAR_NAME, inference.CMVN_NAME):
            if (out / stale).exists():
                (out / stale).unlink()  # an older tokenizer would not match this decoder
        config = {
            "format_version": inference.FORMAT_VERSION,
            "vocab_size": result.vocab_size,
            "blank_id": 0,
            "features": {},
            "model": result.config.to_dict(),
            "extra": extra,
        }
    config["features"] = {**seamless_feature_settings(), "cmvn": False}
    (out / inference.CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    save_model_config(result.config, out / ARCH_NAME)
    (out / REPORT_NAME).write_text(json.dumps(result.report(), indent=2, default=str) + "\n", encoding="utf-8")
    return out


def reference_hidden_states(hf_dir: str | Path, features: Tensor, lengths: Tensor) -> Tensor:
    """Last hidden state of the HF model in ``hf_dir`` (needs ``transformers``), for checking an import.

    Args:
        features: ``(B, T, 80)`` SeamlessM4T features (zero-padded), ``lengths: (B,)`` valid frames.

    Returns:
        ``(B, T // 2, d_model)``; rows are valid up to ``lengths // 2``.
    """
    from transformers import Wav2Vec2BertModel

    from just_asr.data.seamless_features import stack_frames

    ref = Wav2Vec2BertModel.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    stacked, stacked_lens = stack_frames(features, lengths)
    mask = (torch.arange(stacked.size(1))[None, :] < stacked_lens[:, None]).long()
    with torch.no_grad():
        return ref(input_features=stacked.to(ref.dtype), attention_mask=mask).last_hidden_state.float()


def max_encoder_difference(result: ImportResult, hf_dir: str | Path, features: Tensor, lengths: Tensor) -> float:
    """Largest ``|ours - HF|`` over the valid frames of a batch (``features: (B, T, 80)``,
    ``lengths: (B,)``); padded frames are never compared."""
    with torch.no_grad():
        ours, our_lens = result.model.encode(features, lengths)
    ref = reference_hidden_states(hf_dir, features, lengths)
    valid = torch.arange(ours.size(1))[None, :] < our_lens[:, None]
    return float((ours - ref[:, : ours.size(1)]).abs()[valid].max())


__all__ = [
    "HfImportError",
    "ImportResult",
    "MAX_VOCAB_SIZE",
    "read_hf_config",
    "read_hf_weights",
    "default_base_config",
    "hf_config_to_model_config",
    "map_hf_key",
    "import_w2v_bert",
    "check_output_dir",
    "write_model_dir",
    "reference_hidden_states",
    "max_encoder_difference",
]
