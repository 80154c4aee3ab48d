"""The JUST model: w2v-BERT encoder (contrastive + MLM stacks) with an RNN-T branch.

Data flow of ``JustModel.forward`` (shapes: B utterances, T fbank frames, T' latent frames)::

    features (B, T, 80) --frontend--> latent x (B, T', D)          (clean features)
      x --GumbelQuantizer--> code vectors (B, T', code_dim), ids (B, T', G), probs (G, V)
      x --span mask, masked frames <- noise--> contrastive stack --> hidden (B, T', D)
          hidden --context_proj--> context (B, T', final_dim);  codes --target_proj--> targets
          hidden --MLM stack--> top (B, T', D) --mlm_head--> logits (B, T', G, V)
    RNN-T (rows with text only):
      rnnt_branch="masked":   enc = top (the same, masked pass)
      rnnt_branch="unmasked": enc = encode(features) (a second, unmasked forward of the text rows;
          it runs inside the masked pass's front-end call and, unless conv_norm is batch, its stack
          calls, concatenated along the batch: see ``JustModel.joint_stacks_active``)
      joiner(enc, predictor(blank + targets)) --> logits (B_text, T', U+1, V), float32
          (the joiner in float32, or under the step's autocast with decoder.joiner_precision: autocast)
    How the RNN-T term is computed (``cfg.decoder``):
      rnnt="full", fused_batch_size=None: the logits above are kept in ``JustOutput.rnnt_logits``
          and ``compute_loss`` runs the full fused loss on them;
      rnnt="full", fused_batch_size=n: joiner + full loss over sub-batches of n utterances inside
          ``forward`` (activations recomputed in backward: peak memory of one sub-batch);
      rnnt="pruned": k2's pruned RNN-T inside ``forward``: simple heads am (B_text, T', V) and
          lm (B_text, U+1, V) -> simple loss -> bounds -> joiner on (B_text, T', S, V) -> pruned loss;
          the per-utterance ``simple_scale * simple + pruned_scale * pruned`` (warm-up from
          ``set_step``) lands in ``JustOutput.rnnt_nll``.

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
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor, nn

from just_asr.losses import codebook_perplexity, contrastive_loss, diversity_loss, mlm_loss, rnnt_loss
from just_asr.losses.pruned_rnnt import pruned_loss_scales, pruned_rnnt_loss

from .config import LossWeights, ModelConfig, validate_config
from .conformer import ConformerStack
from .frontend import build_frontend
from .masking import SpanMasker
from .quantizer import GumbelQuantizer
from .transducer import Joiner, Predictor, StatelessPredictor, build_predictor


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
        rnnt_logits: float32 ``(B_text, T'_max, U_max+1, V)`` joiner output (``decoder.rnnt: full``
            without ``fused_batch_size`` only; otherwise the loss is computed in ``forward``).
            ``compute_loss`` lets the loss write its gradient into this tensor during backward, so
            after ``backward()`` it holds the gradient, not the logits.
        rnnt_nll: float32 ``(B_text,)`` per-utterance RNN-T loss computed in ``forward`` (pruned or
            sub-batched paths): for ``pruned``, ``simple_scale * simple + pruned_scale * pruned``.
        rnnt_simple_nll, rnnt_pruned_nll: float32 ``(B_text,)`` the two pruned-path terms, unscaled.
        rnnt_scales: ``(simple_scale, pruned_scale)`` used (pruned path).
        rnnt_logit_lens: int64 ``(B_text,)``.
        ctc_logits: ``(B_text, T'_max, V)`` auxiliary CTC head output (``loss.ctc > 0`` only).
        rnnt_targets: int64 ``(B_text, U_max)``.
        rnnt_target_lens: int64 ``(B_text,)``.
        encoder_out: ``(B_text, T'_max, D)`` encoder output fed to the joiner.
        predictor_out: ``(B_text, U_max+1, P)`` predictor output fed to the joiner.
        weights: loss weights and RNN-T reduction.
        num_distractors, kappa: contrastive-loss settings.
        gumbel_temperature: quantiser temperature used in this forward.
        rnnt_ramp: factor on the RNN-T weight at this step (``loss.rnnt_ramp_steps``; 1 after it).
        ssl_ramp: factor on beta at this step (``loss.ssl_start_step``/``ssl_ramp_steps``).
    """

    latent_lens: Tensor
    weights: LossWeights
    num_distractors: int
    kappa: float
    gumbel_temperature: float
    rnnt_ramp: float = 1.0
    ssl_ramp: float = 1.0
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
    rnnt_nll: Tensor | None = None
    rnnt_simple_nll: Tensor | None = None
    rnnt_pruned_nll: Tensor | None = None
    rnnt_scales: tuple[float, float] | None = None
    ctc_logits: Tensor | None = None

    @property
    def has_ssl(self) -> bool:
        return self.context is not None

    @property
    def has_rnnt(self) -> bool:
        return self.rnnt_logits is not None or self.rnnt_nll is not None

    def compute_loss(self, generator: torch.Generator | None = None) -> LossOutput:
        """Compute every available term in float32 with autocast disabled.

        Terms (unweighted) and reductions:

        * ``rnnt``: (weighted by ``weights.rnnt`` times ``rnnt_ramp``) per-utterance negative log-likelihoods of the transcribed rows, reduced per
          ``weights.rnnt_reduction``: ``"token"`` sums them and divides by the rows' total target
          tokens (at least 1); ``"utterance"`` averages them over the transcribed rows. Present
          (as 0.0) whenever the RNN-T is on, even if no row had text. With ``decoder.rnnt:
          pruned`` the per-utterance value is ``simple_scale * simple + pruned_scale * pruned`` and
          the metrics ``rnnt_simple``/``rnnt_pruned`` (same reduction, unscaled) and
          ``rnnt_simple_scale``/``rnnt_pruned_scale`` are added.
        * ``ctc`` (``loss.ctc > 0``): CTC negative log-likelihood of the auxiliary head on the same
          encoder output, same reduction as ``rnnt``; utterances CTC cannot align (more labels
          plus repeats than frames) count as 0 (``zero_infinity``).
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
                total = total + (w.rnnt * self.rnnt_ramp) * rnnt
                if self.rnnt_ramp < 1.0:
                    metrics["rnnt_ramp"] = torch.tensor(self.rnnt_ramp, device=device)
            if w.ctc > 0 and self.ctc_logits is not None:
                ctc = self._ctc_term()
                terms["ctc"] = ctc
                total = total + w.ctc * ctc
            if self.has_ssl:
                assert self.mask is not None and self.quantized is not None and self.mlm_logits is not None
                assert self.code_ids is not None and self.code_probs is not None and self.context is not None
                contrastive, c_acc = contrastive_loss(
                    self.context.float(), self.quantized.float(), self.mask, self.latent_lens,
                    num_distractors=self.num_distractors, kappa=self.kappa, generator=generator,
                    classes=code_classes(self.code_ids, self.mlm_logits.size(-1)),
                )
                diversity = diversity_loss(self.code_probs.float())
                mlm, m_acc = mlm_loss(self.mlm_logits.float(), self.code_ids, self.mask)
                terms["contrastive"] = contrastive
                terms["diversity"] = diversity
                terms["mlm"] = mlm
                total = total + (w.ssl * self.ssl_ramp) * (contrastive + w.diversity * diversity + w.mlm * mlm)
                if self.ssl_ramp < 1.0:
                    metrics["ssl_ramp"] = torch.tensor(self.ssl_ramp, device=device)
                metrics["contrastive_accuracy"] = c_acc.detach().float()
                metrics["mlm_accuracy"] = m_acc.detach().float()
                metrics["codebook_perplexity"] = codebook_perplexity(self.code_probs.detach().float()).float()
                if self.code_usage is not None:
                    metrics["code_usage"] = self.code_usage.detach().float()
                n_valid = self.latent_lens.sum().clamp(min=1).float()
                metrics["masked_fraction"] = self.mask.sum().float() / n_valid
                metrics["gumbel_temperature"] = torch.tensor(self.gumbel_temperature, device=device)
        return LossOutput(total=total, terms=terms, metrics=metrics)

    def _reduce(self, per_utt: Tensor) -> Tensor:
        """Reduce per-utterance values of the transcribed rows per ``weights.rnnt_reduction``."""
        assert self.rnnt_target_lens is not None
        if self.weights.rnnt_reduction == "token":
            return per_utt.sum() / self.rnnt_target_lens.sum().clamp(min=1).float()
        return per_utt.mean()

    def _ctc_term(self) -> Tensor:
        assert self.ctc_logits is not None and self.rnnt_targets is not None
        assert self.rnnt_logit_lens is not None and self.rnnt_target_lens is not None
        log_probs = self.ctc_logits.float().log_softmax(-1).transpose(0, 1)  # (T', B_text, V)
        per_utt = F.ctc_loss(
            log_probs, self.rnnt_targets, self.rnnt_logit_lens, self.rnnt_target_lens, blank=0,
            reduction="none", zero_infinity=True,
        )  # (B_text,)
        return self._reduce(per_utt)

    def _rnnt_term(self, metrics: dict[str, Tensor]) -> Tensor:
        device = self.latent_lens.device
        if not self.has_rnnt:
            metrics["rnnt_utterances"] = torch.zeros((), device=device)
            metrics["rnnt_tokens"] = torch.zeros((), device=device)
            return torch.zeros((), device=device, dtype=torch.float32)
        assert self.rnnt_targets is not None and self.rnnt_logit_lens is not None
        assert self.rnnt_target_lens is not None
        if self.rnnt_nll is not None:
            per_utt = self.rnnt_nll.float()
        else:
            assert self.rnnt_logits is not None
            # float32 logits come from the joiner's last nn.Linear or (joiner_precision: autocast) from
            # a cast of its bf16 output; neither backward reads its own output, so the loss may write
            # its gradient into the logits' storage: the extra peak memory of the loss then stays far
            # below one logits tensor. After backward, ``rnnt_logits`` holds that gradient, not the logits.
            per_utt = rnnt_loss(
                self.rnnt_logits, self.rnnt_targets.to(torch.int32), self.rnnt_logit_lens.to(torch.int32),
                self.rnnt_target_lens.to(torch.int32), blank=0, reduction="none",
                reuse_logits_for_grads=self.rnnt_logits.dtype == torch.float32,
            )  # (B_text,)
        tokens = self.rnnt_target_lens.sum()

        metrics["rnnt_utterances"] = torch.tensor(float(per_utt.numel()), device=device)
        metrics["rnnt_tokens"] = tokens.detach().float()
        metrics["rnnt_per_utterance"] = per_utt.detach().mean()
        if self.rnnt_simple_nll is not None and self.rnnt_pruned_nll is not None and self.rnnt_scales is not None:
            metrics["rnnt_simple"] = self._reduce(self.rnnt_simple_nll.detach().float())
            metrics["rnnt_pruned"] = self._reduce(self.rnnt_pruned_nll.detach().float())
            metrics["rnnt_simple_scale"] = torch.tensor(self.rnnt_scales[0], device=device)
            metrics["rnnt_pruned_scale"] = torch.tensor(self.rnnt_scales[1], device=device)
        return self._reduce(per_utt)


def code_classes(code_ids: Tensor, codebook_size: int) -> Tensor | None:
    """One int64 id per frame from the quantiser's ``(B, T', G)`` code ids (``sum_g id_g * V**g``):
    equal ids exactly where the code vectors are equal, which lets ``contrastive_loss`` exclude
    distractors identical to the target without searching for identical vectors. ``None`` when
    ``V**G`` would overflow int64 (the loss then searches)."""
    g = code_ids.size(-1)
    if codebook_size ** g >= 2**62:
        return None
    if g == 1:
        return code_ids[..., 0]
    base = codebook_size ** torch.arange(g, device=code_ids.device, dtype=torch.int64)
    return (code_ids.to(torch.int64) * base).sum(-1)


def scale_residual_branches(stack: nn.Module, scale: float) -> int:
    """Multiply the weights of the last layer of every residual branch of a conformer stack by
    ``scale`` (feed-forward ``output_dense``, attention ``linear_out``, conv module
    ``pointwise_conv2``); returns how many layers were scaled. See
    ``EncoderConfig.residual_init_scale``."""
    n = 0
    with torch.no_grad():
        for name, module in stack.named_modules():
            if name.rsplit(".", 1)[-1] in ("output_dense", "linear_out", "pointwise_conv2"):
                module.weight.mul_(scale)
                n += 1
    return n


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
    ``context_proj``, ``target_proj``, ``mlm_head``, ``predictor``, ``joiner``; with
    ``decoder.rnnt: pruned`` also ``simple_am_proj`` (D -> V) and ``simple_lm_proj``
    (predictor width -> V), the simple-loss heads (``None`` otherwise).

    ``set_step(step)`` tells the model the current optimiser step (the pruned loss's warm-up).
    ``joint_passes`` (default ``True``): a step's front-end calls, and (unless ``conv_norm: batch``)
    the unmasked branch's stack calls, run on their inputs concatenated along the batch (see
    :attr:`joint_stacks_active`).
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
        if e.residual_init_scale != 1.0:
            for stack in (self.contrastive_stack, self.mlm_stack):
                scale_residual_branches(stack, e.residual_init_scale)
        self.masker = SpanMasker(cfg.masking, d)
        self.quantizer = GumbelQuantizer(d, q.num_codebooks, q.codebook_size, code_dim, q.temperature_start)
        self.context_proj = nn.Linear(d, cfg.contrastive.final_dim)
        self.target_proj = nn.Linear(code_dim, cfg.contrastive.final_dim)
        self.mlm_head = nn.Linear(d, q.num_codebooks * q.codebook_size)
        dc = cfg.decoder
        self.predictor: Predictor | StatelessPredictor = build_predictor(
            dc.predictor, vocab_size, dc.embed_dim, dc.hidden_dim, dc.num_layers, dc.dropout, dc.context_size, blank_id=0
        )
        p_dim = self.predictor.output_dim
        self.joiner = Joiner(d, p_dim, dc.joint_dim, vocab_size, dc.joiner_activation)
        self.ctc_head: nn.Linear | None = nn.Linear(d, vocab_size) if cfg.loss.ctc > 0 else None
        self.simple_am_proj: nn.Linear | None = None
        self.simple_lm_proj: nn.Linear | None = None
        if dc.rnnt == "pruned":
            self.simple_am_proj = nn.Linear(d, vocab_size)
            self.simple_lm_proj = nn.Linear(p_dim, vocab_size)
        self.current_step = 0  # set by set_step(); drives the pruned-loss warm-up
        self.joint_passes = True

    @property
    def joint_stacks_active(self) -> bool:
        """Whether ``rnnt_branch="unmasked"`` runs its encoder pass in the masked pass's stack calls
        (the front-end calls are joined whenever ``joint_passes`` is on: no front end couples rows).

        A training step can run the front end up to twice and, with the self-supervised terms on and
        ``rnnt_branch="unmasked"``, both stacks twice (the masked pass over the batch, an unmasked
        pass over its text rows). Every layer but a batch norm treats each row on its own, so by
        default (``joint_passes = True``) the inputs of such calls are concatenated along the batch
        and each module is called once: the same values (up to float rounding) and gradients with
        half the calls on twice the rows (tiny preset, bf16, 2 CPU threads: 1.06-1.09x on the whole
        unmasked-branch step; ``BENCHMARKS.md``). The stacks stay apart with ``conv_norm: batch``
        (its statistics would mix the passes); ``joint_passes = False`` keeps every call apart.
        Dropout draws other (equally distributed) masks than separate calls.
        """
        return self.joint_passes and self.cfg.encoder.conv_norm != "batch"

    def _frontend_calls(self, inputs: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
        """The front end over each ``(features, lengths)`` of ``inputs`` -> ``[(latent, lens), ...]``,
        in one call over their concatenation unless ``joint_passes`` is off (it treats rows apart)."""
        if len(inputs) == 1 or not self.joint_passes:
            return [self.frontend(f, f_lens) for f, f_lens in inputs]
        latent, lens = self.frontend(torch.cat([f for f, _ in inputs]), torch.cat([f_lens for _, f_lens in inputs]))
        out, start = [], 0
        for f, _ in inputs:
            stop = start + f.size(0)
            out.append((latent[start:stop], lens[start:stop]))
            start = stop
        return out

    # ------------------------------------------------------------------ public helpers

    def set_gumbel_temperature(self, tau: float) -> None:
        """Set the quantiser's Gumbel temperature (see ``quantizer.gumbel_temperature``)."""
        self.quantizer.set_temperature(tau)

    def set_step(self, step: int) -> None:
        """Set the current optimiser step (global step); drives the pruned loss's warm-up of the
        simple/pruned scales (``decoder.rnnt_warmup_steps``). The training loop calls this once per
        step; it is a plain attribute, not saved in the state dict."""
        if step < 0:
            raise ValueError(f"set_step: step must be >= 0, got {step}")
        self.current_step = int(step)

    def rnnt_ramp(self) -> float:
        """Factor on the RNN-T weight at the current step: ``min(1, step / loss.rnnt_ramp_steps)``
        (1 when the ramp is off)."""
        n = self.cfg.loss.rnnt_ramp_steps
        return 1.0 if n <= 0 else min(1.0, self.current_step / n)

    def ssl_ramp(self) -> float:
        """Factor on beta at the current step: 0 before ``loss.ssl_start_step``, then a linear rise
        to 1 over ``loss.ssl_ramp_steps`` (1 at once when that is 0). While it is 0 the
        self-supervised branch is not run at all (no masking, quantiser or MLM head)."""
        w = self.cfg.loss
        done = self.current_step - w.ssl_start_step
        if done < 0:
            return 0.0
        return 1.0 if w.ssl_ramp_steps <= 0 else min(1.0, done / w.ssl_ramp_steps)

    def rnnt_loss_scales(self) -> tuple[float, float]:
        """``(simple_scale, pruned_scale)`` at the current step (``pruned`` path)."""
        dc = self.cfg.decoder
        return pruned_loss_scales(self.current_step, dc.rnnt_warmup_steps, dc.simple_loss_scale)

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
        if self.ctc_head is not None:
            groups["ctc_head"] = [self.ctc_head]
        if self.simple_am_proj is not None and self.simple_lm_proj is not None:
            groups["simple_heads"] = [self.simple_am_proj, self.simple_lm_proj]
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
        ssl_ramp = self.ssl_ramp()
        run_ssl = w.ssl > 0 and ssl_ramp > 0
        rows = torch.nonzero(has_text, as_tuple=False).squeeze(1)
        run_rnnt = w.rnnt > 0 and rows.numel() > 0
        sup = supervised_features if supervised_features is not None else features

        latent_lens = self.frontend.output_lengths(feature_lens)
        out = JustOutput(
            latent_lens=latent_lens, weights=w, num_distractors=cfg.contrastive.num_distractors,
            kappa=cfg.contrastive.kappa, gumbel_temperature=self.quantizer.temperature,
            rnnt_ramp=self.rnnt_ramp(), ssl_ramp=ssl_ramp,
        )
        enc: Tensor | None = None
        enc_lens: Tensor | None = None
        # with the SSL terms on, the unmasked branch's encoder pass over the text rows rides in the
        # masked pass's module calls (see ``joint_passes``): rows [0, n) are the batch, rows
        # [n, n + B_text) its text rows
        unmasked_pass = run_ssl and run_rnnt and cfg.rnnt_branch == "unmasked"
        masked_reads_sup = run_rnnt and cfg.rnnt_branch == "masked" and supervised_features is not None
        n = features.size(0)
        if run_ssl:
            inputs = [(features, feature_lens)]  # clean latents for the quantiser
            if masked_reads_sup:
                inputs.append((supervised_features, feature_lens))  # the masked pass's input
            if unmasked_pass:
                inputs.append((sup.index_select(0, rows), feature_lens.index_select(0, rows)))
            latents = self._frontend_calls(inputs)
            latent, lens = latents[0]
            if unmasked_pass:
                sup_latent, enc_lens = latents[-1]
            qout = self.quantizer(latent, lens, generator)
            masked_in, mask = self.masker(latents[1][0] if masked_reads_sup else latent, lens, generator)
            if unmasked_pass and self.joint_stacks_active:
                assert enc_lens is not None
                all_lens = torch.cat([lens, enc_lens])
                hidden_all = self.contrastive_stack(torch.cat([masked_in, sup_latent]), all_lens)
                top_all = self.mlm_stack(hidden_all, all_lens)
                hidden, top = hidden_all[:n], top_all[:n]
                enc = top_all[n:, : int(enc_lens.max())]
            else:
                hidden = self.contrastive_stack(masked_in, lens)
                top = self.mlm_stack(hidden, lens)
                if unmasked_pass:  # the stacks apart (batch norm, or joint_passes off)
                    assert enc_lens is not None
                    sup_latent = sup_latent[:, : int(enc_lens.max())]
                    enc = self.mlm_stack(self.contrastive_stack(sup_latent, enc_lens), enc_lens)
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
            if enc is None:  # ssl off: a plain encoder pass over the text rows
                sub_lens = feature_lens.index_select(0, rows)
                sub = sup.index_select(0, rows)[:, : int(sub_lens.max())]
                enc, enc_lens = self.encode(sub, sub_lens)
            assert enc_lens is not None
            tl = target_lens.index_select(0, rows)
            tg = targets.index_select(0, rows)[:, : int(tl.max())]
            pred, _ = self.predictor(self.predictor.prepend_blank(tg))  # (B_text, U+1, P)
            dc = cfg.decoder
            if dc.rnnt == "pruned":
                self._pruned_rnnt(out, enc, enc_lens, pred, tg, tl)
            elif dc.fused_batch_size is not None:
                out.rnnt_nll = sub_batched_rnnt_loss(self.joiner, enc, enc_lens, pred, tg, tl, dc.fused_batch_size,
                                                     precision=dc.joiner_precision)
            else:
                joiner_ctx = JoinerPrecision(self.joiner, enc.device.type, dc.joiner_precision)
                with joiner_ctx():
                    logits = self.joiner(joiner_ctx.inputs(enc).unsqueeze(2), joiner_ctx.inputs(pred).unsqueeze(1))
                out.rnnt_logits = joiner_ctx.logits(logits)
            if self.ctc_head is not None:
                with torch.autocast(device_type=enc.device.type, enabled=False):
                    out.ctc_logits = self.ctc_head(enc.to(self.ctc_head.weight.dtype))
            out.rnnt_rows = rows
            out.rnnt_logit_lens = enc_lens
            out.rnnt_targets = tg
            out.rnnt_target_lens = tl
            out.encoder_out = enc
            out.predictor_out = pred
        return out

    # ------------------------------------------------------------------ RNN-T loss paths

    def _pruned_rnnt(self, out: JustOutput, enc: Tensor, enc_lens: Tensor, pred: Tensor, targets: Tensor,
                     target_lens: Tensor) -> None:
        """k2's pruned RNN-T (autocast off; the losses compute in float32) on ``enc (B, T', D)``,
        ``pred (B, U+1, P)``;
        fills ``out.rnnt_nll`` (scaled sum), ``rnnt_simple_nll``, ``rnnt_pruned_nll`` (each ``(B,)``)
        and ``rnnt_scales``."""
        assert self.simple_am_proj is not None and self.simple_lm_proj is not None
        dc = self.cfg.decoder
        joiner_ctx = JoinerPrecision(self.joiner, enc.device.type, dc.joiner_precision)

        def join(e: Tensor, p: Tensor) -> Tensor:  # re-enters the step's autocast with "autocast"
            with joiner_ctx():
                return joiner_ctx.logits(self.joiner.join(e, p))

        # one float32 copy of each input feeds the simple heads and, unless mixed, the joiner: their
        # gradients then add up in float32 and reach the bf16 encoder/predictor rounded once
        enc_j, pred_j = enc.to(joiner_ctx.dtype), pred.to(joiner_ctx.dtype)  # float32 unless the model was cast
        with joiner_ctx():
            enc_p = self.joiner.project_encoder(enc if joiner_ctx.mixed else enc_j)
            pred_p = self.joiner.project_predictor(pred if joiner_ctx.mixed else pred_j)
        with torch.autocast(device_type=enc.device.type, enabled=False):
            res = pruned_rnnt_loss(
                enc_p, pred_p, join,
                self.simple_am_proj(enc_j), self.simple_lm_proj(pred_j), targets, enc_lens, target_lens,
                prune_range=dc.prune_range, blank=0, am_only_scale=dc.simple_am_only_scale,
                lm_only_scale=dc.simple_lm_only_scale, reduction="none",
                reuse_logits_for_grads=True,  # Joiner.join ends with nn.Linear: its output is not reused
                sub_batch=dc.fused_batch_size,
            )
        simple_scale, pruned_scale = self.rnnt_loss_scales()
        out.rnnt_simple_nll = res.simple
        out.rnnt_pruned_nll = res.pruned
        out.rnnt_scales = (simple_scale, pruned_scale)
        out.rnnt_nll = simple_scale * res.simple + pruned_scale * res.pruned


class JoinerPrecision:
    """Where the joiner runs (``decoder.joiner_precision``), captured when constructed.

    ``"float32"``: autocast off, inputs cast to the joiner's own dtype (float32 unless the whole
    model was cast). ``"autocast"``: the autocast state that is active at construction (the
    training step's, e.g. bf16 under ``bf16-mixed``), re-entered by every call of the instance, so
    it also holds inside regions that turned autocast off (the loss functions) and in activation
    recomputation; the logits are then cast up to at least float32 for the loss.

    Use ``with jp(): logits = joiner(jp.inputs(enc), jp.inputs(pred))``, then ``jp.logits(logits)``.
    """

    def __init__(self, joiner: Joiner, device_type: str, precision: str) -> None:
        if precision not in ("float32", "autocast"):
            raise ValueError(f"joiner_precision must be 'float32' or 'autocast', got {precision!r}")
        self.device_type = device_type
        self.dtype = joiner.output.weight.dtype
        self.mixed = precision == "autocast" and torch.is_autocast_enabled(device_type)
        self.autocast_dtype = torch.get_autocast_dtype(device_type) if self.mixed else None

    def __call__(self) -> torch.autocast:
        if self.mixed:
            return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)
        return torch.autocast(device_type=self.device_type, enabled=False)

    def inputs(self, x: Tensor) -> Tensor:
        """``x`` as the joiner should read it (autocast casts it itself when mixed)."""
        return x if self.mixed else x.to(self.dtype)

    def logits(self, logits: Tensor) -> Tensor:
        """Logits for the loss: at least float32 when mixed, as computed otherwise."""
        return logits.to(torch.promote_types(logits.dtype, torch.float32)) if self.mixed else logits


def sub_batched_rnnt_loss(
    joiner: Joiner, enc: Tensor, enc_lens: Tensor, pred: Tensor, targets: Tensor, target_lens: Tensor,
    sub_batch: int, precision: str = "float32",
) -> Tensor:
    """Full joiner + full RNN-T loss over sub-batches of ``sub_batch`` utterances (blank = 0).

    Args:
        joiner: the model's joiner.
        enc: ``(B, T', D)`` encoder output; enc_lens: int ``(B,)`` valid frames.
        pred: ``(B, U+1, P)`` predictor output on ``blank + targets``.
        targets: int ``(B, U)`` label ids; target_lens: int ``(B,)``.
        sub_batch: utterances per sub-batch (>= 1).
        precision: ``decoder.joiner_precision`` (see :class:`JoinerPrecision`).

    Returns:
        float32 ``(B,)`` per-utterance negative log-likelihoods (no reduction).

    Each sub-batch is trimmed to its own longest frame/label counts. When gradients are needed it
    runs under non-reentrant activation checkpointing, so its ``(b, T', U+1, V)`` logits (and the
    joiner's hidden activations) are freed after the forward and rebuilt one sub-batch at a time in
    backward: peak memory is that of one sub-batch. Values and gradients equal the whole-batch
    computation's (padding never contributes to either).
    """
    if sub_batch < 1:
        raise ValueError(f"sub_batched_rnnt_loss: sub_batch must be >= 1, got {sub_batch}")
    jp = JoinerPrecision(joiner, enc.device.type, precision)
    with jp():
        enc_p = joiner.project_encoder(jp.inputs(enc))  # (B, T', J)
        pred_p = joiner.project_predictor(jp.inputs(pred))  # (B, U+1, J)
    # each sub-batch joins under jp() and rnnt_loss turns autocast off itself
    costs = []
    for i in range(0, enc.size(0), sub_batch):
        t_sub = enc_lens[i : i + sub_batch]
        u_sub = target_lens[i : i + sub_batch]
        t_max, u_max = int(t_sub.max()), int(u_sub.max())
        e = enc_p[i : i + sub_batch, :t_max]
        p = pred_p[i : i + sub_batch, : u_max + 1]
        y = targets[i : i + sub_batch, :u_max].to(torch.int32)

        def joint_loss(e: Tensor, p: Tensor, y: Tensor = y, t_sub: Tensor = t_sub, u_sub: Tensor = u_sub) -> Tensor:
            with jp():
                logits = joiner.join(e.unsqueeze(2), p.unsqueeze(1))  # (b, T', U+1, V)
            return rnnt_loss(logits.float(), y, t_sub.to(torch.int32), u_sub.to(torch.int32), blank=0,
                             reduction="none")

        if torch.is_grad_enabled() and (e.requires_grad or p.requires_grad):
            costs.append(torch.utils.checkpoint.checkpoint(joint_loss, e, p, use_reentrant=False))
        else:
            costs.append(joint_loss(e, p))
    return torch.cat(costs)
