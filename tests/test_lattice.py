"""The transducer lattice's forward-backward (``just_asr.losses.lattice``): the column recursion
against brute-force sums over alignments and against the anti-diagonal one, on full, banded
(pruned), broken and dead lattices."""

from __future__ import annotations

import math

import pytest
import torch

from lattice_helpers import alignments

from just_asr.losses.lattice import forward_backward, lattice_masks
from just_asr.losses.pruned_rnnt import prune_bounds

NEG_INF = float("-inf")


def brute_force(lpb: torch.Tensor, lpe: torch.Tensor, T: int, U: int):
    """log-likelihood and arc/node posteriors of one utterance by enumerating alignments (float64)."""
    scores, paths = [], []
    for arcs in alignments(T, U):
        s = sum(float(lpb[t, u] if k == "b" else lpe[t, u]) for t, u, k in arcs)
        scores.append(s)
        paths.append(arcs)
    ll = torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0)
    shape = lpb.shape
    blank = torch.zeros(shape, dtype=torch.float64)
    emit = torch.zeros(shape, dtype=torch.float64)
    node = torch.zeros(shape, dtype=torch.float64)
    if math.isinf(float(ll)):
        return float(ll), node, blank, emit
    for s, arcs in zip(scores, paths):
        w = math.exp(s - float(ll))
        for t, u, k in arcs:
            (blank if k == "b" else emit)[t, u] += w
            node[t, u] += w
    return float(ll), node, blank, emit


def masked_problem(seed: int, B: int, T: int, U1: int, t_lens, u_lens, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U1, 3, generator=g, dtype=torch.float64) * 2
    lp = logits.log_softmax(-1)
    tl, ul = torch.tensor(t_lens), torch.tensor(u_lens)
    node_ok, emit_ok = lattice_masks(tl, ul, T, U1)
    lpb = lp[..., 0].masked_fill(~node_ok, NEG_INF).to(dtype)
    lpe = lp[..., 1].masked_fill(~emit_ok, NEG_INF).to(dtype)
    return lpb, lpe, tl, ul


def check_against_brute_force(res, lpb, lpe, tl, ul) -> None:
    log_like, log_node, log_blank, log_emit = res
    for b in range(lpb.size(0)):
        T, U = int(tl[b]), int(ul[b])
        ll, node, blank, emit = brute_force(lpb[b].double(), lpe[b].double(), T, U)
        assert float(log_like[b]) == pytest.approx(ll, abs=1e-10)
        torch.testing.assert_close(log_blank[b].exp().double(), blank, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(log_emit[b].exp().double(), emit, rtol=1e-9, atol=1e-12)
        # nodes inside the utterance's lattice (the virtual terminal's padding row is the caller's)
        torch.testing.assert_close(log_node[b, :T, : U + 1].exp().double(), node[:T, : U + 1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["columns", "diagonals", "auto"])
def test_full_lattice_equals_brute_force(method: str) -> None:
    # full-length rows, short rows, no labels, one frame
    lpb, lpe, tl, ul = masked_problem(0, 5, 5, 4, [5, 3, 4, 1, 2], [3, 2, 0, 2, 3])
    check_against_brute_force(forward_backward(lpb, lpe, tl, ul, method=method), lpb, lpe, tl, ul)


def test_columns_and_diagonals_agree_on_random_lattices() -> None:
    for seed in range(6):
        g = torch.Generator().manual_seed(100 + seed)
        B, T, U1 = 4, int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        tl = torch.randint(1, T + 1, (B,), generator=g)
        ul = torch.randint(0, U1, (B,), generator=g)
        lpb, lpe, tl, ul = masked_problem(seed, B, T, U1, tl.tolist(), ul.tolist())
        a = forward_backward(lpb, lpe, tl, ul, method="columns")
        d = forward_backward(lpb, lpe, tl, ul, method="diagonals")
        for x, y in zip(a, d):
            assert torch.equal(torch.isinf(x), torch.isinf(y))
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
        only_ll = forward_backward(lpb, lpe, tl, ul, occupancies=False)
        assert only_ll[1:] == (None, None, None)
        torch.testing.assert_close(only_ll[0], a[0], rtol=1e-12, atol=1e-12)


def test_pruned_band_takes_the_column_path_and_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    import just_asr.losses.lattice as lattice

    B, T, U1, S = 3, 6, 5, 2
    lpb, lpe, tl, ul = masked_problem(7, B, T, U1, [6, 5, 6], [4, 3, 2])
    occ = torch.rand(B, T, U1, generator=torch.Generator().manual_seed(1))
    bounds = prune_bounds(occ, tl, ul, S)  # monotone windows: one run of blank arcs per column
    band = torch.zeros(B, T, U1, dtype=torch.bool)
    band.scatter_(2, bounds[:, :, None] + torch.arange(S)[None, None, :], True)
    lpb, lpe = lpb.masked_fill(~band, NEG_INF), lpe.masked_fill(~band, NEG_INF)
    assert torch.isinf(lpb[:, : int(tl.min())]).any()  # the band does cut columns

    monkeypatch.setattr(lattice, "_by_diagonals", lambda *a: pytest.fail("fell back to diagonals"))
    check_against_brute_force(forward_backward(lpb, lpe, tl, ul), lpb, lpe, tl, ul)


def test_two_runs_in_a_column_fall_back_to_diagonals() -> None:
    lpb, lpe, tl, ul = masked_problem(3, 2, 6, 3, [6, 6], [2, 2])
    lpb[0, 2, 1] = NEG_INF  # column 1 of utterance 0: blank arcs 0-1 and 3-5, cut at 2
    with pytest.raises(ValueError, match="more than one run"):
        forward_backward(lpb, lpe, tl, ul, method="columns")
    res = forward_backward(lpb, lpe, tl, ul)
    check_against_brute_force(res, lpb, lpe, tl, ul)
    with pytest.raises(ValueError, match="method"):
        forward_backward(lpb, lpe, tl, ul, method="rows")


@pytest.mark.parametrize("method", ["columns", "diagonals"])
def test_dead_utterance_has_zero_likelihood_and_no_occupancy(method: str) -> None:
    lpb, lpe, tl, ul = masked_problem(4, 2, 4, 3, [4, 4], [2, 2])
    lpe[1, :, 1] = NEG_INF  # utterance 1 can never emit its second label
    log_like, node, blank, emit = forward_backward(lpb, lpe, tl, ul, method=method)
    assert log_like[1] == NEG_INF and math.isfinite(float(log_like[0]))
    for x in (node, blank, emit):
        assert torch.isneginf(x[1]).all() and torch.isfinite(x[0]).any()


def test_nan_propagates_instead_of_cutting_the_lattice() -> None:
    lpb, lpe, tl, ul = masked_problem(5, 1, 4, 3, [4], [2])
    lpb[0, 1, 0] = float("nan")
    assert torch.isnan(forward_backward(lpb, lpe, tl, ul)[0]).all()


def test_float32_lattice_is_summed_in_float64() -> None:
    # MLS-like length: 400 frames of blank log-probs near -3 make the running sums reach ~-1200
    B, T, U1 = 2, 400, 31
    lpb, lpe, tl, ul = masked_problem(6, B, T, U1, [400, 350], [30, 20])
    res64 = forward_backward(lpb, lpe, tl, ul, method="diagonals")
    res32 = forward_backward(lpb.float(), lpe.float(), tl, ul, method="columns")
    assert res32[0].dtype == torch.float32 and res32[1].dtype == torch.float32
    torch.testing.assert_close(res32[0].double(), res64[0], rtol=1e-6, atol=0)
    fin = torch.isfinite(res64[2])
    torch.testing.assert_close(res32[2].double()[fin].exp(), res64[2][fin].exp(), rtol=0, atol=1e-6)


def test_cells_outside_the_run_take_their_emit_arrivals_alone() -> None:
    # arbitrary -inf patterns (not only padding or bands): cells before and after a column's run of
    # blank arcs are reached by emit arcs only, which the column path must keep
    checked_outside = 0
    for seed in range(60):
        g = torch.Generator().manual_seed(1000 + seed)
        B, T, U1 = 2, int(torch.randint(1, 7, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
        lp = torch.randn(B, T, U1, 3, generator=g, dtype=torch.float64).log_softmax(-1)
        lpb, lpe = lp[..., 0].clone(), lp[..., 1].clone()
        lpb[torch.rand(B, T, U1, generator=g) < 0.25] = NEG_INF
        lpe[torch.rand(B, T, U1, generator=g) < 0.25] = NEG_INF
        tl = torch.randint(1, T + 1, (B,), generator=g)
        ul = torch.randint(0, U1, (B,), generator=g)
        node_ok, emit_ok = lattice_masks(tl, ul, T, U1)
        lpb, lpe = lpb.masked_fill(~node_ok, NEG_INF), lpe.masked_fill(~emit_ok, NEG_INF)
        try:
            cols = forward_backward(lpb, lpe, tl, ul, method="columns")
        except ValueError:
            continue  # two runs in a column: the fallback's business
        diag = forward_backward(lpb, lpe, tl, ul, method="diagonals")
        for x, y in zip(cols, diag):
            assert torch.equal(torch.isinf(x), torch.isinf(y))
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
        # count finite emit occupancies into cells that have no blank arc into them
        into = torch.full_like(lpb, NEG_INF)
        into[:, 1:] = lpb[:, :-1]
        checked_outside += int((torch.isinf(into[:, :, 1:]) & torch.isfinite(cols[3][:, :, :-1])).sum())
    assert checked_outside > 20


def test_column_path_keeps_a_nan_at_the_end_of_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import just_asr.losses.lattice as lattice

    monkeypatch.setattr(lattice, "_by_diagonals", lambda *a: pytest.fail("fell back to diagonals"))
    lpb, lpe, tl, ul = masked_problem(8, 2, 4, 3, [4, 4], [2, 2])
    lpb[1, 3, 2] = float("nan")  # the final blank of utterance 1
    log_like, node, blank, emit = forward_backward(lpb, lpe, tl, ul)
    assert torch.isnan(log_like[1]) and torch.isfinite(log_like[0])
    assert torch.isnan(blank[1]).all() and not torch.isnan(blank[0]).any()  # NaN is not "dead"


def test_huge_finite_log_probs_go_to_the_diagonals() -> None:
    lpb, lpe, tl, ul = masked_problem(9, 1, 6, 3, [6], [2])
    lpb[0, 1, 1] = -1e20  # a masking value given as a log-probability: the arc is as good as absent
    with pytest.raises(ValueError, match="1e7"):
        forward_backward(lpb, lpe, tl, ul, method="columns")
    check_against_brute_force(forward_backward(lpb, lpe, tl, ul), lpb, lpe, tl, ul)
    # the loss sees the same
    from just_asr.losses import rnnt_loss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 6, 3, 4, generator=g, dtype=torch.float64).log_softmax(-1)
    masked = logits.clone()
    masked[0, 2, 1, 0] = torch.finfo(torch.float64).min / 2  # a blank log-probability
    loss = rnnt_loss(masked, torch.tensor([[1, 2]]), torch.tensor([6]), torch.tensor([2]), fused_log_softmax=False)
    cut = logits.clone()
    cut[0, 2, 1, 0] = NEG_INF
    ref = rnnt_loss(cut, torch.tensor([[1, 2]]), torch.tensor([6]), torch.tensor([2]), fused_log_softmax=False)
    assert float(loss) == pytest.approx(float(ref), rel=1e-12)


def test_lattice_benchmark_prints_its_table() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "lattice.py"), "--shapes", "2,6,3", "3,4,2", "--repeats", "1",
         "--threads", "1"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 2 x 6 x 3 |") or line.startswith("| 3 x 4 x 2 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and cells[3].endswith("x")
        assert float(cells[4]) < 1e-4  # float32 diagonals vs float64 columns on a tiny lattice


@pytest.mark.parametrize("method", ["auto", "columns", "diagonals"])
def test_empty_batch(method: str) -> None:
    from just_asr.losses import lattice_nll

    empty = torch.zeros(0, 5, 3)
    lengths = torch.zeros(0, dtype=torch.int64)
    log_like, node, blank, emit = forward_backward(empty, empty, lengths, lengths, method=method)
    assert log_like.shape == (0,) and node.shape == blank.shape == emit.shape == (0, 5, 3)
    nll, occ = lattice_nll(empty, empty, lengths, lengths)
    assert nll.shape == (0,) and occ.shape == (0, 5, 3)


def test_lattice_nll_rejects_lengths_outside_the_lattice() -> None:
    from just_asr.losses import lattice_nll

    x = torch.randn(2, 4, 3).log_softmax(-1)
    ok = lattice_nll(x, x, torch.tensor([4, 2]), torch.tensor([2, 0]))[0]
    assert torch.isfinite(ok).all()
    for tl, ul in [([5, 4], [2, 1]), ([0, 4], [2, 1]), ([4, 4], [3, 1]), ([4, 4], [-1, 1])]:
        with pytest.raises(ValueError, match="1 <= T_b <= 4 and 0 <= U_b <= 2"):
            lattice_nll(x, x, torch.tensor(tl), torch.tensor(ul))
    with pytest.raises(ValueError, match="must be \\(2,\\)"):
        lattice_nll(x, x, torch.tensor([4]), torch.tensor([2]))
