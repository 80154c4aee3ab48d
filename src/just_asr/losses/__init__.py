"""Loss functions: pure tensor functions, float32 inside, each documenting its reduction.

* :func:`rnnt_loss`: full-lattice RNN-T loss with torchaudio's semantics (``losses.rnnt``).
* :func:`pruned_rnnt_loss`: k2-style pruned RNN-T (simple loss on separate projections, pruning
  bounds from its occupancy, the full joiner only inside them) (``losses.pruned_rnnt``).
* :func:`contrastive_loss`, :func:`diversity_loss`, :func:`codebook_perplexity`, :func:`mlm_loss`,
  :func:`sample_distractors`, :func:`average_code_probs`: the w2v-BERT self-supervised terms
  (``losses.w2vbert``).
"""

from just_asr.losses.pruned_rnnt import (
    PrunedRNNTOutput,
    gather_pruned,
    lattice_nll,
    prune_bounds,
    pruned_loss_scales,
    pruned_rnnt_loss,
    pruned_rnnt_loss_from_logits,
    simple_rnnt_loss,
)
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
    "PrunedRNNTOutput",
    "gather_pruned",
    "lattice_nll",
    "prune_bounds",
    "pruned_loss_scales",
    "pruned_rnnt_loss",
    "pruned_rnnt_loss_from_logits",
    "simple_rnnt_loss",
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
