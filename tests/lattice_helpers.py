"""Brute-force helpers for the transducer-lattice tests (``test_lattice.py``, ``test_pruned_rnnt.py``)."""

from __future__ import annotations

import itertools


def alignments(T: int, U: int):
    """Every alignment of U labels in T frames as a list of visited (t, u, move) with move in
    {"b", "e"} (blank, emit); the final move is the blank leaving (T-1, U)."""
    for emit_pos in itertools.combinations(range(T - 1 + U), U):
        t = u = 0
        path = []
        es = set(emit_pos)
        for i in range(T - 1 + U):
            if i in es:
                path.append((t, u, "e"))
                u += 1
            else:
                path.append((t, u, "b"))
                t += 1
        path.append((t, u, "b"))
        yield path
