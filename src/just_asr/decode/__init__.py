"""RNN-T decoding: batched greedy and beam search over ``(predictor, joiner, enc, enc_lens, blank_id)``.

These functions do not depend on the training code: give them any prediction network with
``step`` and any joiner with ``project_encoder`` / ``project_predictor`` / ``join`` (see
:mod:`just_asr.model.transducer`).
"""

from __future__ import annotations

from torch import Tensor

from just_asr.decode.beam import beam_search
from just_asr.decode.greedy import DEFAULT_MAX_SYMBOLS_PER_FRAME, Hypothesis, SearchResult, greedy_search
from just_asr.model.transducer import Joiner, Predictor

__all__ = [
    "DEFAULT_MAX_SYMBOLS_PER_FRAME",
    "Hypothesis",
    "SearchResult",
    "beam_search",
    "decode",
    "greedy_search",
]


def decode(
    predictor: Predictor,
    joiner: Joiner,
    enc: Tensor,
    enc_lens: Tensor,
    blank_id: int = 0,
    method: str = "greedy",
    beam: int = 4,
    max_symbols_per_frame: int = DEFAULT_MAX_SYMBOLS_PER_FRAME,
    length_norm: bool = False,
    merge: str = "max",
    nbest: int = 1,
) -> SearchResult:
    """Run ``method`` (``"greedy"`` or ``"beam"``) on ``enc: (B, T, D)`` with ``enc_lens: (B,)``.

    ``beam``, ``length_norm``, ``merge`` and ``nbest`` apply to beam search only.
    """
    if method == "greedy":
        return greedy_search(predictor, joiner, enc, enc_lens, blank_id, max_symbols_per_frame)
    if method == "beam":
        return beam_search(
            predictor, joiner, enc, enc_lens, blank_id, beam=beam, max_symbols_per_frame=max_symbols_per_frame,
            length_norm=length_norm, merge=merge, nbest=nbest,
        )
    raise ValueError(f"unknown decoding method {method!r}; use 'greedy' or 'beam'")
