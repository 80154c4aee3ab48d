"""Batched greedy RNN-T search.

All utterances of a batch advance through the encoder frames together. At each frame every
utterance that still has frames left asks the joiner for the most likely unit: blank moves it to the
next frame, any other unit is emitted and the utterance stays on the same frame, up to
``max_symbols_per_frame`` units; after that many emissions it moves on without a blank (a *forced*
advance, which costs nothing in the score). The predictor is stepped only for the rows that emitted,
and padding frames (``t >= enc_lens[b]``) are never looked at.

The search works on ``(predictor, joiner, enc, enc_lens, blank_id)`` only, so it does not depend on
the training code. :func:`just_asr.decode.beam.beam_search` with ``beam=1`` makes exactly the same
choices (same rows, same tensor operations, same tie-breaking) and returns the same tokens and
scores.

Example::

    >>> import torch
    >>> from just_asr.model.transducer import Joiner, Predictor
    >>> pred = Predictor(vocab_size=16, embed_dim=8, hidden_dim=12, dropout=0.0).eval()
    >>> join = Joiner(encoder_dim=10, predictor_dim=12, joint_dim=14, vocab_size=16)
    >>> enc, enc_lens = torch.randn(3, 9, 10), torch.tensor([9, 4, 0])
    >>> res = greedy_search(pred, join, enc, enc_lens, blank_id=0, max_symbols_per_frame=2)
    >>> len(res.tokens), res.tokens[2]
    (3, [])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from just_asr.model.transducer import Joiner, Predictor

#: default limit on units emitted while staying on one encoder frame (greedy and beam search)
DEFAULT_MAX_SYMBOLS_PER_FRAME = 3


@dataclass
class Hypothesis:
    """One decoded hypothesis: unit ids (no blanks) and its log-probability score.

    ``score`` is the log-probability under the search's own scoring (sum of the chosen units' and
    blanks' log-probabilities along the kept alignment, or merged over alignments for beam search's
    ``merge="logsumexp"``); ``normalized_score`` is ``score / max(1, len(tokens))`` when the search
    ranked with length normalisation, otherwise equal to ``score``.
    """

    tokens: list[int]
    score: float
    normalized_score: float


@dataclass
class SearchResult:
    """Output of a batched search, in the batch's original row order.

    Attributes:
        tokens: best hypothesis per utterance, ``B`` lists of unit ids (blank never appears).
        scores: its score per utterance (see :class:`Hypothesis`).
        nbest: for beam search with ``nbest > 1``, up to ``nbest`` hypotheses per utterance, best
          first; for greedy search, the single hypothesis.
    """

    tokens: list[list[int]]
    scores: list[float]
    nbest: list[list[Hypothesis]] = field(default_factory=list)


def check_inputs(
    predictor: Predictor, joiner: Joiner, enc: Tensor, enc_lens: Tensor, blank_id: int, max_symbols_per_frame: int
) -> None:
    """Validate the arguments shared by greedy and beam search; raise ``ValueError`` on bad ones."""
    if enc.dim() != 3:
        raise ValueError(f"enc must be (B, T, D); got shape {tuple(enc.shape)}")
    if enc_lens.dim() != 1 or enc_lens.shape[0] != enc.shape[0]:
        raise ValueError(f"enc_lens must be (B,) with B={enc.shape[0]}; got shape {tuple(enc_lens.shape)}")
    if enc.shape[0] > 0:
        lo, hi = int(enc_lens.min()), int(enc_lens.max())
        if lo < 0 or hi > enc.shape[1]:
            raise ValueError(f"enc_lens must lie in [0, T={enc.shape[1]}]; got values in [{lo}, {hi}]")
    if not 0 <= blank_id < joiner.vocab_size:
        raise ValueError(f"blank_id {blank_id} is outside the vocabulary of size {joiner.vocab_size}")
    if max_symbols_per_frame < 1:
        raise ValueError(f"max_symbols_per_frame must be >= 1; got {max_symbols_per_frame}")
    if predictor.vocab_size != joiner.vocab_size:
        raise ValueError(
            f"predictor vocabulary ({predictor.vocab_size}) differs from joiner vocabulary ({joiner.vocab_size})"
        )


def sort_by_length(enc_lens: Tensor) -> tuple[Tensor, list[int]]:
    """Order rows by decreasing length (stable) so that the rows still inside their utterance at
    frame ``t`` are always a prefix of the sorted batch.

    Returns:
        ``(order (B,), active_rows)`` where ``enc_lens[order]`` is non-increasing and
        ``active_rows[t]`` is the number of rows with more than ``t`` frames, for
        ``t < max(enc_lens)``.
    """
    lens_cpu = enc_lens.detach().to("cpu", torch.int64)
    order = torch.argsort(-lens_cpu, stable=True)
    sorted_lens = lens_cpu[order].numpy()
    t_max = int(sorted_lens[0]) if len(sorted_lens) else 0
    # number of rows whose length exceeds t, for each t
    active = [int(np.count_nonzero(sorted_lens > t)) for t in range(t_max)]
    return order.to(enc_lens.device), active


def log_probs(joiner: Joiner, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
    """Joint log-probabilities in float32. ``enc_proj, pred_proj: (N, J)`` -> ``(N, V)``.

    Shared by greedy and beam search so that both compute bit-identical values for the same rows.
    """
    return torch.log_softmax(joiner.join(enc_proj, pred_proj).float(), dim=-1)


@torch.no_grad()
def greedy_search(
    predictor: Predictor,
    joiner: Joiner,
    enc: Tensor,
    enc_lens: Tensor,
    blank_id: int = 0,
    max_symbols_per_frame: int = DEFAULT_MAX_SYMBOLS_PER_FRAME,
) -> SearchResult:
    """Batched greedy RNN-T decoding.

    Call ``predictor.eval()`` / ``joiner.eval()`` first (dropout would otherwise stay active).

    Args:
        predictor: prediction network with ``step(last_tokens (N,), state) -> (out (N, P), state)``;
          blank is its start symbol.
        joiner: joint network with ``project_encoder``, ``project_predictor`` and ``join``.
        enc: ``(B, T, D)`` encoder output; frames ``t >= enc_lens[b]`` are padding and never read.
        enc_lens: ``(B,)`` valid frames per row (0 gives an empty hypothesis).
        blank_id: id of blank.
        max_symbols_per_frame: most units emitted on one frame before moving on.

    Returns:
        :class:`SearchResult` whose ``scores`` are the summed log-probabilities of the chosen
        units and blanks (forced advances add nothing).
    """
    check_inputs(predictor, joiner, enc, enc_lens, blank_id, max_symbols_per_frame)
    batch = enc.shape[0]
    if batch == 0:
        return SearchResult(tokens=[], scores=[], nbest=[])
    device = enc.device
    order, active_rows = sort_by_length(enc_lens)
    enc_proj = joiner.project_encoder(enc.index_select(0, order))  # (B, T, J)

    start = torch.full((batch,), blank_id, dtype=torch.long, device=device)
    pred_out, (h, c) = predictor.step(start, None)  # (B, P), state (L, B, H) each
    pred_proj = joiner.project_predictor(pred_out)  # (B, J)
    scores = torch.zeros(batch, dtype=torch.float32, device=device)

    emitted_rows: list[Tensor] = []  # chronological (rows, tokens) of every emission, sorted order
    emitted_tokens: list[Tensor] = []
    for t, n_t in enumerate(active_rows):
        # sub-step 0 covers every row with frames left (the sorted prefix :n_t, read through views);
        # later sub-steps only the rows that emitted on this frame (index tensor `rows`)
        rows = None
        for k in range(max_symbols_per_frame):
            if rows is None:
                lp = log_probs(joiner, enc_proj[:n_t, t], pred_proj[:n_t])  # (n_t, V)
            else:
                lp = log_probs(joiner, enc_proj[rows, t], pred_proj[rows])  # (N, V)
            best_lp, best = lp.topk(1, dim=-1)
            best_lp, best = best_lp.squeeze(-1), best.squeeze(-1)
            if rows is None:
                scores[:n_t] += best_lp
            else:
                scores[rows] = scores[rows] + best_lp
            emit = best != blank_id
            if not bool(emit.any()):
                break
            rows = emit.nonzero().squeeze(1) if rows is None else rows[emit]
            tok = best[emit]
            emitted_rows.append(rows)
            emitted_tokens.append(tok)
            out, (h_new, c_new) = predictor.step(tok, (h[:, rows], c[:, rows]))
            h[:, rows], c[:, rows] = h_new, c_new
            pred_proj[rows] = joiner.project_predictor(out)
            # after the last substep the rows that emitted advance without a blank (forced)

    per_row: list[list[int]] = [[] for _ in range(batch)]
    if emitted_rows:
        r = torch.cat(emitted_rows).cpu().numpy()
        v = torch.cat(emitted_tokens).cpu().numpy()
        idx = np.argsort(r, kind="stable")  # group by row, keeping time order
        r, v = r[idx], v[idx]
        bounds = np.searchsorted(r, np.arange(batch + 1))
        for i in range(batch):
            per_row[i] = v[bounds[i] : bounds[i + 1]].tolist()
    order_cpu = order.cpu().tolist()
    score_cpu = scores.cpu().tolist()
    tokens: list[list[int]] = [[] for _ in range(batch)]
    out_scores = [0.0] * batch
    for sorted_i, orig_i in enumerate(order_cpu):
        tokens[orig_i] = per_row[sorted_i]
        out_scores[orig_i] = score_cpu[sorted_i]
    nbest = [[Hypothesis(tokens[i], out_scores[i], out_scores[i])] for i in range(batch)]
    return SearchResult(tokens=tokens, scores=out_scores, nbest=nbest)
