"""Tests for batched greedy and beam RNN-T search (just_asr.decode).

Reference implementations here are written independently of the batched code: they decode one
utterance at a time and run the predictor over the whole prefix (``Predictor.forward``) instead of
caching states with ``step``. Padding frames of ``enc`` are filled with NaN in every test, so any read
of a padding frame would poison the scores and fail the comparisons.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from just_asr.decode import beam_search, decode, greedy_search
from just_asr.model.transducer import Joiner, Predictor

BLANK = 0


def make_model(vocab: int, seed: int, layers: int = 1, blank_bias: float = 0.0) -> tuple[Predictor, Joiner]:
    """A tiny randomly initialised predictor + joiner (eval mode); ``blank_bias`` makes blank likelier."""
    torch.manual_seed(seed)
    pred = Predictor(vocab, embed_dim=8, hidden_dim=12, num_layers=layers, dropout=0.0).eval()
    join = Joiner(encoder_dim=10, predictor_dim=12, joint_dim=14, vocab_size=vocab).eval()
    with torch.no_grad():
        join.output.bias[BLANK] += blank_bias
    return pred, join


def make_enc(lens: list[int], t_max: int, seed: int, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random encoder output ``(B, t_max, 10)`` with NaN in every padding frame."""
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(len(lens), t_max, 10, generator=g) * scale
    for b, n in enumerate(lens):
        enc[b, n:] = float("nan")
    return enc, torch.tensor(lens, dtype=torch.long)


def _pred_out(pred: Predictor, seq: tuple[int, ...], cache: dict) -> torch.Tensor:
    """Predictor output after reading blank + seq, computed over the full prefix: ``(P,)``."""
    if seq not in cache:
        tokens = torch.tensor([[BLANK, *seq]])
        out, _ = pred(tokens)
        cache[seq] = out[0, -1]
    return cache[seq]


def _frame_logp(pred: Predictor, join: Joiner, frame: torch.Tensor, seq: tuple[int, ...], cache: dict) -> torch.Tensor:
    return torch.log_softmax(join(frame, _pred_out(pred, seq, cache)), dim=-1)


@torch.no_grad()
def reference_greedy(pred, join, enc_row, length, max_sym) -> tuple[list[int], float]:
    """Greedy search for one utterance by plain loops."""
    cache: dict = {}
    seq: tuple[int, ...] = ()
    score = 0.0
    for t in range(length):
        for _ in range(max_sym):
            lp = _frame_logp(pred, join, enc_row[t], seq, cache)
            v = int(lp.argmax())
            score += float(lp[v])
            if v == BLANK:
                break
            seq = seq + (v,)
    return list(seq), score


@torch.no_grad()
def all_alignments(pred, join, enc_row, length, max_sym) -> list[tuple[tuple[int, ...], float]]:
    """Every alignment path as (unit sequence, log-probability): on each frame a path emits up to
    ``max_sym`` units; it leaves the frame with blank, or without a blank right after the
    ``max_sym``-th unit (forced advance)."""
    cache: dict = {}
    vocab = join.vocab_size
    paths: list[tuple[tuple[int, ...], float]] = []

    def walk(t: int, k: int, seq: tuple[int, ...], logp: float) -> None:
        if t == length:
            paths.append((seq, logp))
            return
        lp = _frame_logp(pred, join, enc_row[t], seq, cache)
        walk(t + 1, 0, seq, logp + float(lp[BLANK]))
        for v in range(vocab):
            if v == BLANK:
                continue
            if k + 1 == max_sym:
                walk(t + 1, 0, seq + (v,), logp + float(lp[v]))
            else:
                walk(t, k + 1, seq + (v,), logp + float(lp[v]))

    walk(0, 0, (), 0.0)
    return paths


def sequence_scores(paths, merge: str) -> dict[tuple[int, ...], float]:
    groups: dict[tuple[int, ...], list[float]] = defaultdict(list)
    for seq, lp in paths:
        groups[seq].append(lp)
    if merge == "max":
        return {s: max(v) for s, v in groups.items()}
    return {s: float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) for s, v in groups.items()}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many tiny tensor ops: one intra-op thread is much faster on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# greedy search


@pytest.mark.parametrize(
    "seed,vocab,lens,max_sym,layers,blank_bias",
    [
        (0, 7, [5, 3, 0, 5], 1, 1, 0.0),
        (1, 5, [6], 2, 2, 1.0),
        (2, 11, [1, 8, 4], 3, 1, 2.0),
        (3, 4, [9, 9, 2, 7, 1], 2, 2, 0.0),
    ],
)
def test_greedy_matches_per_utterance_reference(seed, vocab, lens, max_sym, layers, blank_bias):
    pred, join = make_model(vocab, seed, layers, blank_bias)
    enc, enc_lens = make_enc(lens, max(lens), seed + 100)
    res = greedy_search(pred, join, enc, enc_lens, BLANK, max_sym)
    for b, n in enumerate(lens):
        ref_tokens, ref_score = reference_greedy(pred, join, enc[b], n, max_sym)
        assert res.tokens[b] == ref_tokens
        assert res.scores[b] == pytest.approx(ref_score, abs=1e-4)
        assert all(len(res.tokens[b]) <= max_sym * n for b, n in enumerate(lens))
    assert res.tokens[lens.index(min(lens))] == [] or min(lens) > 0


def test_greedy_respects_symbol_limit_and_makes_emissions():
    # blank strongly disfavoured: every frame emits the maximum number of units (forced advance)
    pred, join = make_model(6, seed=5, blank_bias=-30.0)
    enc, enc_lens = make_enc([4, 2, 3], 4, seed=6)
    for max_sym in (1, 2, 3):
        res = greedy_search(pred, join, enc, enc_lens, BLANK, max_sym)
        assert [len(t) for t in res.tokens] == [4 * max_sym, 2 * max_sym, 3 * max_sym]
        assert all(BLANK not in t for t in res.tokens)


def test_greedy_steps_predictor_only_for_rows_that_emitted():
    pred, join = make_model(9, seed=7, blank_bias=-0.5)
    stepped: list[int] = []
    original = pred.step

    def counting_step(last_tokens, state=None):
        stepped.append(int(last_tokens.shape[0]))
        return original(last_tokens, state)

    pred.step = counting_step  # type: ignore[method-assign]
    lens = [7, 2, 5, 0]
    enc, enc_lens = make_enc(lens, 7, seed=8)
    res = greedy_search(pred, join, enc, enc_lens, BLANK, max_symbols_per_frame=2)
    emitted = sum(len(t) for t in res.tokens)
    assert emitted > 0
    # one start step for the whole batch, then exactly one predictor row per emitted unit
    assert stepped[0] == len(lens)
    assert sum(stepped[1:]) == emitted


# ----------------------------------------------------------------------------------------------
# greedy == beam search with beam 1


@pytest.mark.parametrize(
    "seed,vocab,lens,max_sym,layers",
    [
        (10, 7, [6, 2, 6, 0, 3], 1, 1),
        (11, 13, [12], 3, 2),
        (12, 5, [1, 1, 1], 2, 1),
        (13, 9, [15, 4, 9, 11, 7, 2, 13, 8], 3, 2),
        (14, 30, [20, 17], 2, 1),
    ],
)
@pytest.mark.parametrize("blank_bias", [-1.0, 0.5])
def test_beam1_equals_greedy_exactly(seed, vocab, lens, max_sym, layers, blank_bias):
    pred, join = make_model(vocab, seed, layers, blank_bias)
    enc, enc_lens = make_enc(lens, max(lens) + 2, seed + 1)
    g = greedy_search(pred, join, enc, enc_lens, BLANK, max_sym)
    for length_norm in (False, True):
        b1 = beam_search(pred, join, enc, enc_lens, BLANK, beam=1, max_symbols_per_frame=max_sym, length_norm=length_norm)
        assert b1.tokens == g.tokens
        assert b1.scores == g.scores  # bit-identical: same rows, same operations
    assert sum(len(t) for t in g.tokens) > 0


# ----------------------------------------------------------------------------------------------
# beam search against brute force


@pytest.mark.parametrize("merge", ["max", "logsumexp"])
@pytest.mark.parametrize(
    "seed,vocab,lens,max_sym",
    [
        (20, 3, [3, 2], 2),
        (21, 4, [3, 1, 0], 1),
        (22, 3, [2], 3),
    ],
)
def test_wide_beam_is_exhaustive(seed, vocab, lens, max_sym, merge):
    """With a beam wider than the number of hypotheses nothing is pruned: the search must return
    every unit sequence with its exact score (best alignment for max, sum over alignments for
    logsumexp), and the best one first."""
    pred, join = make_model(vocab, seed, blank_bias=0.5)
    enc, enc_lens = make_enc(lens, max(lens), seed + 1)
    res = beam_search(pred, join, enc, enc_lens, BLANK, beam=600, max_symbols_per_frame=max_sym, merge=merge, nbest=600)
    for b, n in enumerate(lens):
        expected = sequence_scores(all_alignments(pred, join, enc[b], n, max_sym), merge)
        got = {tuple(h.tokens): h.score for h in res.nbest[b]}
        assert set(got) == set(expected)
        for seq, s in expected.items():
            assert got[seq] == pytest.approx(s, abs=1e-4)
        best = max(expected, key=expected.get)
        assert tuple(res.tokens[b]) == best
        assert res.scores[b] == pytest.approx(expected[best], abs=1e-4)
        scores = [h.score for h in res.nbest[b]]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("merge", ["max", "logsumexp"])
def test_length_norm_ranks_by_score_per_unit(merge):
    pred, join = make_model(4, seed=30, blank_bias=0.5)
    lens = [3, 2]
    enc, enc_lens = make_enc(lens, 3, seed=31)
    res = beam_search(pred, join, enc, enc_lens, BLANK, beam=600, max_symbols_per_frame=2, merge=merge,
                      length_norm=True, nbest=600)
    for b, n in enumerate(lens):
        expected = sequence_scores(all_alignments(pred, join, enc[b], n, 2), merge)
        normed = {s: v / max(1, len(s)) for s, v in expected.items()}
        best = max(normed, key=normed.get)
        assert tuple(res.tokens[b]) == best
        assert res.nbest[b][0].normalized_score == pytest.approx(normed[best], abs=1e-4)
        keys = [h.normalized_score for h in res.nbest[b]]
        assert keys == sorted(keys, reverse=True)
        for h in res.nbest[b]:
            assert h.normalized_score == pytest.approx(h.score / max(1, len(h.tokens)), abs=1e-6)


@pytest.mark.parametrize("seed", [40, 41, 42, 43])
def test_larger_beams_never_score_worse_than_greedy(seed):
    vocab = [6, 10, 17, 25][seed - 40]
    pred, join = make_model(vocab, seed, layers=1 + seed % 2, blank_bias=1.0)
    lens = [18, 11, 25, 4, 16][: 2 + seed % 4]
    enc, enc_lens = make_enc(lens, max(lens), seed + 1)
    for max_sym in (1, 3):
        g = greedy_search(pred, join, enc, enc_lens, BLANK, max_sym)
        for beam in (2, 4, 8):
            bk = beam_search(pred, join, enc, enc_lens, BLANK, beam=beam, max_symbols_per_frame=max_sym)
            for b in range(len(lens)):
                assert bk.scores[b] >= g.scores[b] - 1e-5
            for hyps in bk.nbest:
                assert len(hyps) == 1


def test_beam_results_are_row_order_independent():
    """Decoding rows together or one at a time gives the same hypotheses (no cross-row leakage)."""
    pred, join = make_model(8, seed=50, blank_bias=1.0)
    lens = [5, 9, 0, 7]
    enc, enc_lens = make_enc(lens, 9, seed=51)
    together = beam_search(pred, join, enc, enc_lens, BLANK, beam=3, max_symbols_per_frame=2, nbest=3)
    for b, n in enumerate(lens):
        alone = beam_search(pred, join, enc[b : b + 1, : max(n, 1)], enc_lens[b : b + 1], BLANK, beam=3,
                            max_symbols_per_frame=2, nbest=3)
        assert alone.tokens[0] == together.tokens[b]
        assert alone.scores[0] == pytest.approx(together.scores[b], abs=1e-5)
        assert [h.tokens for h in alone.nbest[0]] == [h.tokens for h in together.nbest[b]]
    assert together.tokens[2] == [] and together.scores[2] == 0.0


def test_nbest_hypotheses_are_distinct_and_scores_match_an_alignment():
    pred, join = make_model(4, seed=60, blank_bias=0.5)
    lens = [3]
    enc, enc_lens = make_enc(lens, 3, seed=61)
    res = beam_search(pred, join, enc, enc_lens, BLANK, beam=6, max_symbols_per_frame=2, nbest=6)
    hyps = res.nbest[0]
    assert len(hyps) == 6
    assert len({tuple(h.tokens) for h in hyps}) == len(hyps)
    # with max merging each kept score is the log-probability of one real alignment of its sequence
    paths = all_alignments(pred, join, enc[0], 3, 2)
    for h in hyps:
        candidates = [lp for seq, lp in paths if list(seq) == h.tokens]
        assert any(math.isclose(h.score, lp, abs_tol=1e-4) for lp in candidates)


# ----------------------------------------------------------------------------------------------
# arguments


def test_decode_dispatch_and_bad_arguments():
    pred, join = make_model(6, seed=70)
    enc, enc_lens = make_enc([3, 2], 3, seed=71)
    assert decode(pred, join, enc, enc_lens, method="greedy").tokens == greedy_search(pred, join, enc, enc_lens).tokens
    assert decode(pred, join, enc, enc_lens, method="beam", beam=2).tokens == beam_search(pred, join, enc, enc_lens, beam=2).tokens
    with pytest.raises(ValueError, match="unknown decoding method"):
        decode(pred, join, enc, enc_lens, method="viterbi")
    with pytest.raises(ValueError, match="enc_lens must lie"):
        greedy_search(pred, join, enc, torch.tensor([4, 1]))
    with pytest.raises(ValueError, match=r"enc must be \(B, T, D\)"):
        greedy_search(pred, join, enc[0], enc_lens)
    with pytest.raises(ValueError, match="max_symbols_per_frame"):
        beam_search(pred, join, enc, enc_lens, max_symbols_per_frame=0)
    with pytest.raises(ValueError, match="beam must be"):
        beam_search(pred, join, enc, enc_lens, beam=0)
    with pytest.raises(ValueError, match="merge must be"):
        beam_search(pred, join, enc, enc_lens, merge="sum")
    with pytest.raises(ValueError, match="blank_id"):
        greedy_search(pred, join, enc, enc_lens, blank_id=6)
    empty = greedy_search(pred, join, enc[:0], enc_lens[:0])
    assert empty.tokens == [] and beam_search(pred, join, enc[:0], enc_lens[:0]).tokens == []
