"""Batched RNN-T beam search ("modified beam search" with several units per frame).

Design (in the spirit of k2/icefall's *modified beam search*, generalised from one to
``max_symbols_per_frame`` units per frame, and batched over utterances x beams):

* Every utterance keeps ``beam`` hypothesis slots; all slots of all utterances are stepped together
  as one flat batch. Per slot the search caches the predictor's LSTM state and its projected output,
  so the predictor runs only for slots that just emitted a unit.
* On frame ``t`` the search makes up to ``max_symbols_per_frame`` sub-steps. At the start of the frame
  every live hypothesis is *active* (it may still emit on this frame). In sub-step ``k`` each active
  hypothesis proposes: blank (it becomes *finished* for this frame, score + log p(blank)) or a unit
  ``v`` (score + log p(v); it stays active, except in the last sub-step where it is finished without
  a blank: the same *forced advance* as greedy search). Finished hypotheses are carried into the pool
  unchanged. The best ``beam`` entries of that pool survive.
* Hypotheses with the same unit sequence that are both finished on the frame are merged ("merged by
  prefix"): the merged score is the ``max`` of the two (``merge="max"``, the default: the score is then
  the best single alignment's) or their ``logsumexp`` (``merge="logsumexp"``: the score sums the
  alignments' probabilities, as k2/icefall do). Active hypotheses can never share a sequence (they come
  from distinct prefixes with the same number of units emitted on this frame), so they are not merged.
  Sequences are compared through two independent 31-bit polynomial hashes plus their length.
* Padding frames (``t >= enc_lens[b]``) are never read: rows are sorted by length and the rows still
  inside their utterance at frame ``t`` form a prefix of the batch.
* Scores are compared raw (no normalisation) during the search; with ``length_norm=True`` the final
  ranking (best and n-best) uses ``score / max(1, number of units)``.

With ``beam=1`` the pool always holds a single entry per utterance, so the search makes exactly the
choices of :func:`just_asr.decode.greedy.greedy_search` (same rows, same operations, same top-1
selection) and returns the same tokens and scores.

Example::

    >>> import torch
    >>> from just_asr.model.transducer import Joiner, Predictor
    >>> pred = Predictor(vocab_size=16, embed_dim=8, hidden_dim=12, dropout=0.0).eval()
    >>> join = Joiner(encoder_dim=10, predictor_dim=12, joint_dim=14, vocab_size=16)
    >>> enc, enc_lens = torch.randn(2, 6, 10), torch.tensor([6, 3])
    >>> res = beam_search(pred, join, enc, enc_lens, blank_id=0, beam=4, nbest=2)
    >>> len(res.nbest[0]) <= 2, res.nbest[0][0].tokens == res.tokens[0]
    (True, True)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from just_asr.decode.greedy import (
    DEFAULT_MAX_SYMBOLS_PER_FRAME,
    Hypothesis,
    SearchResult,
    check_inputs,
    log_probs,
    sort_by_length,
)
from just_asr.model.transducer import Joiner, Predictor

# two independent polynomial hashes of the unit sequence (products stay below 2**62: no overflow)
_HASH_MOD = (2_147_483_647, 2_147_483_629)
_HASH_BASE = (1_000_003, 999_983)
_NEG_INF = float("-inf")


def _merge_finished(
    score: Tensor, finished: Tensor, h1: Tensor, h2: Tensor, ntok: Tensor, merge: str
) -> Tensor:
    """Merge finished hypotheses of one row that share a unit sequence.

    Args:
        score: ``(N, K)`` scores (``-inf`` for dead slots).
        finished: ``(N, K)`` bool, slot is live and finished on this frame.
        h1, h2, ntok: ``(N, K)`` sequence hashes and lengths.
        merge: ``"max"`` or ``"logsumexp"``.

    Returns:
        ``(N, K)`` new scores: the highest-scoring member of each group (lowest slot on ties) keeps
        the merged score, the other members become dead (``-inf``); other slots are unchanged.
    """
    k = score.shape[1]
    same = (
        (h1.unsqueeze(2) == h1.unsqueeze(1))
        & (h2.unsqueeze(2) == h2.unsqueeze(1))
        & (ntok.unsqueeze(2) == ntok.unsqueeze(1))
        & finished.unsqueeze(2)
        & finished.unsqueeze(1)
    )  # (N, K, K); includes the diagonal for finished slots
    group = torch.where(same, score.unsqueeze(1), torch.full_like(score.unsqueeze(1), _NEG_INF))
    leader = group.argmax(dim=2) == torch.arange(k, device=score.device)  # first maximum of the group
    merged = torch.logsumexp(group, dim=2) if merge == "logsumexp" else score
    out = torch.where(finished & leader, merged, score)
    return torch.where(finished & ~leader, torch.full_like(score, _NEG_INF), out)


@torch.no_grad()
def beam_search(
    predictor: Predictor,
    joiner: Joiner,
    enc: Tensor,
    enc_lens: Tensor,
    blank_id: int = 0,
    beam: int = 4,
    max_symbols_per_frame: int = DEFAULT_MAX_SYMBOLS_PER_FRAME,
    length_norm: bool = False,
    merge: str = "max",
    nbest: int = 1,
) -> SearchResult:
    """Batched RNN-T beam search over utterances x beams.

    Call ``predictor.eval()`` / ``joiner.eval()`` first (dropout would otherwise stay active).

    Args:
        predictor: prediction network with ``step(last_tokens (N,), state) -> (out (N, P), state)``
          whose state is an LSTM ``(h, c)``, each ``(L, N, H)``; blank is its start symbol.
        joiner: joint network with ``project_encoder``, ``project_predictor`` and ``join``.
        enc: ``(B, T, D)`` encoder output; frames ``t >= enc_lens[b]`` are padding and never read.
        enc_lens: ``(B,)`` valid frames per row (0 gives an empty hypothesis with score 0).
        blank_id: id of blank.
        beam: hypotheses kept per utterance (1 reproduces greedy search exactly).
        max_symbols_per_frame: most units emitted on one frame (same meaning as greedy search).
        length_norm: rank final hypotheses by ``score / max(1, len(tokens))`` instead of ``score``.
        merge: how hypotheses with the same units are merged: ``"max"`` or ``"logsumexp"``.
        nbest: hypotheses returned per utterance in ``SearchResult.nbest`` (at most ``beam``).

    Returns:
        :class:`SearchResult` with the best hypothesis per utterance in the original row order.
    """
    check_inputs(predictor, joiner, enc, enc_lens, blank_id, max_symbols_per_frame)
    if beam < 1:
        raise ValueError(f"beam must be >= 1; got {beam}")
    if merge not in ("max", "logsumexp"):
        raise ValueError(f"merge must be 'max' or 'logsumexp'; got {merge!r}")
    if nbest < 1:
        raise ValueError(f"nbest must be >= 1; got {nbest}")
    batch, K = enc.shape[0], beam
    if batch == 0:
        return SearchResult(tokens=[], scores=[], nbest=[])
    device = enc.device
    vocab = joiner.vocab_size
    k_local = min(K, vocab)
    order, active_rows = sort_by_length(enc_lens)
    enc_proj = joiner.project_encoder(enc.index_select(0, order))  # (B, T, J)

    # --- per-slot state, flat slot index = row * K + slot ---
    start = torch.full((batch * K,), blank_id, dtype=torch.long, device=device)
    pred_out, (h, c) = predictor.step(start, None)  # (B*K, P); (L, B*K, H) each
    pred_proj = joiner.project_predictor(pred_out)  # (B*K, J)
    score = torch.full((batch, K), _NEG_INF, dtype=torch.float32, device=device)
    score[:, 0] = 0.0  # one live empty hypothesis per utterance
    hash1 = torch.zeros(batch, K, dtype=torch.long, device=device)
    hash2 = torch.zeros_like(hash1)
    ntok = torch.zeros_like(hash1)
    row_base = torch.arange(batch, device=device).unsqueeze(1) * K  # (B, 1)

    rec_n: list[int] = []  # rows touched by each sub-step
    rec_parent: list[Tensor] = []  # (n, K) slot each new slot came from
    rec_token: list[Tensor] = []  # (n, K) unit emitted by the move (-1: none)
    for t, n in enumerate(active_rows):
        nk = n * K
        sc = score[:n]
        active = sc > _NEG_INF  # every live hypothesis may emit on a new frame
        finished = torch.zeros_like(active)
        for k in range(max_symbols_per_frame):
            if k == 0:
                # every live slot is active: score all n*K slots through views (dead slots have
                # score -inf, so their candidates are -inf too)
                enc_t = enc_proj[:n, t].unsqueeze(1).expand(n, K, enc_proj.shape[-1]).reshape(nk, -1)
                lp = log_probs(joiner, enc_t, pred_proj[:nk])  # (n*K, V)
                top_lp, cand_tok = lp.topk(k_local, dim=-1)  # (n*K, K'): a slot's best moves
                cand_score = sc.reshape(nk, 1) + top_lp
            else:
                flat = active.reshape(-1).nonzero().squeeze(1)  # (M,) active slots
                if flat.numel() == 0:
                    break
                lp = log_probs(joiner, enc_proj[flat // K, t], pred_proj[flat])  # (M, V)
                top_lp, top_tok = lp.topk(k_local, dim=-1)  # (M, K')
                cand = sc.reshape(-1)[flat].unsqueeze(1) + top_lp
                cand_score = torch.full((nk, k_local), _NEG_INF, dtype=torch.float32, device=device)
                cand_score[flat] = cand
                cand_tok = torch.full((nk, k_local), blank_id, dtype=torch.long, device=device)
                cand_tok[flat] = top_tok
            keep = torch.where(finished, sc, torch.full_like(sc, _NEG_INF))  # finished slots carry over
            pool = torch.cat([keep, cand_score.view(n, K * k_local)], dim=1)  # (n, K + K*K')
            new_sc, sel = pool.topk(K, dim=1)  # (n, K)
            is_keep = sel < K
            cand_idx = (sel - K).clamp(min=0)
            parent = torch.where(is_keep, sel, cand_idx // k_local)
            tok = torch.where(is_keep, torch.full_like(sel, -1), cand_tok.view(n, K * k_local).gather(1, cand_idx))
            alive = new_sc > _NEG_INF
            emitted = alive & (tok >= 0) & (tok != blank_id)
            last = k == max_symbols_per_frame - 1
            if last:  # units emitted in the last sub-step advance without a blank (forced)
                finished = alive
                active = torch.zeros_like(alive)
            else:
                finished = alive & ~emitted
                active = emitted

            # reorder the cached state by parent (skipped when every slot keeps its own parent)
            src = (row_base[:n] + parent).reshape(-1)  # (n*K,)
            if K > 1:
                h[:, :nk] = h[:, src]
                c[:, :nk] = c[:, src]
                pred_proj[:nk] = pred_proj[src]
                hash1[:n] = hash1[:n].gather(1, parent)
                hash2[:n] = hash2[:n].gather(1, parent)
                ntok[:n] = ntok[:n].gather(1, parent)
            if bool(emitted.any()):
                e = emitted.reshape(-1).nonzero().squeeze(1)  # flat slots that emitted
                e_tok = tok.reshape(-1)[e]
                out, (h_new, c_new) = predictor.step(e_tok, (h[:, e], c[:, e]))
                h[:, e], c[:, e] = h_new, c_new
                pred_proj[e] = joiner.project_predictor(out)
                emitted_tok = torch.where(emitted, tok, torch.zeros_like(tok)) + 1
                hash1[:n] = torch.where(emitted, (hash1[:n] * _HASH_BASE[0] + emitted_tok) % _HASH_MOD[0], hash1[:n])
                hash2[:n] = torch.where(emitted, (hash2[:n] * _HASH_BASE[1] + emitted_tok) % _HASH_MOD[1], hash2[:n])
                ntok[:n] = ntok[:n] + emitted.long()
            if K > 1:
                new_sc = _merge_finished(new_sc, finished, hash1[:n], hash2[:n], ntok[:n], merge)
                alive = new_sc > _NEG_INF
                finished &= alive
                active &= alive
            sc = new_sc
            score[:n] = sc
            rec_n.append(n)
            rec_parent.append(parent.reshape(-1))
            rec_token.append(torch.where(emitted, tok, torch.full_like(tok, -1)).reshape(-1))

    # --- backtrack every slot through the recorded moves ---
    tokens_by_slot = _backtrack(batch, K, rec_n, rec_parent, rec_token)  # [B][K] lists
    score_cpu = score.cpu().numpy()
    ntok_cpu = ntok.cpu().numpy()
    order_cpu = order.cpu().tolist()
    best_tokens: list[list[int]] = [[] for _ in range(batch)]
    best_scores = [0.0] * batch
    all_nbest: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for sorted_i, orig_i in enumerate(order_cpu):
        raw = score_cpu[sorted_i]
        key = raw / np.maximum(ntok_cpu[sorted_i], 1) if length_norm else raw
        live = np.nonzero(np.isfinite(raw))[0]
        ranked = live[np.argsort(-key[live], kind="stable")][:nbest]
        hyps = [Hypothesis(tokens_by_slot[sorted_i][j], float(raw[j]), float(key[j])) for j in ranked]
        all_nbest[orig_i] = hyps
        best_tokens[orig_i] = hyps[0].tokens
        best_scores[orig_i] = hyps[0].score
    return SearchResult(tokens=best_tokens, scores=best_scores, nbest=all_nbest)


def _backtrack(
    batch: int, k: int, rec_n: list[int], rec_parent: list[Tensor], rec_token: list[Tensor]
) -> list[list[list[int]]]:
    """Follow the back-pointers from every final slot to the start.

    ``rec_parent[s], rec_token[s]`` are the flattened ``(rec_n[s], K)`` parent slots and emitted
    units (-1: none) of sub-step ``s``; rows ``>= rec_n[s]`` were untouched by that sub-step.
    Returns ``[row][slot] -> unit ids`` in time order (sorted row order).
    """
    steps = len(rec_n)
    if steps == 0:
        return [[[] for _ in range(k)] for _ in range(batch)]
    parents = torch.cat(rec_parent).cpu().numpy()
    toks = torch.cat(rec_token).cpu().numpy()
    offsets = np.concatenate([[0], np.cumsum(np.asarray(rec_n) * k)])
    slot = np.tile(np.arange(k), (batch, 1))  # (B, K): current slot of each final hypothesis
    collected = np.full((steps, batch, k), -1, dtype=np.int64)
    for s in range(steps - 1, -1, -1):
        n = rec_n[s]
        par = parents[offsets[s] : offsets[s + 1]].reshape(n, k)
        tk = toks[offsets[s] : offsets[s + 1]].reshape(n, k)
        rows = np.arange(n)[:, None]
        cur = slot[:n]
        collected[s, :n] = tk[rows, cur]
        slot[:n] = par[rows, cur]
    out: list[list[list[int]]] = []
    for b in range(batch):
        col = collected[:, b, :]  # (S, K)
        out.append([col[:, j][col[:, j] >= 0].tolist() for j in range(k)])
    return out
