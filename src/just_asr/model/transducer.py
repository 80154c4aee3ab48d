"""RNN-T prediction network and joiner.

The prediction network reads the previous non-blank tokens (blank doubles as the start symbol) and
the joiner combines one encoder frame with one predictor state into logits over the vocabulary.
The joiner keeps its two input projections separate from the joint so that decoders and the pruned
loss can project each side once and join only where needed.

Example::

    >>> import torch
    >>> pred = Predictor(vocab_size=32, embed_dim=16, hidden_dim=24, num_layers=1)
    >>> join = Joiner(encoder_dim=20, predictor_dim=24, joint_dim=28, vocab_size=32)
    >>> y = torch.randint(1, 32, (2, 5))
    >>> p, _ = pred(pred.prepend_blank(y))            # (2, 6, 24)
    >>> enc = torch.randn(2, 7, 20)
    >>> logits = join(enc.unsqueeze(2), p.unsqueeze(1))  # (2, 7, 6, 32)
    >>> tuple(logits.shape)
    (2, 7, 6, 32)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LSTMState = tuple[Tensor, Tensor]


def _activation(name: str) -> nn.Module:
    table = {"tanh": nn.Tanh, "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU}
    if name not in table:
        raise ValueError(f"unknown joiner activation {name!r}; choose from {sorted(table)}")
    return table[name]()


def prepend_blank(targets: Tensor, blank_id: int) -> Tensor:
    """``targets: (B, U)`` -> ``(B, U+1)`` with ``blank_id`` (the predictors' start symbol) in front."""
    start = torch.full_like(targets[:, :1], blank_id)
    return torch.cat([start, targets], dim=1)


class Predictor(nn.Module):
    """Embedding + LSTM stack over previous tokens.

    Args:
        vocab_size: number of output units including blank.
        embed_dim: token embedding width.
        hidden_dim: LSTM width (the paper's predictor: 2 layers x 640).
        num_layers: LSTM depth.
        dropout: dropout on the embedding and between LSTM layers.
        blank_id: id of blank, used as the start-of-sequence symbol.
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 256,
        hidden_dim: int = 320,
        num_layers: int = 1,
        dropout: float = 0.1,
        blank_id: int = 0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            embed_dim, hidden_dim, num_layers=num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_dim = hidden_dim

    def prepend_blank(self, targets: Tensor) -> Tensor:
        """``targets: (B, U)`` -> ``(B, U+1)`` with blank (the start symbol) in front."""
        return prepend_blank(targets, self.blank_id)

    def forward(self, tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """Run the predictor over a token sequence.

        Args:
            tokens: ``(B, S)`` token ids; for training, ``prepend_blank(targets)`` with ``S = U+1``.
              Padding positions may hold any valid id: outputs at position s depend only on
              tokens[:, :s+1], so padded tail positions never affect real ones.
            state: LSTM ``(h, c)``, each ``(num_layers, B, hidden_dim)``; ``None`` starts from zeros.

        Returns:
            ``(out, state)`` with ``out: (B, S, hidden_dim)``.
        """
        x = self.dropout(self.embedding(tokens))
        out, state = self.lstm(x, state)
        return out, state

    def step(self, last_tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """One decoding step. ``last_tokens: (B,)`` -> ``(out: (B, hidden_dim), state)``.

        The same function as :meth:`forward` on a length-1 sequence (to float rounding), written
        out as LSTM cells: ``nn.LSTM`` on one time step pays a fixed cost (oneDNN re-lays out the
        weights per call) of about 0.2 ms on CPU, twice the cells' own time for the tens of rows a
        batched search steps at once (``BENCHMARKS.md``, decoding).
        """
        x = self.dropout(self.embedding(last_tokens))  # (B, E)
        batch = last_tokens.shape[0]
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_dim)
            state = (zeros, zeros)
        h, c = state
        hs, cs = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.lstm.dropout > 0:
                x = F.dropout(x, self.lstm.dropout, self.training)
            gates = F.linear(x, getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"bias_ih_l{layer}", None))
            gates = gates + F.linear(h[layer], getattr(self.lstm, f"weight_hh_l{layer}"),
                                     getattr(self.lstm, f"bias_hh_l{layer}", None))
            i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order: input, forget, cell, output
            c_new = torch.sigmoid(f) * c[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)
            hs.append(x)
            cs.append(c_new)
        return x, (torch.stack(hs), torch.stack(cs))


class StatelessPredictor(nn.Module):
    """Embedding + a short causal convolution over the last ``context_size`` tokens (icefall's
    "stateless" transducer decoder, Ghodsi et al. 2020).

    It sees only a fixed window of previous tokens, so unlike an LSTM it cannot memorise whole
    training transcripts; on small corpora that keeps the joiner relying on the encoder.

    Its decoding state mimics the LSTM's ``(h, c)`` so the same searches work: ``h`` holds the
    last ``context_size - 1`` tokens as int64 ``(1, B, context_size - 1)`` and ``c`` is an empty
    float ``(1, B, 0)``.

    Args:
        vocab_size: number of output units including blank.
        embed_dim: token embedding width (= output width).
        context_size: tokens seen per position, the current one included (icefall: 2).
        dropout: dropout on the embedding.
        blank_id: id of blank, the start symbol and the left padding of the context.
    """

    def __init__(
        self, vocab_size: int, embed_dim: int = 256, context_size: int = 2, dropout: float = 0.1, blank_id: int = 0
    ) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        groups = embed_dim // 4 if embed_dim % 4 == 0 else 1
        self.conv = (
            nn.Conv1d(embed_dim, embed_dim, context_size, groups=groups, bias=False) if context_size > 1 else None
        )
        self.output_dim = embed_dim

    def prepend_blank(self, targets: Tensor) -> Tensor:
        """``targets: (B, U)`` -> ``(B, U+1)`` with blank (the start symbol) in front."""
        return prepend_blank(targets, self.blank_id)

    def forward(self, tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """``tokens: (B, S)`` -> ``(out (B, S, embed_dim), state)``; position s reads tokens
        ``s - context_size + 1 .. s`` (earlier ones from ``state``, blank before the start)."""
        b = tokens.size(0)
        k = self.context_size - 1
        if state is None:
            prev = torch.full((b, k), self.blank_id, dtype=tokens.dtype, device=tokens.device)
        else:
            prev = state[0][0].to(tokens.dtype)
        full = torch.cat([prev, tokens], dim=1)  # (B, k + S)
        x = self.dropout(self.embedding(full))
        if self.conv is not None:
            x = torch.relu(self.conv(x.transpose(1, 2)).transpose(1, 2))  # (B, S, E)
        else:
            x = torch.relu(x)
        new_state = (full[:, full.size(1) - k :].unsqueeze(0), x.new_zeros(1, b, 0))
        return x, new_state

    def step(self, last_tokens: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """One decoding step. ``last_tokens: (B,)`` -> ``(out: (B, embed_dim), state)``."""
        out, state = self.forward(last_tokens.unsqueeze(1), state)
        return out.squeeze(1), state


def build_predictor(
    kind: str, vocab_size: int, embed_dim: int, hidden_dim: int, num_layers: int, dropout: float,
    context_size: int = 2, blank_id: int = 0,
) -> "Predictor | StatelessPredictor":
    """``kind="lstm"``: :class:`Predictor`; ``"stateless"``: :class:`StatelessPredictor` (its width is
    ``embed_dim``; ``hidden_dim``/``num_layers`` are unused)."""
    if kind == "lstm":
        return Predictor(vocab_size, embed_dim, hidden_dim, num_layers, dropout, blank_id=blank_id)
    if kind == "stateless":
        return StatelessPredictor(vocab_size, embed_dim, context_size, dropout, blank_id=blank_id)
    raise ValueError(f"unknown predictor kind {kind!r}; choose 'lstm' or 'stateless'")


class Joiner(nn.Module):
    """``logits = out(act(enc_proj(enc) + pred_proj(pred)))``.

    Args:
        encoder_dim, predictor_dim: input widths.
        joint_dim: width of the joint space.
        vocab_size: output units including blank.
        activation: ``tanh`` (default), ``relu``, ``swish``/``silu`` or ``gelu``.
    """

    def __init__(
        self, encoder_dim: int, predictor_dim: int, joint_dim: int, vocab_size: int, activation: str = "tanh"
    ) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joint_dim)
        self.predictor_proj = nn.Linear(predictor_dim, joint_dim)
        self.activation = _activation(activation)
        self.output = nn.Linear(joint_dim, vocab_size)
        self.vocab_size = vocab_size

    def project_encoder(self, enc: Tensor) -> Tensor:
        """``(..., encoder_dim)`` -> ``(..., joint_dim)``."""
        return self.encoder_proj(enc)

    def project_predictor(self, pred: Tensor) -> Tensor:
        """``(..., predictor_dim)`` -> ``(..., joint_dim)``."""
        return self.predictor_proj(pred)

    def join(self, enc_proj: Tensor, pred_proj: Tensor) -> Tensor:
        """Join already-projected inputs that broadcast against each other, e.g.
        ``(B, T, 1, J)`` and ``(B, 1, U+1, J)`` -> logits ``(B, T, U+1, V)``."""
        return self.output(self.activation(enc_proj + pred_proj))

    def forward(self, enc: Tensor, pred: Tensor) -> Tensor:
        """``enc: (B, T, 1, encoder_dim)``, ``pred: (B, 1, U+1, predictor_dim)`` -> ``(B, T, U+1, V)``
        (any broadcastable shapes work)."""
        return self.join(self.project_encoder(enc), self.project_predictor(pred))
