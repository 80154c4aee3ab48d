"""The JUST model: front ends, conformer stacks, span masking, Gumbel quantiser, RNN-T branch.

Public API::

    from just_asr.model import JustModel, ModelConfig, load_model_config
    model = JustModel(load_model_config("configs/model/tiny.yaml"), vocab_size=256)
    out = model(features, feature_lens, targets, target_lens, has_text)
    loss = out.compute_loss()          # LossOutput(total, terms, metrics)
    enc, enc_lens = model.encode(features, feature_lens)
"""

from .config import (
    ContrastiveConfig,
    DecoderConfig,
    EncoderConfig,
    FrontendConfig,
    LossWeights,
    MaskingConfig,
    MlmConfig,
    ModelConfig,
    QuantizerConfig,
    load_model_config,
    save_model_config,
)
from .conformer import ConformerBlock, ConformerStack, RelativeSelfAttention
from .frontend import ConvSubsampling, StackedProjection, build_frontend
from .just import JustModel, JustOutput, LossOutput
from .masking import SpanMasker, compute_span_mask
from .quantizer import GumbelQuantizer, QuantizerOutput, gumbel_temperature
from .transducer import Joiner, Predictor

__all__ = [
    "ContrastiveConfig",
    "DecoderConfig",
    "EncoderConfig",
    "FrontendConfig",
    "LossWeights",
    "MaskingConfig",
    "MlmConfig",
    "ModelConfig",
    "QuantizerConfig",
    "load_model_config",
    "save_model_config",
    "ConformerBlock",
    "ConformerStack",
    "RelativeSelfAttention",
    "ConvSubsampling",
    "StackedProjection",
    "build_frontend",
    "JustModel",
    "JustOutput",
    "LossOutput",
    "SpanMasker",
    "compute_span_mask",
    "GumbelQuantizer",
    "QuantizerOutput",
    "gumbel_temperature",
    "Joiner",
    "Predictor",
]
