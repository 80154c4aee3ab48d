"""The LightningModule around :class:`just_asr.model.JustModel`.

One class serves every regime of the paper; the regime is the model's loss weights
(``arch.loss.rnnt`` / ``arch.loss.ssl``) plus, for the two fine-tuning regimes, ``init_from``:

=====================  ================  ===============  ==================================
regime                 ``loss.rnnt``     ``loss.ssl``     ``init_from``
=====================  ================  ===============  ==================================
supervised             1                 0                -
w2v-bert-pretrain      0                 1                -
finetune (2-stage)     1                 0                pretrained checkpoint / model dir
just (from scratch)    1                 beta             -
just-finetune          1                 beta             pretrained checkpoint / model dir
=====================  ================  ===============  ==================================

Training step: ``features``/``feature_lens``/``targets``/``target_lens``/``has_text`` from the batch
(see docs/architecture.md) go through ``JustModel.forward``; ``compute_loss()`` gives the float32
total (computed by the model outside autocast) and every term, each logged under ``train/``.
Validation decodes the dev cuts greedily and logs the WER per language (``dev/wer_<iso>``) and
their unweighted mean ``dev/wer_avg`` (the checkpoint monitor).

Randomness: when ``seed_per_step`` is set, the global RNGs are re-seeded from
``(seed, global_step, rank, micro-batch)`` before every training batch (as fairseq does), so that a
resumed run draws the same masks, Gumbel noise and dropout as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor

from just_asr.model.config import ModelConfig
from just_asr.train.averaging import load_lightning_checkpoint, strip_prefix
from just_asr.train.callbacks import queue_step_metric, step_metrics_due
from just_asr.train.optim import build_noam_scheduler, build_optimizer, param_groups

log = logging.getLogger(__name__)

#: fbank hop in seconds (10 ms), used to turn frame counts into audio seconds
FRAME_SHIFT_S = 0.01


@dataclass
class InitReport:
    """What ``init_from`` did: parameter names of the JustModel that were loaded, that kept their
    fresh initialisation (``new``), and source entries that were ``dropped`` (with the reason)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    def summary(self, max_names: int = 12) -> str:
        def names(xs: list[str]) -> str:
            shown = ", ".join(xs[:max_names])
            return shown + (f", ... (+{len(xs) - max_names})" if len(xs) > max_names else "")

        lines = [
            f"init_from {self.source}:",
            f"  loaded  {len(self.loaded)} tensors",
            f"  new     {len(self.new)} tensors (fresh initialisation): {names(self.new)}",
            f"  dropped {len(self.dropped)} tensors from the source: "
            + names([f"{k} ({why})" for k, why in self.dropped.items()]),
        ]
        return "\n".join(lines)


def read_source_weights(path: str | Path) -> dict[str, Tensor]:
    """The JustModel weights stored at ``path``: a model directory (``*.safetensors`` inside, as
    written by ``just_asr.inference.save_model_dir``), a ``.safetensors`` file, or a Lightning
    checkpoint (read with ``weights_only=True``). Errors name the path."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{p}: model directory has no *.safetensors weights")
        p = files[0]
    if not p.exists():
        raise FileNotFoundError(f"{p}: init_from source not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise ValueError(f"{p}: cannot read safetensors weights ({exc})") from exc
    return strip_prefix(load_lightning_checkpoint(p)["state_dict"])


def load_matching(
    model: torch.nn.Module, source: dict[str, Tensor], source_name: str, exclude: list[str] | tuple[str, ...] = ()
) -> InitReport:
    """Copy every tensor of ``source`` whose name and shape match one of ``model``'s state entries,
    except names starting with a prefix in ``exclude`` (e.g. ``["predictor.", "joiner."]`` to start
    the decoder fresh when the source never trained it).

    Returns the :class:`InitReport`; ``model`` keeps its own values for everything else."""
    own = model.state_dict()
    report = InitReport(source=source_name)
    take: dict[str, Tensor] = {}
    for k, v in source.items():
        if exclude and k.startswith(tuple(exclude)):
            report.dropped[k] = "excluded by init_exclude"
        elif k not in own:
            report.dropped[k] = "absent in model"
        elif tuple(v.shape) != tuple(own[k].shape):
            report.dropped[k] = f"shape {tuple(v.shape)} != {tuple(own[k].shape)}"
        else:
            take[k] = v
    report.loaded = sorted(take)
    report.new = sorted(k for k in own if k not in take)
    model.load_state_dict({**own, **take})
    return report


def _is_padding_duplicate(cut_id: str) -> bool:
    """True for the copies lhotse's distributed eval samplers add (``<id>_dup<k>``), which must
    not be scored twice."""
    head, sep, tail = str(cut_id).rpartition("_dup")
    return bool(sep) and bool(head) and tail.isdigit()


def _batch_info(batch: dict[str, Any]) -> dict[str, Any]:
    """What callbacks read of a training batch: its cut ids and seconds of audio."""
    return {"cut_ids": list(batch.get("cut_ids", [])),
            "audio_seconds": float(batch["feature_lens"].sum()) * FRAME_SHIFT_S}


class JustLightningModule(pl.LightningModule):
    """Train a :class:`JustModel` in any regime (see the module docstring).

    Args:
        arch: the model configuration (``configs/model/*.yaml`` under ``model: arch:``), including
          the loss weights that select the regime.
        tokenizer: path of the SentencePiece model (linked from ``data.tokenizer`` by the CLI); gives
          the vocabulary size and decodes dev hypotheses.
        vocab_size: output units incl. blank; only needed when ``tokenizer`` is not given.
        init_from: a model directory, ``.safetensors`` file or Lightning checkpoint whose matching
          weights initialise the model (the fine-tuning regimes); the report of loaded / new /
          dropped tensors is printed and kept in ``self.init_report``.
        init_exclude: parameter-name prefixes ``init_from`` must not load (they stay fresh).
        optimizer: ``adamw`` or ``adam``.
        lr: peak learning rate of the Noam schedule.
        decoder_lr: peak learning rate of the predictor and joiner (default: ``lr``).
        warmup_steps: warm-up length in optimiser steps.
        lr_schedule: ``noam`` (linear warm-up, then ``lr * sqrt(warmup/step)``), ``constant``
          (linear warm-up, then ``lr`` held) or ``wsd`` (warm-up, ``lr`` held, then a linear decay
          to 0 over the last ``lr_decay_fraction`` of ``trainer.max_steps``; for runs with a step
          budget such as the demo).
        lr_decay_fraction: the share of ``trainer.max_steps`` the ``wsd`` schedule decays over.
        betas, eps, weight_decay: optimiser settings (no decay on 1-D parameters).
        max_symbols_per_frame: greedy decoding limit for dev WER.
        seed: base of the per-step seeds.
        seed_per_step: re-seed the RNGs per training batch (exact resume).
        val_loss: also compute and log the training objective on dev batches.
    """

    def __init__(
        self,
        arch: ModelConfig | None = None,
        tokenizer: str | None = None,
        vocab_size: int | None = None,
        init_from: str | None = None,
        init_exclude: list[str] | None = None,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        decoder_lr: float | None = None,
        warmup_steps: int = 1000,
        lr_schedule: str = "noam",
        lr_decay_fraction: float = 0.3,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-9,
        weight_decay: float = 1e-3,
        max_symbols_per_frame: int = 3,
        seed: int = 0,
        seed_per_step: bool = True,
        val_loss: bool = True,
    ) -> None:
        super().__init__()
        from just_asr.model import JustModel

        if arch is None:
            arch = ModelConfig()
        elif isinstance(arch, dict):
            arch = ModelConfig.from_dict(arch, source="model.arch")
        self.arch = arch
        self.tokenizer_path = tokenizer
        self._tokenizer = None
        if tokenizer is not None:
            tok = self.tokenizer
            if vocab_size is not None and vocab_size != tok.vocab_size:
                raise ValueError(f"vocab_size={vocab_size} disagrees with tokenizer {tokenizer} ({tok.vocab_size})")
            vocab_size = tok.vocab_size
        if vocab_size is None:
            raise ValueError("JustLightningModule needs a tokenizer path (data.tokenizer) or model.vocab_size")
        self.vocab_size = int(vocab_size)
        self.blank_id = 0
        # hyper-parameters as plain containers, so checkpoints load with weights_only=True
        self.save_hyperparameters(ignore=["arch"])
        self.hparams["arch"] = arch.to_dict()
        self.hparams["vocab_size"] = self.vocab_size
        self.model = JustModel(arch, self.vocab_size)
        self.init_report: InitReport | None = None
        if init_from:
            self.init_report = load_matching(self.model, read_source_weights(init_from), str(init_from),
                                             exclude=tuple(init_exclude or ()))
            print(self.init_report.summary(), flush=True)
            log.info("%s", self.init_report.summary(max_names=10_000))
        # state shared with callbacks (see just_asr.train.callbacks)
        self._metric_values: dict[str, Tensor | float] = {}  # the last batch's, as the model gave them
        self._metric_floats: dict[str, float] | None = {}
        # step-level diagnostics of the current batch, logged at its end when due (callbacks.queue_step_metric)
        self.step_metric_queue: dict[str, tuple[Any, int]] = {}
        self.last_loss: Tensor | None = None
        self.last_batch_info: dict[str, Any] = {}
        # (global_step, total 2-norm of the gradients), set by NonFiniteGuard before clipping
        self.grad_norm_for_clipping: tuple[int, Tensor] | None = None
        self._dev_hyps: dict[str, list[str]] = {}
        self._dev_refs: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def tokenizer(self):
        if self._tokenizer is None and self.tokenizer_path is not None:
            from just_asr.data.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.tokenizer_path)
        return self._tokenizer

    def _seed_step(self, batch_idx: int) -> None:
        if not self.hparams.seed_per_step:
            return
        accumulate = max(1, int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1))
        micro = batch_idx % accumulate
        rank = int(getattr(self.trainer, "global_rank", 0) or 0)
        seed = (int(self.hparams.seed) * 1_000_003 + self.global_step * 7919 + rank * 104_729 + micro) % (2**31 - 1)
        torch.manual_seed(seed)

    def _forward_loss(self, batch: dict[str, Any]):
        out = self.model(
            batch["features"],
            batch["feature_lens"],
            batch["targets"],
            batch["target_lens"],
            batch["has_text"],
            supervised_features=batch.get("supervised_features"),
        )
        return out.compute_loss()

    @property
    def last_metrics(self) -> dict[str, float]:
        """The last training batch's metrics (``LossOutput.metrics``) as floats, converted on first
        read. On a GPU each conversion waits for the kernels queued so far, so ``training_step``
        does not read them: the first reader is a callback or the batch-end logging, after the
        backward pass and the optimiser step have been queued."""
        if self._metric_floats is None:
            self._metric_floats = {k: float(v) for k, v in self._metric_values.items()}
        return self._metric_floats

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._seed_step(batch_idx)
        # drives step-dependent parts of the objective (the pruned RNN-T's simple/pruned warm-up)
        self.model.set_step(self.global_step)
        # read before the forward pass is queued (on a GPU, float() waits for the queued kernels)
        self.last_batch_info = _batch_info(batch)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One step on ``batch`` (the data layer's dict). Returns the float32 total loss (the
        model's reduction: see ``LossWeights``); a non-finite total is handled by NonFiniteGuard.
        ``train/loss`` is logged here; the other values are queued and logged at the batch's end
        when Lightning will write them (``callbacks.step_metrics_due``)."""
        res = self._forward_loss(batch)
        total = res.total
        bsz = int(batch["features"].shape[0])
        self.last_loss = total.detach()
        self._metric_values, self._metric_floats = dict(res.metrics), None
        if self._trainer is None:  # called outside a Trainer: no on_train_batch_start
            self.last_batch_info = _batch_info(batch)
        self.log("train/loss", total.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=bsz)
        for name, value in res.terms.items():
            queue_step_metric(self, f"train/{name}", value.detach().float(), bsz)
        queue_step_metric(self, "train/transcribed_fraction", batch["has_text"].float().mean(), bsz)
        opt = self.trainer.optimizers[0] if self._trainer is not None and self.trainer.optimizers else None
        if opt is not None:
            for group in opt.param_groups:
                queue_step_metric(self, f"train/lr_{group.get('name', 'group')}", group["lr"])
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log this batch's queued diagnostics and its finite metrics when Lightning will write them.
        Runs after every callback's ``on_train_batch_end``, so a ``Timer`` that has just stopped the
        run makes this last step due."""
        queue, self.step_metric_queue = self.step_metric_queue, {}
        if not step_metrics_due(self.trainer):
            return
        for name, (value, size) in queue.items():
            self.log(name, value, on_step=True, on_epoch=False, batch_size=size)
        bsz = int(batch["features"].shape[0])
        for name, value in self.last_metrics.items():
            if math.isfinite(value):
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=bsz)

    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.model, hp.lr, hp.decoder_lr, hp.weight_decay)
        # the fused kernel (default on CPU/CUDA) unless a grad scaler (16-mixed) must unscale first:
        # Lightning only clips gradients of a fused optimiser by our configure_gradient_clipping
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        opt = build_optimizer(groups, hp.optimizer, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                              weight_decay=hp.weight_decay, fused=None if scaler is None else False)
        schedule = hp.get("lr_schedule", "noam")
        total = None
        if schedule == "wsd":
            total = self.trainer.max_steps if self._trainer is not None else -1
            if total <= 0:
                raise ValueError("model.lr_schedule: wsd decays to 0 at trainer.max_steps; set --trainer.max_steps")
        sched = build_noam_scheduler(opt, hp.warmup_steps, schedule, total_steps=total,
                                     decay_fraction=hp.get("lr_decay_fraction", 0.3))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip as Lightning would (``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``), with two
        differences. By norm, on one device or under DDP (whole gradients on every rank), the total
        norm that ``NonFiniteGuard`` computed for this step is reused, and the gradients are only
        multiplied when the factor is below 1 (``clip_grad_norm_`` multiplies by 1.0 otherwise): for
        float32 gradients (every mixed-precision run) this is the same result bit for bit; for bf16
        gradients the guard's norm is accumulated in float32 where ``clip_grad_norm_`` takes
        per-tensor norms in bf16. Every other strategy (FSDP, DeepSpeed, XLA, subclasses) goes to
        Lightning, whose plugins know how to clip it or refuse to. And Lightning refuses to clip for a fused
        optimiser under its mixed precision plugin, in case the optimiser unscales fp16 gradients
        inside ``step``; fused is only chosen without a grad scaler (see ``configure_optimizers``),
        so the gradients are already true-scale here and are clipped directly."""
        if not gradient_clip_val:
            return
        # Lightning passes its GradClipAlgorithmType enum (str(...) of which is not its value)
        algorithm = str(getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm) or "norm").lower()
        cached, self.grad_norm_for_clipping = self.grad_norm_for_clipping, None
        if (algorithm == "norm" and cached is not None and cached[0] == self.trainer.global_step
                and type(self.trainer.strategy) in (SingleDeviceStrategy, DDPStrategy)):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            factor = gradient_clip_val / (cached[1] + 1e-6)  # clip_grad_norm_'s coefficient, float32
            if grads and bool(factor < 1.0):
                torch._foreach_mul_(grads, factor.to(grads[0].device))
            return
        if not optimizer.defaults.get("fused"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        plugin = self.trainer.precision_plugin  # its by-norm / by-value clipping, minus the fused refusal
        if algorithm == "norm":
            plugin.clip_grad_by_norm(optimizer, gradient_clip_val)
        elif algorithm == "value":
            plugin.clip_grad_by_value(optimizer, gradient_clip_val)
        else:
            raise ValueError(f"unknown gradient_clip_algorithm {gradient_clip_algorithm!r}; use 'norm' or 'value'")

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._dev_hyps, self._dev_refs = {}, {}

    def decode_batch(self, features: Tensor, feature_lens: Tensor) -> list[list[int]]:
        """Greedy RNN-T decoding. ``features: (B, T, 80)``, ``feature_lens: (B,)`` -> token ids per row."""
        from just_asr.decode.greedy import greedy_search

        enc, enc_lens = self.model.encode(features, feature_lens)
        res = greedy_search(self.model.predictor, self.model.joiner, enc.float(), enc_lens, blank_id=self.blank_id,
                            max_symbols_per_frame=self.hparams.max_symbols_per_frame)
        return res.tokens

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        bsz = int(batch["features"].shape[0])
        if self.hparams.val_loss:
            res = self._forward_loss(batch)
            if torch.isfinite(res.total):
                self.log("dev/loss", res.total, on_step=False, on_epoch=True, batch_size=bsz, sync_dist=True)
            for name, value in res.terms.items():
                self.log(f"dev/{name}", value.float(), on_step=False, on_epoch=True, batch_size=bsz, sync_dist=True)
        if self.arch.loss.rnnt <= 0 or self.tokenizer is None:
            return  # self-supervised only: no decoder to score
        tokens = self.decode_batch(batch["features"], batch["feature_lens"])
        cut_ids = batch.get("cut_ids") or [""] * len(tokens)
        for toks, lang, ref, has, cid in zip(tokens, batch["langs"], batch["texts"], batch["has_text"].tolist(), cut_ids):
            if not has or _is_padding_duplicate(cid):
                continue  # DDP's eval sampler repeats a few cuts ("<id>_dup<k>") to even out ranks
            self._dev_hyps.setdefault(lang, []).append(self.tokenizer.decode(toks))
            self._dev_refs.setdefault(lang, []).append(ref)

    def on_validation_epoch_end(self) -> None:
        if self.arch.loss.rnnt <= 0:
            return
        hyps, refs = self._gather_dev()
        wers = dev_wer(hyps, refs)
        if not wers:
            return
        for lang, w in sorted(wers.items()):
            self.log(f"dev/wer_{lang}", w, on_step=False, on_epoch=True, batch_size=1)
        avg = sum(wers.values()) / len(wers)
        self.log("dev/wer_avg", avg, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        self.last_dev_wer = dict(wers, avg=avg)

    def _gather_dev(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        if self._trainer is None or self.trainer.world_size <= 1:
            return self._dev_hyps, self._dev_refs
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.trainer.world_size
        dist.all_gather_object(gathered, (self._dev_hyps, self._dev_refs))
        hyps: dict[str, list[str]] = {}
        refs: dict[str, list[str]] = {}
        for h, r in gathered:
            for k, v in h.items():
                hyps.setdefault(k, []).extend(v)
            for k, v in r.items():
                refs.setdefault(k, []).extend(v)
        return hyps, refs


def dev_wer(hyps: dict[str, list[str]], refs: dict[str, list[str]]) -> dict[str, float]:
    """Corpus WER in percent per language (word errors / reference words, jiwer's definition)."""
    import jiwer

    out = {}
    for lang in sorted(refs):
        r, h = refs[lang], hyps.get(lang, [])
        pairs = [(a, b) for a, b in zip(r, h) if a.strip()]
        if not pairs:
            continue
        out[lang] = 100.0 * jiwer.wer([a for a, _ in pairs], [b for _, b in pairs])
    return out
