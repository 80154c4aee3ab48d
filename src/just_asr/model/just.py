"""The JUST model: w2v-BERT encoder (contrastive + MLM stacks) with an RNN-T branch.

Data flow of ``JustModel.forward`` (shapes: B utterances, T fbank frames, T' latent frames)::

    features (B, T, 80) --frontend--> latent x (B, T', D)          (clean features)
      x --GumbelQuantizer--> code vectors (B, T', code_dim), ids (B, T', G), probs (G, V)
      x --span mask, masked frames <- noise--> contrastive stack --> hidden (B, T', D)
          hidden --context_proj--> context (B, T', final_dim);  codes --target_proj--> targets
          hidden --MLM stack--> top (B, T', D) --mlm_head--> logits (B, T', G, V)
    RNN-T (rows with text only):
      rnnt_branch="masked":   enc = top (the same, masked pass)
      rnnt_branch="unmasked": enc = encode(features) (a second, unmasked forward)
      joiner(enc, predictor(blank + targets)) --> logits (B_text, T', U+1, V), float32

``supervised_features`` (e.g. a SpecAugmented copy) replaces ``features`` as the input of the
supervised pass: the masked pass when ``rnnt_branch="masked"`` (and the RNN-T runs), the unmasked
pass otherwise; the quantiser always reads the clean ``features``.

Switches (``cfg.loss``): ``ssl == 0`` runs no masking, quantiser, contrastive projections or MLM
head (one unmasked encoder pass feeds the RNN-T); ``rnnt == 0`` runs neither predictor nor joiner
(pure w2v-BERT). Rows with ``has_text`` false never reach the predictor/joiner, so they contribute
only to the self-supervised terms.

``JustOutput.compute_loss()`` turns the stored tensors into float32 loss terms outside autocast::

    total = w_rnnt * L_rnnt + beta * (L_contrastive + alpha * L_diversity + gamma * L_mlm)

Example::

    >>> import torch
    >>> from just_asr.model.config import ModelConfig
    >>> cfg = ModelConfig.from_dict({
    ...     "frontend": {"conv_channels": 4}, "encoder": {"d_model": 16, "num_heads": 2, "ffn_dim": 32},
    ...     "quantizer": {"codebook_size": 8}, "contrastive": {"num_layers": 1, "final_dim": 8,
    ...     "num_distractors": 3}, "mlm": {"num_layers": 1},
    ...     "decoder": {"embed_dim": 8, "hidden_dim": 8, "joint_dim": 8}})
    >>> model = JustModel(cfg, vocab_size=10)
    >>> out = model(torch.randn(2, 60, 80), torch.tensor([60, 45]), torch.tensor([[3, 4], [5, 0]]),
    ...             torch.tensor([2, 1]), torch.tensor([True, True]))
    >>> loss = out.compute_loss()
    >>> sorted(loss.terms)
    ['contrastive', 'diversity', 'mlm', 'rnnt']
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from just_asr.losses import codebook_perplexity, contrastive_loss, diversity_loss, mlm_loss, rnnt_loss

from .config import LossWeights, ModelConfig, validate_config
from .conformer import ConformerStack
from .frontend import build_frontend
from .masking import SpanMasker
from .quantizer import GumbelQuantizer
from .transducer import Joiner, Predictor


@dataclass
class LossOutput:
    """``total``: float32 scalar to minimise; ``terms``: each computed term (float32 scalars, before
    weighting); ``metrics``: detached float32 scalars for logging."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class JustOutput:
    """Everything the loss terms need; fields of a branch that did not run are ``None``.

    Attributes:
        latent_lens: int64 ``(B,)`` valid latent frames T'_b.
        mask: bool ``(B, T')`` masked frames (self-supervised branch).
        context: ``(B, T', final_dim)`` projected contrastive-stack output.
        quantized: ``(B, T', final_dim)`` projected quantiser vectors (contrastive targets).
        mlm_logits: ``(B, T', G, V)`` MLM head output.
        code_ids: int64 ``(B, T', G)`` quantiser ids (MLM targets).
        code_probs: float32 ``(G, V)`` softmax averaged over valid frames (diversity, perplexity).
        code_usage: float32 scalar, fraction of codes chosen in this batch.
        rnnt_rows: int64 ``(B_text,)`` batch rows that feed the RNN-T (rows with text).
        rnnt_logits: float32 ``(B_text, T'_max, U_max+1, V)`` joiner output.
        rnnt_logit_lens: int64 ``(B_text,)``.
        rnnt_targets: int64 ``(B_text, U_max)``.
        rnnt_target_lens: int64 ``(B_text,)``.
        encoder_out: ``(B_text, T'_max, D)`` encoder output fed to the joiner.
        predictor_out: ``(B_text, U_max+1, P)`` predictor output fed to the joiner.
        weights: loss weights and RNN-T reduction.
        num_distractors, kappa: contrastive-loss settings.
        gumbel_temperature: quantiser temperature used in this forward.
    """

    latent_lens: Tensor
    weights: LossWeights
    num_distractors: int
    kappa: float
    gumbel_temperature: float
    mask: Tensor | None = None
    context: Tensor | None = None
    quantized: Tensor | None = None
    mlm_logits: Tensor | None = None
    code_ids: Tensor | None = None
    code_probs: Tensor | None = None
    code_usage: Tensor | None = None
    rnnt_rows: Tensor | None = None
    rnnt_logits: Tensor | None = None
    rnnt_logit_lens: Tensor | None = None
    rnnt_targets: Tensor | None = None
    rnnt_target_lens: Tensor | None = None
    encoder_out: Tensor | None = None
    predictor_out: Tensor | None = None

    @property
    def has_ssl(self) -> bool:
        return self.context is not None

    @property
    def has_rnnt(self) -> bool:
        return self.rnnt_logits is not None

    def compute_loss(self, generator: torch.Generator | None = None) -> LossOutput:
        """Compute every available term in float32 with autocast disabled.

        Terms (unweighted) and reductions:

        * ``rnnt``: per-utterance negative log-likelihoods of the transcribed rows, reduced per
          ``weights.rnnt_reduction``: ``"token"`` sums them and divides by the rows' total target
          tokens (at least 1); ``"utterance"`` averages them over the transcribed rows. Present
          (as 0.0) whenever the RNN-T is on, even if no row had text.
        * ``contrastive``: mean over masked frames (see ``just_asr.losses``).
        * ``diversity``: of the batch-averaged code distribution ``(G, V)``.
        * ``mlm``: cross-entropy averaged over masked frames (and codebooks).

        Args:
            generator: RNG for the distractor sampling (reproducible losses).
        """
        device = self.latent_lens.device
        w = self.weights
        terms: dict[str, Tensor] = {}
        metrics: dict[str, Tensor] = {}
        total = torch.zeros((), device=device, dtype=torch.float32)
        with torch.autocast(device_type=device.type, enabled=False):
            if w.rnnt > 0:
                rnnt = self._rnnt_term(metrics)
                terms["rnnt"] = rnnt
                total = total + w.rnnt * rnnt
            if self.has_ssl:
                assert self.mask is not None and self.quantized is not None and self.mlm_logits is not None
                assert self.code_ids is not None and self.code_probs is not None and self.context is not None
                contrastive, c_acc = contrastive_loss(
                    self.context.float(), self.quantized.float(), self.mask, self.latent_lens,
                    num_distractors=self.num_distractors, kappa=self.kappa, generator=generator,
                )
                diversity = diversity_loss(self.code_probs.float())
                mlm, m_acc = mlm_loss(self.mlm_logits.float(), self.code_ids, self.mask)
                terms["contrastive"] = contrastive
                terms["diversity"] = diversity
                terms["mlm"] = mlm
                total = total + w.ssl * (contrastive + w.diversity * diversity + w.mlm * mlm)
                metrics["contrastive_accuracy"] = c_acc.detach().float()
                metrics["mlm_accuracy"] = m_acc.detach().float()
                metrics["codebook_perplexity"] = codebook_perplexity(self.code_probs.detach().float()).float()
                if self.code_usage is not None:
                    metrics["code_usage"] = self.code_usage.detach().float()
                n_valid = self.latent_lens.sum().clamp(min=1).float()
                metrics["masked_fraction"] = self.mask.sum().float() / n_valid
                metrics["gumbel_temperature"] = torch.tensor(self.gumbel_temperature, device=device)
        return LossOutput(total=total, terms=terms, metrics=metrics)

    def _rnnt_term(self, metrics: dict[str, Tensor]) -> Tensor:
        device = self.latent_lens.device
        if not self.has_rnnt:
            metrics["rnnt_utterances"] = torch.zeros((), device=device)
            metrics["rnnt_tokens"] = torch.zeros((), device=device)
            return torch.zeros((), device=device, dtype=torch.float32)
        assert self.rnnt_targets is not None and self.rnnt_logit_lens is not None
        assert self.rnnt_target_lens is not None and self.rnnt_logits is not None
        per_utt = rnnt_loss(
            self.rnnt_logits.float(), self.rnnt_targets.to(torch.int32), self.rnnt_logit_lens.to(torch.int32),
            self.rnnt_target_lens.to(torch.int32), blank=0, reduction="none",
        )  # (B_text,)
        tokens = self.rnnt_target_lens.sum()
        metrics["rnnt_utterances"] = torch.tensor(float(per_utt.numel()), device=device)
        metrics["rnnt_tokens"] = tokens.detach().float()
        metrics["rnnt_per_utterance"] = per_utt.detach().mean()
        if self.weights.rnnt_reduction == "token":
            return per_utt.sum() / tokens.clamp(min=1).float()
        return per_utt.mean()


def _check_batch(
    features: Tensor, feature_lens: Tensor, targets: Tensor, target_lens: Tensor, has_text: Tensor
) -> None:
    if features.dim() != 3:
        raise ValueError(f"JustModel: features must be (B, T, F), got {tuple(features.shape)}")
    b = features.size(0)
    for name, t, dim in (("feature_lens", feature_lens, 1), ("targets", targets, 2),
                         ("target_lens", target_lens, 1), ("has_text", has_text, 1)):
        if t.dim() != dim or t.size(0) != b:
            raise ValueError(f"JustModel: {name} must have {dim} dims and batch size {b}, got {tuple(t.shape)}")
    if has_text.dtype != torch.bool:
        raise ValueError(f"JustModel: has_text must be a bool tensor, got {has_text.dtype}")
    if target_lens.numel() and int(target_lens.max()) > targets.size(1):
        raise ValueError(f"JustModel: target_lens max {int(target_lens.max())} exceeds targets width {targets.size(1)}")


class JustModel(nn.Module):
    """JUST = w2v-BERT encoder + RNN-T decoder (see the module docstring).

    Args:
        cfg: model configuration.
        vocab_size: output units including blank (id 0).

    Submodules: ``frontend``, ``contrastive_stack``, ``mlm_stack``, ``masker``, ``quantizer``,
    ``context_proj``, ``target_proj``, ``mlm_head``, ``predictor``, ``joiner``.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (blank + at least one token), got {vocab_size}")
        validate_config(cfg)  # configs built by jsonargparse skip ModelConfig.from_dict's checks
        self.cfg = cfg
        self.vocab_size = vocab_size
        e, q = cfg.encoder, cfg.quantizer
        d = e.d_model
        code_dim = q.code_dim if q.code_dim is not None else d
        self.frontend = build_frontend(cfg.frontend, d)
        self.contrastive_stack = ConformerStack(e, cfg.contrastive.num_layers)
        self.mlm_stack = ConformerStack(e, cfg.mlm.num_layers)
        self.masker = SpanMasker(cfg.masking, d)
        self.quantizer = GumbelQuantizer(d, q.num_codebooks, q.codebook_size, code_dim, q.temperature_start)
        self.context_proj = nn.Linear(d, cfg.contrastive.final_dim)
        self.target_proj = nn.Linear(code_dim, cfg.contrastive.final_dim)
        self.mlm_head = nn.Linear(d, q.num_codebooks * q.codebook_size)
        dc = cfg.decoder
        self.predictor = Predictor(vocab_size, dc.embed_dim, dc.hidden_dim, dc.num_layers, dc.dropout, blank_id=0)
        self.joiner = Joiner(d, dc.hidden_dim, dc.joint_dim, vocab_size, dc.joiner_activation)

    # ------------------------------------------------------------------ public helpers

    def set_gumbel_temperature(self, tau: float) -> None:
        """Set the quantiser's Gumbel temperature (see ``quantizer.gumbel_temperature``)."""
        self.quantizer.set_temperature(tau)

    def component_parameters(self) -> dict[str, int]:
        """Parameter counts per component plus ``total``."""
        groups = {
            "frontend": [self.frontend],
            "contrastive_stack": [self.contrastive_stack],
            "mlm_stack": [self.mlm_stack],
            "quantizer": [self.quantizer],
            "heads": [self.context_proj, self.target_proj, self.mlm_head, self.masker],
            "predictor": [self.predictor],
            "joiner": [self.joiner],
        }
        out = {name: sum(p.numel() for m in mods for p in m.parameters()) for name, mods in groups.items()}
        out["total"] = sum(p.numel() for p in self.parameters())
        return out

    def encode(self, features: Tensor, feature_lens: Tensor) -> tuple[Tensor, Tensor]:
        """Inference path (no masking): ``features (B, T, F)``, ``feature_lens (B,)`` ->
        ``(enc (B, T', D), enc_lens (B,))``, the MLM stack's output that feeds the joiner."""
        x, lens = self.frontend(features, feature_lens)
        x = self.contrastive_stack(x, lens)
        return self.mlm_stack(x, lens), lens

    # ------------------------------------------------------------------ training forward

    def forward(
        self,
        features: Tensor,
        feature_lens: Tensor,
        targets: Tensor,
        target_lens: Tensor,
        has_text: Tensor,
        supervised_features: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> JustOutput:
        """Run the branches the loss weights ask for.

        Args:
            features: float ``(B, T, F)`` clean fbank, zero-padded.
            feature_lens: int64 ``(B,)`` valid frames.
            targets: int64 ``(B, U)`` token ids padded with 0 (blank).
            target_lens: int64 ``(B,)`` tokens per row (0 without text).
            has_text: bool ``(B,)`` rows with a transcript.
            supervised_features: optional ``(B, T, F)`` (e.g. SpecAugmented) input of the supervised
                pass; ``None`` uses ``features``.
            generator: optional RNG for masks, mask noise and Gumbel noise (reproducibility; must
                be on the features' device). Dropout always uses the global RNG.

        Returns:
            ``JustOutput``; call ``.compute_loss()``.
        """
        _check_batch(features, feature_lens, targets, target_lens, has_text)
        if supervised_features is not None and supervised_features.shape != features.shape:
            raise ValueError(
                f"JustModel: supervised_features shape {tuple(supervised_features.shape)} differs from "
                f"features shape {tuple(features.shape)}"
            )
        cfg, w = self.cfg, self.cfg.loss
        run_ssl = w.ssl > 0
        rows = torch.nonzero(has_text, as_tuple=False).squeeze(1)
        run_rnnt = w.rnnt > 0 and rows.numel() > 0
        sup = supervised_features if supervised_features is not None else features

        latent_lens = self.frontend.output_lengths(feature_lens)
        out = JustOutput(
            latent_lens=latent_lens, weights=w, num_distractors=cfg.contrastive.num_distractors,
            kappa=cfg.contrastive.kappa, gumbel_temperature=self.quantizer.temperature,
        )
        enc: Tensor | None = None
        enc_lens: Tensor | None = None
        if run_ssl:
            latent, lens = self.frontend(features, feature_lens)  # clean latents for the quantiser
            qout = self.quantizer(latent, lens, generator)
            if run_rnnt and cfg.rnnt_branch == "masked" and supervised_features is not None:
                pass_in, _ = self.frontend(supervised_features, feature_lens)
            else:
                pass_in = latent
            masked_in, mask = self.masker(pass_in, lens, generator)
            hidden = self.contrastive_stack(masked_in, lens)
            top = self.mlm_stack(hidden, lens)
            b, t, _ = top.shape
            out.mask = mask
            out.context = self.context_proj(hidden)
            out.quantized = self.target_proj(qout.quantized)
            out.mlm_logits = self.mlm_head(top).view(b, t, self.quantizer.num_codebooks, -1)
            out.code_ids = qout.ids
            out.code_probs = qout.probs
            out.code_usage = qout.code_usage
            if run_rnnt and cfg.rnnt_branch == "masked":
                enc_lens = lens.index_select(0, rows)
                enc = top.index_select(0, rows)[:, : int(enc_lens.max())]
        if run_rnnt:
            if enc is None:  # ssl off, or the unmasked branch: a plain encoder pass over text rows
                sub_lens = feature_lens.index_select(0, rows)
                sub = sup.index_select(0, rows)[:, : int(sub_lens.max())]
                enc, enc_lens = self.encode(sub, sub_lens)
            assert enc_lens is not None
            tl = target_lens.index_select(0, rows)
            tg = targets.index_select(0, rows)[:, : int(tl.max())]
            pred, _ = self.predictor(self.predictor.prepend_blank(tg))  # (B_text, U+1, P)
            jdtype = self.joiner.output.weight.dtype
            with torch.autocast(device_type=enc.device.type, enabled=False):
                logits = self.joiner(enc.to(jdtype).unsqueeze(2), pred.to(jdtype).unsqueeze(1))
            out.rnnt_rows = rows
            out.rnnt_logits = logits
            out.rnnt_logit_lens = enc_lens
            out.rnnt_targets = tg
            out.rnnt_target_lens = tl
            out.encoder_out = enc
            out.predictor_out = pred
        return out
