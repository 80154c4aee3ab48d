"""Loss functions: pure tensor functions, float32 inside, each documenting its reduction.

* :func:`rnnt_loss`: full-lattice RNN-T loss with torchaudio's semantics (``losses.rnnt``).
* :func:`contrastive_loss`, :func:`diversity_loss`, :func:`codebook_perplexity`, :func:`mlm_loss`,
  :func:`sample_distractors`, :func:`average_code_probs`: the w2v-BERT self-supervised terms
  (``losses.w2vbert``).
"""

from just_asr.losses.rnnt import rnnt_loss
from just_asr.losses.w2vbert import (
    ContrastiveOutput,
    MLMOutput,
    average_code_probs,
    codebook_perplexity,
    contrastive_loss,
    diversity_loss,
    mlm_loss,
    sample_distractors,
)

__all__ = [
    "ContrastiveOutput",
    "MLMOutput",
    "average_code_probs",
    "codebook_perplexity",
    "contrastive_loss",
    "diversity_loss",
    "mlm_loss",
    "rnnt_loss",
    "sample_distractors",
]
