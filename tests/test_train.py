"""Training-loop tests on a very small model and fixed synthetic batches (CPU, seconds each):

* every regime (supervised, w2v-BERT pretraining, two-stage fine-tuning, JUST, JUST fine-tuning)
  overfits a fixed batch: its objective goes down over a few steps;
* resuming from a checkpoint continues the step counter, optimiser and schedule state and gives the
  same next-step losses as an uninterrupted run;
* the non-finite guard skips an injected NaN batch (weights untouched, count logged, cut ids
  reported), training goes on, and K bad updates in a row stop the run with a clear error;
* the EMA callback's shadow equals an independent EMA of the weights after each step.
"""

from __future__ import annotations

import copy
import glob
import math

import lightning.pytorch as pl
import pytest
import torch

from just_asr.model import ModelConfig
from just_asr.train.callbacks import EMA, CodebookHealth, GumbelTemperature, NonFiniteGuard, Throughput
from just_asr.train.module import JustLightningModule

VOCAB = 12


def tiny_arch(rnnt: float = 1.0, ssl: float = 0.3) -> ModelConfig:
    """A ~60k-parameter model with every component, dropout off (exact, repeatable overfitting)."""
    return ModelConfig.from_dict({
        "frontend": {"conv_channels": 8, "dropout": 0.0},
        "encoder": {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "dropout": 0.0,
                    "attention_dropout": 0.0, "left_max_position": 8, "right_max_position": 2},
        "masking": {"prob": 0.2, "span": 3, "min_spans": 1},
        "quantizer": {"codebook_size": 16, "code_dim": 32},
        "contrastive": {"num_layers": 1, "final_dim": 16, "num_distractors": 4},
        "mlm": {"num_layers": 1},
        "decoder": {"embed_dim": 16, "hidden_dim": 32, "joint_dim": 32, "dropout": 0.0},
        "loss": {"rnnt": rnnt, "ssl": ssl},
    })


def make_batch(seed: int = 0, has_text: tuple[bool, ...] = (True, True, True)) -> dict:
    """A fixed batch of 3 rows (lengths 64/52/40 frames, 5/4/3 tokens; padding zero).

    Features are piecewise constant (segments of 16 frames, each one of 4 prototype vectors, plus a
    little noise), so a masked span (3 latent frames = 12 fbank frames) is predictable from its
    context and the self-supervised terms have something to learn."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([64, 52, 40])
    protos = torch.randn(4, 80, generator=torch.Generator().manual_seed(99))
    seg = torch.randint(0, 4, (3, 4), generator=g).repeat_interleave(16, dim=1)  # (3, 64)
    feats = protos[seg] + 0.1 * torch.randn(3, 64, 80, generator=g)
    for i, n in enumerate(lens.tolist()):
        feats[i, n:] = 0.0
    tlens = torch.tensor([5, 4, 3])
    targets = torch.randint(1, VOCAB, (3, 5), generator=g)
    for i, n in enumerate(tlens.tolist()):
        targets[i, n:] = 0
    has = torch.tensor(has_text)
    tlens = torch.where(has, tlens, torch.zeros_like(tlens))
    targets = torch.where(has[:, None], targets, torch.zeros_like(targets))
    return {"features": feats, "feature_lens": lens, "targets": targets, "target_lens": tlens, "has_text": has,
            "langs": ["en", "pl", "pt"], "cut_ids": [f"cut-{seed}-{i}" for i in range(3)],
            "texts": ["", "", ""]}


class Batches(torch.utils.data.Dataset):
    """A fixed list of batches served by index, repeated to ``length``."""

    def __init__(self, batches: list[dict], length: int = 10_000) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def loader(batches: list[dict]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Batches(batches), batch_size=None, shuffle=False)


class Record(pl.Callback):
    """Keeps the float loss and a copy of the weights after every training batch."""

    def __init__(self, keep_weights: bool = False) -> None:
        self.losses: list[float] = []
        self.steps: list[int] = []
        self.weights: list[dict] = []
        self.keep_weights = keep_weights

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(pl_module.last_loss))
        self.steps.append(trainer.global_step)
        if self.keep_weights:
            self.weights.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


def trainer(max_steps: int, callbacks: list, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
        **{"enable_checkpointing": False, "logger": False, **kw},
    )


def module(arch: ModelConfig, **kw) -> JustLightningModule:
    torch.manual_seed(0)  # same initial weights for every module built with the same arch
    defaults = dict(vocab_size=VOCAB, lr=3e-3, warmup_steps=1, weight_decay=0.0)
    return JustLightningModule(arch=arch, **{**defaults, **kw})


def standard_callbacks() -> list:
    return [GumbelTemperature(), CodebookHealth(), NonFiniteGuard(max_consecutive=3), Throughput()]


def fit_steps(mod: JustLightningModule, steps: int, batches: list[dict], extra: list | None = None, **kw) -> Record:
    rec = Record()
    torch.manual_seed(0)
    trainer(steps, [rec, *standard_callbacks(), *(extra or [])], **kw).fit(mod, loader(batches))
    return rec


def fixed_loss(mod: JustLightningModule, batch: dict, seed: int = 123) -> float:
    """The objective on ``batch`` with fixed randomness (same masks, Gumbel noise, distractors)."""
    mod.model.set_gumbel_temperature(0.5)
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(mod._forward_loss(batch).total)


def _pretrained_checkpoint(tmp_path) -> str:
    mod = module(tiny_arch(rnnt=0.0, ssl=1.0))
    t = trainer(3, standard_callbacks())
    t.fit(mod, loader([make_batch(1)]))
    path = tmp_path / "pretrain.ckpt"
    t.save_checkpoint(path)
    return str(path)


@pytest.mark.parametrize(
    "regime,rnnt,ssl,init,terms",
    [
        ("supervised", 1.0, 0.0, False, {"rnnt"}),
        ("w2v-bert-pretrain", 0.0, 1.0, False, {"contrastive", "diversity", "mlm"}),
        ("finetune", 1.0, 0.0, True, {"rnnt"}),
        ("just", 1.0, 0.3, False, {"rnnt", "contrastive", "diversity", "mlm"}),
        ("just-finetune", 1.0, 0.3, True, {"rnnt", "contrastive", "diversity", "mlm"}),
    ],
)
def test_regime_overfits_fixed_batch(tmp_path, regime, rnnt, ssl, init, terms):
    init_from = _pretrained_checkpoint(tmp_path) if init else None
    torch.manual_seed(0)
    # the self-supervised objective alone learns slowly (its targets move): a larger step for it
    lr = 1e-2 if rnnt == 0 else 3e-3
    mod = module(tiny_arch(rnnt, ssl), lr=lr, init_from=init_from,
                 init_exclude=["predictor.", "joiner."] if init else None)
    if init:
        rep = mod.init_report
        assert rep is not None and rep.loaded and all(k.startswith(("predictor.", "joiner.")) for k in rep.new)
        assert all(why == "excluded by init_exclude" for why in rep.dropped.values())
        assert len(rep.loaded) + len(rep.new) == len(mod.model.state_dict())
    batch = make_batch(0)
    res = mod._forward_loss(batch)
    assert set(res.terms) == terms
    before = fixed_loss(mod, batch)
    rec = fit_steps(mod, 12, [batch], extra=[GumbelTemperature(0.5, 0.5, 1.0)])
    assert rec.steps == list(range(1, 13))
    assert all(torch.isfinite(torch.tensor(rec.losses)))
    after = fixed_loss(mod, batch)
    # the self-supervised objective alone has moving targets (the quantiser learns too): ask less
    factor = 0.8 if rnnt > 0 else 0.9
    assert after < factor * before, f"{regime}: objective on the fixed batch went {before:.3f} -> {after:.3f}"


def test_resume_continues_step_and_loss(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    batches = [make_batch(0), make_batch(1, has_text=(True, False, True)), make_batch(2)]
    full = fit_steps(module(tiny_arch()), 6, batches)

    ckdir = tmp_path / "ck"
    ck = ModelCheckpoint(dirpath=ckdir, every_n_train_steps=4, save_last=True, save_top_k=-1)
    first = fit_steps(module(tiny_arch()), 4, batches, extra=[ck], enable_checkpointing=True)
    assert first.losses == pytest.approx(full.losses[:4], rel=1e-6)
    last = torch.load(ckdir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4

    # resume: a fresh module; the data restarts at batch 0 of the list, so serve the uninterrupted
    # run's 5th and 6th batches first (the data position is not part of this guarantee)
    resumed_rec = Record()
    mod = module(tiny_arch())
    t = trainer(6, [resumed_rec, *standard_callbacks(), ModelCheckpoint(dirpath=ckdir, every_n_train_steps=4)],
                enable_checkpointing=True, default_root_dir=tmp_path)
    t.fit(mod, loader([batches[4 % 3], batches[5 % 3]]), ckpt_path=str(ckdir / "last.ckpt"))
    assert resumed_rec.steps == [5, 6]
    assert resumed_rec.losses == pytest.approx(full.losses[4:6], rel=1e-5)
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 6  # the Noam schedule continued, not restarted
    assert t.optimizers[0].state[next(iter(mod.model.parameters()))]["step"] == 6


def test_nonfinite_guard_skips_nan_batch_and_goes_on(tmp_path, caplog):
    good, bad = make_batch(0), make_batch(1)
    bad = dict(bad, features=bad["features"].clone())
    bad["features"][1, 3, 5] = float("nan")
    guard = NonFiniteGuard(max_consecutive=3)
    rec = Record(keep_weights=True)
    mod = module(tiny_arch())
    torch.manual_seed(0)
    with caplog.at_level("WARNING"):
        trainer(5, [rec, guard, GumbelTemperature()]).fit(mod, loader([good, bad, good, good, good]))
    assert rec.steps == [1, 2, 3, 4, 5]  # training went on to the end
    assert guard.skipped == 1 and guard.consecutive == 0
    assert not torch.isfinite(torch.tensor(rec.losses[1]))
    assert all(torch.isfinite(torch.tensor(rec.losses[i])) for i in (0, 2, 3, 4))
    # the NaN step left every weight as it was; the steps around it changed them
    for k in rec.weights[0]:
        assert torch.equal(rec.weights[0][k], rec.weights[1][k]), k
    assert any(not torch.equal(rec.weights[1][k], rec.weights[2][k]) for k in rec.weights[1])
    assert all(torch.isfinite(v).all() for v in rec.weights[-1].values())
    assert "cut-1-0" in caplog.text and "non-finite loss at step 1" in caplog.text


def test_nonfinite_guard_stops_after_k_in_a_row():
    bad = make_batch(1)
    bad = dict(bad, features=torch.full_like(bad["features"], float("nan")))
    guard = NonFiniteGuard(max_consecutive=2)
    with pytest.raises(RuntimeError, match="2 consecutive updates had a non-finite"):
        trainer(5, [guard]).fit(module(tiny_arch()), loader([bad]))
    assert guard.skipped == 2


def test_ema_callback_tracks_independent_average():
    rec = Record(keep_weights=True)
    ema = EMA(decay=0.8, warmup=False)
    mod = module(tiny_arch())
    init = {k: v.detach().clone().float() for k, v in mod.model.state_dict().items()}
    fit_steps(mod, 4, [make_batch(0)], extra=[rec, ema])
    ref = copy.deepcopy(init)
    for w in rec.weights:
        for k, v in w.items():
            if torch.is_floating_point(v):
                ref[k] = 0.8 * ref[k] + 0.2 * v.float()
    for k, v in ref.items():
        if torch.is_floating_point(v):
            torch.testing.assert_close(ema.ema.shadow[k], v, rtol=1e-5, atol=1e-6)


def test_training_loop_drives_the_pruned_rnnt_warmup(tmp_path):
    """The module tells the model the global step before each batch, so the pruned RNN-T's
    simple/pruned scales follow the warm-up (1.0 -> 0.5 and 0.1 -> 1.0 over the warm-up steps)."""
    arch = tiny_arch(1.0, 0.0)
    arch.decoder.rnnt = "pruned"
    arch.decoder.prune_range = 3
    arch.decoder.rnnt_warmup_steps = 4
    mod = module(arch)
    seen: list[tuple[int, tuple[float, float]]] = []

    class Scales(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((pl_module.model.current_step, pl_module.model.rnnt_loss_scales()))

    fit_steps(mod, 6, [make_batch(0)], extra=[Scales()])
    steps = [s for s, _ in seen]
    assert steps == list(range(6))  # the step the batch was computed at
    assert seen[0][1] == pytest.approx((1.0, 0.1))
    assert seen[2][1] == pytest.approx((0.75, 0.55))
    assert seen[4][1] == pytest.approx((0.5, 1.0)) and seen[5][1] == pytest.approx((0.5, 1.0))


@pytest.mark.parametrize("clip, algorithm", [(0.05, None), (1e6, None), (0.05, "norm")])
def test_clipping_by_norm_reuses_the_guards_norm(clip: float, algorithm: str | None, monkeypatch: pytest.MonkeyPatch):
    """With NonFiniteGuard in the run, clipping by norm takes the total norm the guard computed: one
    ``_foreach_norm`` per step instead of two, and the clipped gradients equal, bit for bit, what
    ``torch.nn.utils.clip_grad_norm_`` makes of the same gradients (clipped: 0.05; untouched: 1e6)."""
    seen: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    class Grads(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # before clipping
            seen.append(([p.grad.clone() for g in optimizer.param_groups for p in g["params"]
                          if p.grad is not None], []))

    mod = module(tiny_arch())
    clip_as_module = mod.configure_gradient_clipping

    def clip_and_record(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_as_module(optimizer, gradient_clip_val, gradient_clip_algorithm)
        seen[-1][1].extend(p.grad.clone() for g in optimizer.param_groups for p in g["params"] if p.grad is not None)

    mod.configure_gradient_clipping = clip_and_record
    calls = {"n": 0}
    real = torch._foreach_norm

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", counting)
    fit_steps(mod, 3, [make_batch(0), make_batch(1)], extra=[Grads()], gradient_clip_val=clip,
              gradient_clip_algorithm=algorithm)  # Lightning hands the module its enum, not the string
    assert len(seen) == 3 and calls["n"] == 3
    for before, after in seen:
        ref = [g.clone() for g in before]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in ref]
        for p, g in zip(params, ref):
            p.grad = g
        monkeypatch.setattr(torch, "_foreach_norm", real)
        torch.nn.utils.clip_grad_norm_(params, clip)
        assert len(after) == len(ref)
        assert all(torch.equal(a, p.grad) for a, p in zip(after, params))
        changed = any(not torch.equal(a, b) for a, b in zip(after, before))
        assert changed == (clip < 1.0)


def _logged_fit(tmp_path, steps: int, extra: list | None = None):
    """``fit_steps`` with a TensorBoard logger writing every 3rd step and a Gumbel temperature that
    changes visibly from step to step; returns ``(module, record, {train tag: {step: value}})``."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    arch = tiny_arch()
    arch.quantizer.temperature_decay = 0.9
    mod = module(arch)
    rec = fit_steps(mod, steps, [make_batch(0), make_batch(1)], extra=extra, logger=TensorBoardLogger(tmp_path),
                    log_every_n_steps=3, gradient_clip_val=5.0)
    (events,) = glob.glob(str(tmp_path / "lightning_logs" / "*" / "events*"))
    acc = EventAccumulator(events)
    acc.Reload()
    by_step = {t: {e.step: e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"] if t.startswith("train/")}
    return mod, rec, by_step


def _tau(mod: JustLightningModule, step: int) -> float:
    from just_asr.model.quantizer import gumbel_temperature

    q = mod.arch.quantizer
    return float(gumbel_temperature(step, q.temperature_start, q.temperature_end, q.temperature_decay))


def test_step_metrics_reach_the_logger_on_every_written_step(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """The diagnostics are handed to Lightning only on the steps its logger writes: every value still
    reaches TensorBoard at each written step (every 3rd step), while the number of
    ``log`` calls drops to about a third."""
    calls = {"n": 0}
    real_log = pl.LightningModule.log

    def counting_log(self, *args, **kwargs):
        calls["n"] += 1
        return real_log(self, *args, **kwargs)

    monkeypatch.setattr(pl.LightningModule, "log", counting_log)
    mod, rec, by_step = _logged_fit(tmp_path, 7)
    tags = list(by_step)
    for t in ["train/loss", "train/rnnt", "train/mlm", "train/grad_norm", "train/nonfinite_skipped",
              "train/gumbel_temperature", "train/codebook_collapsed_steps", "train/audio_sec_per_sec",
              "train/transcribed_fraction", "train/masked_fraction", "train/code_usage"]:
        assert t in tags, t
    written = set(by_step["train/loss"])
    assert written == {2, 5}  # Lightning's 0-based steps 3 and 6 (the 7th is not a multiple of 3)
    for t in tags:
        assert set(by_step[t]) == written, t
    # and the values are those of the written step, not left over from an earlier one
    for step, value in by_step["train/gumbel_temperature"].items():
        assert value == pytest.approx(_tau(mod, step), rel=1e-6)
    for step, value in by_step["train/loss"].items():
        assert value == pytest.approx(rec.losses[step], rel=1e-6)
    per_step = len(tags)  # what every step used to log
    assert calls["n"] < 7 * per_step / 2


def test_training_step_leaves_the_metrics_as_tensors_until_read():
    """``training_step`` does not turn the metrics into floats (on a GPU that waits for the forward
    pass before backward is queued); ``last_metrics`` converts them on first read."""
    mod = module(tiny_arch())
    mod.train()
    torch.manual_seed(0)
    mod.training_step(make_batch(0), 0)
    assert mod._metric_floats is None
    assert any(isinstance(v, torch.Tensor) for v in mod._metric_values.values())
    floats = mod.last_metrics
    assert floats.keys() == mod._metric_values.keys() and all(isinstance(v, float) for v in floats.values())
    for k, v in mod._metric_values.items():
        assert floats[k] == pytest.approx(float(v), nan_ok=True)
    assert mod.last_metrics is floats  # converted once


def test_clipping_by_value_through_the_trainer():
    """``--trainer.gradient_clip_algorithm value`` reaches the module as Lightning's enum: with the
    fused optimiser the gradients are clipped to the value (this raised before)."""
    seen: list[float] = []
    mod = module(tiny_arch())
    clip_as_module = mod.configure_gradient_clipping

    def clip_and_record(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_as_module(optimizer, gradient_clip_val, gradient_clip_algorithm)
        seen.append(max(float(p.grad.abs().max()) for g in optimizer.param_groups for p in g["params"]
                        if p.grad is not None))

    mod.configure_gradient_clipping = clip_and_record
    fit_steps(mod, 2, [make_batch(0)], gradient_clip_val=1e-4, gradient_clip_algorithm="value")
    assert mod.trainer.optimizers[0].defaults["fused"] is True
    assert seen == [pytest.approx(1e-4), pytest.approx(1e-4)]


def test_a_run_stopped_early_logs_its_last_step_fresh(tmp_path):
    """When a callback stops the run in ``on_train_batch_end`` (as ``max_time``'s Timer does), Lightning
    writes that step although it is not a multiple of ``log_every_n_steps``: its values must be that
    step's, not the last written step's."""

    class StopAt(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 5:
                trainer.should_stop = True

    mod, rec, by_step = _logged_fit(tmp_path, 20, extra=[StopAt()])
    assert len(rec.losses) == 5
    assert set(by_step["train/loss"]) == {2, 4}
    for t, values in by_step.items():
        assert set(values) == {2, 4}, t
    assert by_step["train/gumbel_temperature"][4] == pytest.approx(_tau(mod, 4), rel=1e-6)
    for t in ["train/rnnt", "train/grad_norm", "train/lr_encoder"]:
        assert by_step[t][4] != by_step[t][2], t


def test_gradient_clipping_with_the_fused_optimizer(tmp_path):
    """bf16-mixed + gradient clipping + the fused AdamW: Lightning refuses to clip for fused
    optimisers itself, so the module clips; the run trains, and the clipped norm is the limit."""
    mod = module(tiny_arch())
    rec = fit_steps(mod, 3, [make_batch(0)], precision="bf16-mixed", gradient_clip_val=0.5)
    assert len(rec.losses) == 3 and all(math.isfinite(x) for x in rec.losses)
    opt = mod.trainer.optimizers[0]
    assert opt.defaults["fused"] is True
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    mod.configure_gradient_clipping(opt, 0.5, "norm")
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert float(total) == pytest.approx(0.5, rel=1e-4)
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    mod.configure_gradient_clipping(opt, 0.25, "value")
    assert max(float(p.grad.abs().max()) for p in params) == pytest.approx(0.25)
