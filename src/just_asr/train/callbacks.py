"""Training callbacks: Gumbel temperature annealing, codebook health, the non-finite guard, an EMA of
the weights, throughput/gradient-norm logging, and the report of the input problems a run met.

They talk to :class:`just_asr.train.module.JustLightningModule` through three attributes it sets in
``training_step``: ``last_metrics`` (dict of floats from ``LossOutput.metrics``, converted when first
read), ``last_loss``
(the float32 total, a 0-d tensor) and ``last_batch_info`` (cut ids and audio seconds of the batch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from just_asr.train.averaging import EMA_CHECKPOINT_KEY, EMAWeights

log = logging.getLogger(__name__)


def step_metrics_due(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes step-level metrics to its loggers after this training batch: every
    ``trainer.log_every_n_steps`` optimiser steps (never when it is 0), when training stops early
    (``trainer.should_stop``, e.g. ``max_time``: known only once the callbacks' ``on_train_batch_end``
    has run), and on every step of a ``fast_dev_run``.

    A ``LightningModule.log`` call costs about 0.3 ms here (24 extra calls per step cost about 7 ms
    in a bare Lightning loop: ``BENCHMARKS.md``), and a JUST step has about 27 values, so the diagnostics are
    queued with :func:`queue_step_metric` and handed to Lightning only on the steps that are
    written. ``train/loss`` and ``train/audio_sec_per_sec`` (the progress bar's) are logged on every
    step. This is the condition Lightning's logger connector applies itself
    (``update_train_step_metrics``).
    """
    return bool(trainer.fast_dev_run) or trainer._logger_connector.should_update_logs


def queue_step_metric(pl_module: pl.LightningModule, name: str, value: Any, batch_size: int = 1) -> None:
    """A step-level diagnostic for this batch. :class:`JustLightningModule` keeps it in its
    ``step_metric_queue`` and logs the queue in its ``on_train_batch_end`` (after every callback's,
    so after ``Timer`` may have stopped the run) when :func:`step_metrics_due`; another module gets
    it logged now when due."""
    queue = getattr(pl_module, "step_metric_queue", None)
    if queue is not None:
        queue[name] = (value, batch_size)
    elif step_metrics_due(pl_module.trainer):
        pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=batch_size)


class GumbelTemperature(pl.Callback):
    """Set the quantiser's Gumbel-softmax temperature from the global step before every training batch:
    ``tau = max(end, start * decay**step)`` (wav2vec 2.0 / w2v-BERT: 2.0 -> 0.1 by 0.999995 per
    update). Logged as ``train/gumbel_temperature``.

    Args:
        start, end, decay: the annealing schedule; ``None`` takes the value from the model config
          (``arch.quantizer.temperature_start/_end/_decay``).
    """

    def __init__(self, start: float | None = None, end: float | None = None, decay: float | None = None) -> None:
        super().__init__()
        for name, v in (("start", start), ("end", end)):
            if v is not None and v <= 0:
                raise ValueError(f"Gumbel temperature {name} must be positive, got {v}")
        if decay is not None and not 0 < decay <= 1:
            raise ValueError(f"Gumbel temperature decay must be in (0, 1], got {decay}")
        self.start, self.end, self.decay = start, end, decay

    def schedule(self, pl_module: pl.LightningModule) -> tuple[float, float, float]:
        q = pl_module.arch.quantizer
        return (self.start if self.start is not None else q.temperature_start,
                self.end if self.end is not None else q.temperature_end,
                self.decay if self.decay is not None else q.temperature_decay)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        from just_asr.model.quantizer import gumbel_temperature

        if pl_module.arch.loss.ssl <= 0:
            return  # no quantiser in use
        start, end, decay = self.schedule(pl_module)
        tau = float(gumbel_temperature(trainer.global_step, start, end, decay))
        pl_module.model.set_gumbel_temperature(tau)
        queue_step_metric(pl_module, "train/gumbel_temperature", tau)


class CodebookHealth(pl.Callback):
    """Watch the quantiser: log codebook perplexity and the fraction of codes in use, and warn when the
    codebook collapses (used fraction below ``min_used_fraction`` for ``patience`` consecutive steps).

    The numbers come from the model's ``LossOutput.metrics`` (``codebook_perplexity``,
    ``code_usage``), which the module already logs; this callback keeps the collapse state and the
    count of collapsed steps (``train/codebook_collapsed_steps``). Steps without SSL terms are ignored.
    """

    def __init__(self, min_used_fraction: float = 0.05, patience: int = 50) -> None:
        super().__init__()
        self.min_used_fraction = min_used_fraction
        self.patience = patience
        self.low_run = 0
        self.collapsed_steps = 0
        self.warned = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        metrics = getattr(pl_module, "last_metrics", None) or {}
        used = metrics.get("code_usage")
        if used is None or not math.isfinite(used):
            return
        if used < self.min_used_fraction:
            self.low_run += 1
            self.collapsed_steps += 1
        else:
            if self.warned:
                log.warning("codebook recovered at step %d: %.1f%% of codes in use", trainer.global_step, 100 * used)
            self.low_run = 0
            self.warned = False
        if self.low_run >= self.patience and not self.warned:
            ppl = metrics.get("codebook_perplexity", float("nan"))
            msg = (
                f"codebook collapse at step {trainer.global_step}: only {100 * used:.1f}% of codes used "
                f"(perplexity {ppl:.1f}) for {self.low_run} steps in a row; consider a larger diversity "
                f"weight, a slower Gumbel temperature decay or a lower learning rate"
            )
            log.warning(msg)
            trainer.print(f"WARNING: {msg}")
            self.warned = True
        queue_step_metric(pl_module, "train/codebook_collapsed_steps", float(self.collapsed_steps))

    def state_dict(self) -> dict[str, Any]:
        return {"low_run": self.low_run, "collapsed_steps": self.collapsed_steps, "warned": self.warned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.low_run = int(state_dict.get("low_run", 0))
        self.collapsed_steps = int(state_dict.get("collapsed_steps", 0))
        self.warned = bool(state_dict.get("warned", False))


class NonFiniteGuard(pl.Callback):
    """Skip the optimiser update when the loss or any gradient is NaN/inf, count it, keep training.

    Runs in ``on_before_optimizer_step`` (after backward, before Lightning's gradient clipping): when
    any micro-batch since the last update had a non-finite loss, or a gradient is non-finite, all
    gradients are set to ``None`` so that Adam(W) leaves every parameter and its moments untouched.
    (The LR schedule and step counter still advance, identically on every rank under DDP, where the
    all-reduce spreads a NaN to all ranks.) The count is logged as ``train/nonfinite_skipped`` and the
    batch's cut ids go to the log. After ``max_consecutive`` skipped updates in a row, training stops
    with a ``RuntimeError``.

    Also logs the total gradient 2-norm before clipping as ``train/grad_norm`` (finite steps only),
    and leaves it on the module as ``grad_norm_for_clipping`` so that clipping by norm does not
    compute it a second time.
    """

    def __init__(self, max_consecutive: int = 20) -> None:
        super().__init__()
        if max_consecutive < 1:
            raise ValueError("max_consecutive must be >= 1")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._pending_cut_ids: list[str] = []
        self._pending_nonfinite_loss = False

    def note_batch(self, pl_module: pl.LightningModule) -> None:
        info = getattr(pl_module, "last_batch_info", None) or {}
        self._pending_cut_ids.extend(info.get("cut_ids", []))
        loss = getattr(pl_module, "last_loss", None)
        if loss is not None and not bool(torch.isfinite(loss).all()):
            self._pending_nonfinite_loss = True

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.note_batch(pl_module)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            norms = torch.stack(torch._foreach_norm([g.detach() for g in grads], 2, dtype=torch.float32))
            total = torch.linalg.vector_norm(norms)
            grads_finite = bool(torch.isfinite(total))
        else:
            total, grads_finite = torch.tensor(0.0), True
        bad = self._pending_nonfinite_loss or not grads_finite
        if bad:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self.skipped += 1
            self.consecutive += 1
            what = "loss" if self._pending_nonfinite_loss else "gradient"
            ids = self._pending_cut_ids
            shown = ", ".join(ids[:20]) + (f", ... ({len(ids)} cuts)" if len(ids) > 20 else "")
            msg = (f"non-finite {what} at step {trainer.global_step}: update skipped "
                   f"({self.skipped} so far, {self.consecutive} in a row); cut ids: [{shown}]")
            log.warning(msg)
            trainer.print(f"WARNING: {msg}")
        else:
            self.consecutive = 0
            # gradient clipping by norm reuses it (JustLightningModule.configure_gradient_clipping)
            pl_module.grad_norm_for_clipping = (trainer.global_step, total)
            queue_step_metric(pl_module, "train/grad_norm", total)
        queue_step_metric(pl_module, "train/nonfinite_skipped", float(self.skipped))
        self._pending_cut_ids = []
        self._pending_nonfinite_loss = False
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} consecutive updates had a non-finite loss or gradient (the limit, "
                f"nonfinite_guard.max_consecutive, is {self.max_consecutive}); stopping at step "
                f"{trainer.global_step}. Last batch's cut ids: [{shown}]. Lower the learning rate, check the "
                f"data with these cut ids, or raise --nonfinite_guard.max_consecutive."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))


class EMA(pl.Callback):
    """Keep an exponential moving average of the JustModel's weights (see
    :class:`just_asr.train.averaging.EMAWeights`), updated after every optimiser step, saved inside
    Lightning checkpoints (the averaged weights under ``ema_state_dict`` for ``just-asr export --ema``,
    and the callback's state: decay, update count and, unless the model is float32 so that
    ``ema_state_dict`` holds exactly the shadow weights, a float32 copy of them).

    Args:
        decay: long-run decay per update.
        validate_with_ema: evaluate dev WER with the averaged weights (swapped in for validation).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, validate_with_ema: bool = False) -> None:
        super().__init__()
        self.decay = decay
        self.warmup = warmup
        self.validate_with_ema = validate_with_ema
        self.ema: EMAWeights | None = None
        self._pending_state: dict | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._last_step = -1
        self._checkpoint_weights: dict[str, torch.Tensor] | None = None
        self._model: torch.nn.Module | None = None

    def _ensure(self, pl_module: pl.LightningModule) -> EMAWeights:
        if self.ema is None:
            self._model = pl_module.model
            self.ema = EMAWeights(pl_module.model, self.decay, self.warmup)
            if self._pending_state is not None:
                self.ema.load_state_dict(self._pending_state)
                self._pending_state = None
        return self.ema

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self._last_step:  # an optimiser step happened (accumulation aware)
            self._last_step = trainer.global_step
            self._ensure(pl_module).update(pl_module.model)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.validate_with_ema and self.ema is not None and not trainer.sanity_checking:
            self._backup = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
            pl_module.model.load_state_dict(self.ema.state_dict_for(pl_module.model))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._backup is not None:
            pl_module.model.load_state_dict(self._backup)
            self._backup = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint[EMA_CHECKPOINT_KEY] = self.ema.state_dict_for(pl_module.model)

    def _shadow_is_exported(self) -> bool:
        """Whether ``ema_state_dict`` (the shadow cast to the model's dtypes) holds exactly the shadow:
        the model's tensors have the shadow's dtypes (a float32 model)."""
        assert self.ema is not None and self._model is not None
        model_state = self._model.state_dict()
        shadow = self.ema.shadow
        return set(model_state) == set(shadow) and all(shadow[k].dtype == v.dtype for k, v in model_state.items())

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before load_state_dict: keep the weights a "shadow_in" state refers to
        self._checkpoint_weights = checkpoint.get(EMA_CHECKPOINT_KEY)

    def state_dict(self) -> dict[str, Any]:
        """Lightning collects it for a checkpoint together with :meth:`on_save_checkpoint`'s
        ``ema_state_dict``: when that holds exactly the shadow weights, the state names it instead of
        holding (and copying to the CPU) a second copy."""
        if self.ema is None:
            return {}
        if self._shadow_is_exported():
            ema = {**self.ema.state_dict(with_shadow=False), "shadow_in": EMA_CHECKPOINT_KEY}
        else:
            ema = self.ema.state_dict()
        return {"ema": ema, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "ema" in state_dict:
            ema_state = state_dict["ema"]
            if "shadow" not in ema_state:  # stored once, under the checkpoint's EMA weights
                weights = self._checkpoint_weights
                if ema_state.get("shadow_in") != EMA_CHECKPOINT_KEY or weights is None:
                    raise ValueError(f"EMA callback state: the shadow weights should be under the checkpoint's "
                                     f"{EMA_CHECKPOINT_KEY!r}, which is missing")
                ema_state = {**ema_state, "shadow": weights}
            self._checkpoint_weights = None
            self._pending_state = ema_state
            self._last_step = int(state_dict.get("last_step", -1))
            if self.ema is not None:
                self.ema.load_state_dict(self._pending_state)
                self._pending_state = None


class Throughput(pl.Callback):
    """Log ``train/audio_sec_per_sec``: seconds of audio in the batch divided by the wall time of its
    training step (forward, backward, optimiser step; data loading not included)."""

    def __init__(self) -> None:
        super().__init__()
        self._t0: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        info = getattr(pl_module, "last_batch_info", None) or {}
        secs = float(info.get("audio_seconds", 0.0))
        if dt > 0 and secs > 0:
            pl_module.log("train/audio_sec_per_sec", secs / dt, on_step=True, on_epoch=False, batch_size=1, prog_bar=True)


class DataIssueReport(pl.Callback):
    """Count and list the input problems the run met (unreadable or too-short audio, transcripts the
    tokenizer cannot spell, batches left without a usable cut): a corrupt recording is skipped and
    reported when it is met (a warning), and the run also keeps the list and says at its end what it
    left out.

    * ``data/skipped_items``: the items of the training stream left out so far, logged with the step
      metrics. Each is counted once however often the endless stream meets it; a batch left without
      a usable cut counts as an item of its own (one unreadable cut alone in its batch counts twice:
      the file and the batch). Under DDP the logged value is rank 0's.
    * ``<trainer.default_root_dir>/data_issues.json`` (``data_issues.rank<k>.json`` for each rank
      under DDP): every issue, the training stream and the dev set apart (``{"train": {...}, "dev":
      {...}}``, each in :meth:`~just_asr.data.errors.ErrorCollector.to_dict`'s form; empty lists
      when there was no problem). Rewritten at every checkpoint and when training ends or stops on
      an exception; at the end a summary is also printed when there was a problem.
    * The list is part of the checkpoint (this callback's state), so a resumed run, even after a
      ``kill -9``, goes on with it: the problems met before the checkpoint stay listed and counted
      although exact resume does not read those batches again. Under DDP the checkpoint holds rank
      0's list, and every other rank, when resumed, takes its earlier issues from its own
      ``data_issues.rank<k>.json`` instead (written at the same checkpoint).

    It reads the DataModule's ``data_issues()`` (:class:`~just_asr.train.datamodule.JustDataModule`);
    with another DataModule only the issues restored from a checkpoint are kept. Issues found in
    DataLoader workers are included.

    Args:
        max_listed: issues listed one by one in the printed summary (the file has them all).
    """

    FILE_NAME = "data_issues.json"

    def __init__(self, max_listed: int = 20) -> None:
        super().__init__()
        if max_listed < 0:
            raise ValueError(f"data_issues.max_listed must be >= 0, got {max_listed}")
        self.max_listed = int(max_listed)
        self._trainer: pl.Trainer | None = None
        self._restored: dict[str, Any] | None = None  # this callback's checkpoint state, when resumed
        self._earlier_cache: dict[str, Any] | None = None  # name -> ErrorCollector met before the checkpoint
        self._count: tuple[int, float] = (-1, 0.0)  # (issues seen, merged skipped count) for the metric

    # ------------------------------------------------------------------ what the run met
    @staticmethod
    def _live(trainer: pl.Trainer | None) -> dict[str, Any]:
        read = getattr(getattr(trainer, "datamodule", None), "data_issues", None)
        return read() if callable(read) else {}

    def merged(self, trainer: pl.Trainer | None = None) -> dict[str, Any]:
        """``{"train": ErrorCollector, "dev": ...}``: the issues restored from the checkpoint followed
        by this run's (each once)."""
        from just_asr.data.errors import ErrorCollector

        out: dict[str, Any] = {}
        live = self._live(trainer if trainer is not None else self._trainer)
        earlier = self._earlier()
        for name in ("train", "dev", *sorted((set(earlier) | set(live)) - {"train", "dev"})):
            c = ErrorCollector(log=False)
            for part in (earlier.get(name), live.get(name)):
                if part is not None:
                    c.extend(part.issues)
            out[name] = c
        return out

    def _earlier(self) -> dict[str, Any]:
        """The issues met before the checkpoint this run resumed from (``{}`` for a new run): the
        checkpoint's list when this process has the rank that saved it, else this rank's own file."""
        if self._earlier_cache is None:
            from just_asr.data.errors import ErrorCollector

            state = self._restored or {}
            lists = state.get("issues", {})
            trainer = self._trainer
            if trainer is not None and self._restored is not None and trainer.global_rank != int(state.get("rank", 0)):
                own = self.path(trainer)
                try:
                    lists = json.loads(own.read_text(encoding="utf-8")) if own.is_file() else {}
                except (OSError, ValueError) as exc:
                    log.warning("%s: not read (%s); this rank's issues before the checkpoint are not listed", own, exc)
                    lists = {}
            self._earlier_cache = {name: ErrorCollector.from_dict(data) for name, data in lists.items()}
        return self._earlier_cache

    def path(self, trainer: pl.Trainer) -> Path:
        name = self.FILE_NAME if trainer.world_size == 1 else f"data_issues.rank{trainer.global_rank}.json"
        return Path(trainer.default_root_dir) / name

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._earlier_cache = None  # the rank is known now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        live = self._live(trainer).get("train")
        if live is None:
            return
        earlier = self._earlier().get("train")
        seen = len(live)
        if seen != self._count[0]:  # recount only when something new was reported
            if earlier is None or not len(earlier):
                value = float(live.num_skipped)
            else:
                value = float(self.merged(trainer)["train"].num_skipped)
            self._count = (seen, value)
        queue_step_metric(pl_module, "data/skipped_items", self._count[1])

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        self.write(trainer, announce=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.write(trainer)

    def state_dict(self) -> dict[str, Any]:
        rank = self._trainer.global_rank if self._trainer is not None else 0
        return {"rank": int(rank), "issues": {name: c.to_dict() for name, c in self.merged().items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)
        self._earlier_cache = None  # resolved against this process's rank when first needed
        self._count = (-1, 0.0)

    # ------------------------------------------------------------------ the report
    def write(self, trainer: pl.Trainer, announce: bool = True) -> Path:
        """Write the file (atomically) and, with ``announce`` and any issue, print the summary;
        returns the file's path."""
        collectors = self.merged(trainer)
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({k: c.to_dict() for k, c in collectors.items()}, indent=2, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        tmp.replace(path)
        if announce and any(len(c) for c in collectors.values()):
            who = f" (rank {trainer.global_rank})" if trainer.world_size > 1 else ""
            lines = [f"just-asr fit{who}: input problems met by the data loaders (all of them in {path}):"]
            for name, c in collectors.items():
                if len(c):
                    lines.append(f"{name}: " + c.summary(max_items=self.max_listed).replace("\n", "\n  "))
            print("\n".join(lines), flush=True)
        return path
