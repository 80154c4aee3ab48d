"""Benchmark: training throughput of a full JUST training step on CPU, or on a CUDA GPU (audio-seconds per second).

Run (from the repository root)::

    .venv/bin/python benchmarks/train_step.py                              # tiny: every config, 2 threads
    .venv/bin/python benchmarks/train_step.py --presets tiny base --repeats 5 --base-repeats 2
    .venv/bin/python benchmarks/train_step.py --only bf16,full,just --threads 1 --profile   # where time goes
    .venv/bin/python benchmarks/train_step.py --loader demo/manifests \\
        --tokenizer demo/tokenizer/tokenizer.model --cmvn demo/cmvn.json --loader-workers 1
    # before/after of a change, in one process (steps alternate between the two models):
    git archive COMMIT src configs | tar -x -C /tmp/before
    .venv/bin/python benchmarks/train_step.py --threads 1 --compare-src /tmp/before/src
    .venv/bin/python benchmarks/train_step.py --threads 1 --only full,just --compare-adamw

Set ``OMP_NUM_THREADS`` to ``--threads`` as well (OpenMP reads it at start-up).

One step = what Lightning runs per batch with ``trainer.precision`` ``32-true`` (fp32) or
``bf16-mixed`` (bf16): ``JustModel.forward`` + ``JustOutput.compute_loss()`` (under
``torch.autocast('cpu', dtype=torch.bfloat16)`` for bf16; the losses themselves run in float32
outside autocast, as the model arranges), ``backward()`` (outside autocast), then an AdamW step over
the project's parameter groups (``just_asr.train.optim``) and ``zero_grad``.

Synthetic batches are shaped like the demo's real ones: ``--batch`` utterances whose durations are
spread evenly over ``[0.75, 1.25] * --seconds`` (so the batch is padded like a bucketed one),
80-d "fbank" at 100 frames/s drawn from N(0, 1) (what CMVN-normalised features look like), token
targets ``U_b = max(1, T'_b // 5)`` drawn uniformly from the non-blank vocabulary (256 for ``tiny``,
1024 for ``base``), every row transcribed. With ``--spec-augment`` (the default, as in
``configs/just.yaml``; ``configs/demo.yaml`` turns SpecAugment off) the batch also carries a perturbed
``supervised_features`` copy, so the JUST objective runs the front end on both the clean features
and the copy (one call on the two concatenated), as in training.

Configs: ``--presets`` x precision (fp32, bf16) x RNN-T (full, pruned) x objective (``just``: the
preset's loss weights; ``supervised``: ``loss.ssl = 0``, one unmasked encoder pass + RNN-T). The
pruned path is timed after its warm-up (``set_step`` far past ``decoder.rnnt_warmup_steps``).

Reported per config (all in this one process, ``torch.set_num_threads(--threads)``):

* ``ms/step``: median (and min) wall time of ``--repeats`` timed steps after ``--warmup`` untimed ones.
* ``CPU ms/step``: median process CPU time per step (all threads; with ``--threads 1`` on a busy
  machine this is the steadiest figure: time spent waiting for a core is not counted).
* ``x real time``: audio seconds in the batch (sum of the valid frames / 100) / median step time.
* ``GFLOP/step``: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward (matmuls,
  convolutions, attention; element-wise ops are not counted, so this is the useful tensor work).
* ``roof %``: (GFLOP/step / median step time) / the FLOP/s of a plain ``torch.mm`` of two
  ``--roof-size`` square matrices (default 1024 x 1024 @ 1024 x 1024) in the config's dtype
  (float32, or bfloat16 for bf16) with the same threads, measured in this process right after the
  config's timed steps (median of 20 calls), so both see the same machine load.
* ``roof % (CPU time)``: the same ratio with process CPU time in place of wall time on both sides
  (GFLOP/step / CPU s per step over the matmul's GFLOP per CPU second): on a shared machine this
  is the steadier of the two, since neither side is charged for time spent waiting for a core.
* ``faults/step``: minor page faults of the process per timed step (``getrusage``), i.e. memory the
  kernel had to map (and zero) again because the allocator had given it back.

``--malloc default`` (the default, as ``just-asr fit``) keeps glibc's own malloc settings; ``--malloc
tuned`` applies :func:`just_asr.runtime.tune_malloc` at start-up, as ``JUST_ASR_MALLOC_TUNING=1
just-asr fit`` does. This benchmark's batch never changes shape, which leaves glibc's adaptive
thresholds where they give memory back and fault it in again every step (the ``faults/step``
column); training on varied batches moves them past that (``BENCHMARKS.md``, "The allocator"). An
allocator setting cannot be compared within one process, so ``--compare-malloc ROUNDS`` runs this
script's other arguments in ROUNDS x 2 child processes, ``--malloc default`` and ``--malloc tuned``
back to back in each round (the order alternating), and prints both medians, faults per step, peak
RSS and the speed-up per round and over the rounds.

``--prewarm-batch B`` (CPU) runs two untimed steps on a larger batch (B utterances, ``--prewarm-seconds``
mean duration, default twice ``--seconds``) before the warm-up: glibc's malloc thresholds then start
where a training loop's varied batches would have moved them (see ``--malloc``). The peak RSS column
then includes that batch; with ``--compile --compile-static`` its shape compiles a graph of its own
(untimed).

``--compile`` runs every conformer block through ``torch.compile`` (``dynamic=True``; ``--compile-static``
for one graph per shape) before the timed steps; the first step, which compiles, is timed apart.

``--profile`` prints, per config, the top ops by self CPU time of one step (``torch.profiler``),
plus the share of the step's time in each model part (front end, contrastive stack, MLM stack,
predictor/joiner/loss, optimiser) measured with ``record_function`` scopes.

``--loader MANIFEST_DIR`` instead times ``JustDataModule.train_dataloader()`` with the given
tokenizer, CMVN, workers and batch duration: audio-seconds per second over ``--loader-batches``
batches (after ``--loader-warmup`` batches, which include the workers' start-up), to compare with
what a training step consumes (the ``x real time`` figure above).

``--compare-src DIR`` builds the baseline model from ``DIR/just_asr`` (imported a second time
under another package name, reading the presets of ``DIR/../configs`` when present) and the
candidate from this checkout (or ``--candidate-src``), with the same seed and batch, and alternates
their steps: median wall and CPU ms per step and the speed-up. ``--compare-adamw`` does the same for
torch's per-parameter for-loop AdamW against the project's (fused) one.

``--processes N`` (CPU) runs data-parallel training instead, as ``just-asr fit --trainer.devices N
--trainer.strategy ddp`` on CPU does: N spawned processes of ``--threads`` threads each, the model
wrapped in ``DistributedDataParallel`` over gloo (``find_unused_parameters=True``, as the fit command
sets for JUST), each rank its own batch of the same shape (another seed). Each timed step is fenced
by barriers on both sides and rank 0's wall time is reported; audio-seconds and FLOPs are summed over
the ranks, and the roof is the matmul with N x ``--threads`` threads in the parent process. On a
2-core machine ``--processes 2 --threads 1`` against ``--threads 2`` shows what the intra-op threads
leave on the table at this model's small ops.

On a shared machine only ratios within one run are solid; report medians of several repeats.

On a GPU (``--device cuda``; nothing else in the project needs one)::

    python benchmarks/train_step.py --device cuda --presets w2v-bert-xl --only bf16 \\
        --batch 16 --seconds 15 --repeats 10 --warmup 3

runs the same steps on the GPU (model, optimiser and batch there; ``torch.autocast('cuda', bfloat16)``
for bf16; TF32 off in matmuls and cuDNN convolutions, so fp32 is fp32) and reports per config: median ms/step (each timed step
synchronised before and after), audio-seconds per second, text tokens per second (target tokens in
the batch / step time), encoder frames per second (after the 4x subsampling), TFLOP/s from the same
``FlopCounterMode`` count, **MFU** against both the datasheet dense bf16 peak (``--peak-tflops``, or
looked up in ``GPU_BF16_PEAK_TFLOPS`` by device name) and a ``--roof-size`` (default 8192) square
``torch.mm`` measured on the GPU right after the config, and the peak GPU memory
(``torch.cuda.max_memory_allocated``, model + AdamW state + activations). Whether the GPU or the host
(launching kernels one by one) bounds a step shows in ``--profile``: the kernels' summed time against
the step's wall time. The datasheet MFU is given for bf16 rows only (the peak is a bf16 figure).
``--compile`` works there too (the first step's time in the ``compiled`` column). ``--profile`` there ranks
ops by the GPU time of the kernels they launched. The ``w2v-bert-xl`` preset (the paper-size model,
about 0.6B parameters) is meant for this mode; on the CPU it is selectable but slow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import tempfile
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
FRAME_SHIFT_S = 0.01
VOCAB = {"tiny": 256, "base": 1024, "w2v-bert-xl": 1024}
# Datasheet dense bf16 tensor-core peaks (TFLOP/s, without sparsity), matched against
# torch.cuda.get_device_name(); the MFU figure is also given against the matmul measured in the run.
GPU_BF16_PEAK_TFLOPS = (("H200", 989.4), ("H100 80GB HBM3", 989.4), ("H100 SXM", 989.4), ("H100 NVL", 835.0),
                        ("H100 PCIe", 756.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0))
PRECISIONS = ("fp32", "bf16")
RNNTS = ("full", "pruned")
OBJECTIVES = ("just", "supervised")


def checkout_runtime():
    """This checkout's ``just_asr.runtime`` (standard library only), loaded from its file, so that
    ``--malloc tuned`` works with ``--src``/``--compare-src`` trees that predate it."""
    import importlib.util

    name = "just_asr_checkout_runtime"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "src" / "just_asr" / "runtime.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def apply_malloc(mode: str) -> tuple[bool, str]:
    """``--malloc``: ``tuned`` runs ``tune_malloc()`` (as ``JUST_ASR_MALLOC_TUNING=1 just-asr fit``),
    ``default`` leaves glibc's settings; returns ``(tuned, what was done)``. Raises ValueError on a bad
    ``JUST_ASR_MALLOC_TUNING``."""
    runtime = checkout_runtime()
    if mode != "tuned":
        return False, "glibc malloc defaults (--malloc default)"
    tuned = runtime.tune_malloc()
    return tuned, runtime.applied


def max_rss_mb() -> float:
    """The process's peak resident memory so far (MiB; Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model_name() -> str:
    """``lscpu``'s model name (from ``/proc/cpuinfo``), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
                return "+".join(keep) or "no AVX2"
    except OSError:
        pass
    return "?"


# ---------------------------------------------------------------------------------------------- batch


def make_batch(batch: int, seconds: float, vocab: int, spec_augment: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic training batch (see the module docstring).

    Returns ``features (B, T, 80)``, ``feature_lens (B,)``, ``targets (B, U)``, ``target_lens (B,)``,
    ``has_text (B,)`` and, with ``spec_augment``, ``supervised_features (B, T, 80)``.
    """
    if batch < 1 or seconds <= 0:
        raise ValueError(f"benchmarks/train_step.py: need --batch >= 1 and --seconds > 0, got {batch}, {seconds}")
    g = torch.Generator().manual_seed(seed)
    durations = torch.linspace(1.25 * seconds, 0.75 * seconds, batch) if batch > 1 else torch.tensor([seconds])
    feature_lens = (durations / FRAME_SHIFT_S).round().long().clamp(min=16)
    t_max = int(feature_lens.max())
    features = torch.randn(batch, t_max, 80, generator=g)
    valid = torch.arange(t_max)[None, :] < feature_lens[:, None]
    features = features * valid[..., None]
    t_enc = (((feature_lens - 1) // 2 - 1) // 2).clamp(min=1)
    target_lens = (t_enc // 5).clamp(min=1)
    targets = torch.randint(1, vocab, (batch, int(target_lens.max())), generator=g)
    targets = targets * (torch.arange(targets.size(1))[None, :] < target_lens[:, None])
    out = {
        "features": features,
        "feature_lens": feature_lens,
        "targets": targets,
        "target_lens": target_lens,
        "has_text": torch.ones(batch, dtype=torch.bool),
    }
    if spec_augment:
        sup = features.clone()
        sup[:, :, 10:20] = 0.0  # a frequency mask, as SpecAugment would apply
        out["supervised_features"] = sup
    return out


# ---------------------------------------------------------------------------------------------- model


def import_package_copy(src_dir: str, name: str = "just_asr_before"):
    """Import ``src_dir/just_asr`` a second time, as the package ``name`` (its relative imports stay
    inside the copy; its absolute ``just_asr.*`` imports, e.g. the losses, use this checkout's)."""
    import importlib
    import importlib.util

    root = Path(src_dir).resolve() / "just_asr"
    if not (root / "__init__.py").is_file():
        raise SystemExit(f"benchmarks/train_step.py: --compare-src {src_dir}: no just_asr/__init__.py there")
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.model")


def build(preset: str, rnnt: str, objective: str, seed: int = 0, adamw: str = "default", model_pkg=None,
          branch: str = "masked", device: str = "cpu"):
    """``(model, optimizer, cfg)`` for one config; the model is in train mode. ``adamw``: ``default``
    (``build_optimizer``'s choice: fused on CPU), ``fused`` or ``for-loop`` (forced).
    ``model_pkg``: a ``just_asr.model`` package to build from (default: this checkout's)."""
    import importlib

    from just_asr.train.optim import build_optimizer, param_groups

    if model_pkg is None:
        model_pkg = importlib.import_module("just_asr.model")
    JustModel = model_pkg.JustModel
    load_model_config = importlib.import_module(f"{model_pkg.__name__}.config").load_model_config
    # a package copy from DIR/src reads the presets of its own tree (DIR/configs) when there are any
    config_dir = ROOT / "configs" / "model"
    pkg_configs = Path(model_pkg.__file__).resolve().parents[3] / "configs" / "model"
    if pkg_configs.is_dir():
        config_dir = pkg_configs
    cfg = load_model_config(config_dir / f"{preset}.yaml")
    cfg = replace(cfg, decoder=replace(cfg.decoder, rnnt=rnnt), rnnt_branch=branch)
    if objective == "supervised":
        cfg = replace(cfg, loss=replace(cfg.loss, ssl=0.0))
    torch.manual_seed(seed)
    model = JustModel(cfg, VOCAB[preset]).to(device)
    model.train()
    model.set_step(10**9)  # past the pruned loss's warm-up
    groups = param_groups(model, 1e-4, None, 1e-3)
    fused = {"default": None, "fused": True, "for-loop": False}[adamw]
    opt = build_optimizer(groups, "adamw", lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=1e-3, fused=fused)
    return model, opt, cfg


@contextmanager
def _scope(name: str, on: bool) -> Iterator[None]:
    if on:
        with torch.profiler.record_function(name):
            yield
    else:
        yield


def _autocast(batch: dict[str, torch.Tensor], precision: str):
    """bf16 autocast on the batch's device (what Lightning's ``bf16-mixed`` enters), else nothing."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(batch["features"].device.type, dtype=torch.bfloat16)


def train_step(model, opt, batch: dict[str, torch.Tensor], precision: str, scopes: bool = False) -> float:
    """One full training step; returns the loss (a float, which also synchronises a GPU)."""
    ctx = _autocast(batch, precision)
    with _scope("step/forward+loss", scopes), ctx:
        out = model(batch["features"], batch["feature_lens"], batch["targets"], batch["target_lens"],
                    batch["has_text"], supervised_features=batch.get("supervised_features"))
        loss = out.compute_loss().total
    with _scope("step/backward", scopes):
        loss.backward()
    with _scope("step/optimizer", scopes):
        opt.step()
        opt.zero_grad(set_to_none=True)
    value = float(loss.detach())
    if not torch.isfinite(torch.tensor(value)):
        raise RuntimeError("benchmarks/train_step.py: non-finite loss in a training step")
    return value


def compile_blocks(model, opt, batch: dict[str, torch.Tensor], precision: str, args: argparse.Namespace) -> float:
    """With ``--compile``: every conformer block through ``torch.compile`` (``dynamic`` unless
    ``--compile-static``), then one step, which compiles; returns its seconds (NaN without ``--compile``)."""
    if not args.compile:
        return float("nan")
    for stack in (model.contrastive_stack, model.mlm_stack):
        for block in stack.layers:
            block.compile(dynamic=not args.compile_static)
    t0 = time.perf_counter()
    train_step(model, opt, batch, precision)
    return time.perf_counter() - t0


def print_command_and_setup(args: argparse.Namespace) -> None:
    """The command line, then what its figures depend on that the command may leave to defaults: the
    batch, the JUST objective's RNN-T branch, the SpecAugment-like copy and the allocator."""
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"setup: batch {args.batch} x {args.seconds:g} s mean per process, RNN-T branch {args.rnnt_branch}, "
          f"supervised_features copy {'on' if args.spec_augment else 'off'}")
    if getattr(args, "malloc_applied", None):
        print(f"malloc: {args.malloc_applied}")


def repeats_for(args: argparse.Namespace, preset: str) -> int:
    return args.base_repeats if (preset != "tiny" and args.base_repeats) else args.repeats


def time_config(model, opt, batch: dict[str, torch.Tensor], precision: str, args: argparse.Namespace,
                reps: int) -> tuple[float, float, list[float], list[float], float]:
    """FLOPs of one step, then ``--compile`` (if asked), ``--warmup`` untimed steps and ``reps`` timed
    ones: ``(flops, compile_s, wall_times, process_cpu_times, minor_page_faults_per_step)``. On a GPU
    each timed step is synchronised before and after (its CPU time then means little)."""
    device = batch["features"].device
    flops = count_flops(model, batch, precision)
    compile_s = compile_blocks(model, opt, batch, precision, args)
    if args.prewarm_batch:
        # a larger batch first, as a training loop's varied batches come (see --prewarm-batch)
        big = make_batch(args.prewarm_batch, args.prewarm_seconds or 2 * args.seconds, int(model.vocab_size),
                         args.spec_augment, seed=1)
        big = {k: v.to(device) for k, v in big.items()}
        for _ in range(2):
            train_step(model, opt, big, precision)
        del big
    for _ in range(args.warmup):
        train_step(model, opt, batch, precision)
    times, cpu = [], []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(reps):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        train_step(model, opt, batch, precision)  # float(loss) waits for a GPU step's kernels
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / reps
    return flops, compile_s, times, cpu, faults


def count_flops(model, batch: dict[str, torch.Tensor], precision: str) -> float:
    """FLOPs of one forward + backward (``FlopCounterMode``); gradients are discarded."""
    from torch.utils.flop_counter import FlopCounterMode

    ctx = _autocast(batch, precision)
    counter = FlopCounterMode(display=False)
    with counter:
        with ctx:
            out = model(batch["features"], batch["feature_lens"], batch["targets"], batch["target_lens"],
                        batch["has_text"], supervised_features=batch.get("supervised_features"))
            loss = out.compute_loss().total
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_roof(size: int, dtype: torch.dtype, calls: int = 20, device: str = "cpu") -> tuple[float, float]:
    """FLOP/s of ``torch.mm`` on two ``(size, size)`` matrices of ``dtype``: ``(by wall time, by CPU
    time)``, each from the median of ``calls`` calls (on a GPU each call is synchronised; its CPU-time
    figure means nothing there)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=g).to(device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    _sync(device)
    wall, cpu = [], []
    for _ in range(calls):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    flop = 2.0 * size**3
    return flop / statistics.median(wall), flop / max(statistics.median(cpu), 1e-9)


# ---------------------------------------------------------------------------------------------- profile

MODULE_SCOPES = {
    "frontend": "frontend",
    "contrastive_stack": "contrastive stack",
    "mlm_stack": "MLM stack",
    "quantizer": "quantiser",
    "predictor": "predictor",
    "joiner": "joiner",
}


def _wrap_modules(model) -> list:
    """Wrap the model's main parts in ``record_function`` scopes (forward only); returns the hooks'
    handles so the caller can remove them."""
    handles = []
    for attr, label in MODULE_SCOPES.items():
        mod = getattr(model, attr, None)
        if mod is None:
            continue
        state: dict[str, object] = {}

        def pre(_m, _a, label=label, state=state):
            rf = torch.profiler.record_function(f"fwd/{label}")
            state.setdefault("stack", []).append(rf)  # type: ignore[union-attr]
            rf.__enter__()

        def post(_m, _a, _o, state=state):
            state["stack"].pop().__exit__(None, None, None)  # type: ignore[index,union-attr]

        handles.append(mod.register_forward_pre_hook(pre))
        handles.append(mod.register_forward_hook(post))
    return handles


def _host_event(e, on_gpu: bool) -> bool:
    """Whether a profiler event is an op or scope recorded on the host. On a GPU the kernels are events
    too, and each ``record_function`` scope is also recorded as a GPU annotation spanning its kernels
    (idle gaps included): counting those as well would count the same time twice."""
    return not on_gpu or str(getattr(e, "device_type", "")).endswith("CPU")


def profile_step(model, opt, batch: dict[str, torch.Tensor], precision: str, top: int) -> str:
    """Markdown: top ops by self CPU time of one step, and each scope's share of the step."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = batch["features"].is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    handles = _wrap_modules(model)
    try:
        train_step(model, opt, batch, precision, scopes=True)  # warm
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            train_step(model, opt, batch, precision, scopes=True)
            wall = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    # on a GPU the ops are ranked by the device (kernel) time they launched, else by CPU time
    what = "GPU" if on_gpu else "CPU"

    def self_time(e) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) if on_gpu else e.self_cpu_time_total)

    total_self = sum(self_time(e) for e in events if _host_event(e, on_gpu))
    lines = [f"Top {top} ops by self {what} time (one profiled step, {wall * 1e3:.0f} ms wall under the profiler; "
             f"self {what} time summed over ops = {total_self / 1e3:.0f} ms):", "",
             f"| op | self {what} ms | % | calls |", "|---|---:|---:|---:|"]
    # on a GPU the kernels themselves are events too; rank the ops that launched them (no double count)
    candidates = [e for e in events if not e.key.startswith(("fwd/", "step/")) and _host_event(e, on_gpu)]
    ops = sorted(candidates, key=self_time, reverse=True)[:top]
    for e in ops:
        lines.append(f"| `{e.key}` | {self_time(e) / 1e3:.1f} | {100 * self_time(e) / max(total_self, 1):.1f} | "
                     f"{e.count} |")
    def incl(e) -> float:
        return float(getattr(e, "device_time_total", 0.0) if on_gpu else e.cpu_time_total)

    note = (" of the kernels launched inside each scope; the kernels that autograd launches from its own "
            "thread are missing from `step/backward`" if on_gpu else "")
    lines += ["", f"Scopes (inclusive {what} time{note}; forward scopes exclude their backward, which is inside "
              "`step/backward`):", "", "| scope | ms | % of step |", "|---|---:|---:|"]
    scopes = [e for e in events if e.key.startswith(("fwd/", "step/")) and _host_event(e, on_gpu)]
    step_total = sum(incl(e) for e in scopes if e.key.startswith("step/"))
    for e in sorted(scopes, key=lambda e: e.key):
        lines.append(f"| {e.key} | {incl(e) / 1e3:.1f} | {100 * incl(e) / max(step_total, 1):.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- loader


def run_loader(args: argparse.Namespace) -> int:
    """Time ``JustDataModule.train_dataloader()``: audio-seconds per second of produced batches."""
    from just_asr.train.datamodule import JustDataModule

    for flag, path in (("--tokenizer", args.tokenizer), ("--cmvn", args.cmvn)):
        if path is not None and not Path(path).is_file():
            print(f"benchmarks/train_step.py: {flag} {path}: file not found", file=sys.stderr)
            return 2
    if not Path(args.loader).is_dir():
        print(f"benchmarks/train_step.py: --loader {args.loader}: not a directory", file=sys.stderr)
        return 2
    spec = {"num_time_masks": 2, "freq_mask_width": 10} if args.spec_augment else None
    dm = JustDataModule(args.loader, tokenizer=args.tokenizer, cmvn=args.cmvn, max_duration=args.loader_duration,
                        num_workers=args.loader_workers, temperature=2.0, spec_augment=spec)
    print(f"machine: {cpu_model_name()} ({cpu_flags()}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"loader: {args.loader}, max_duration={args.loader_duration} s, num_workers={args.loader_workers}, "
          f"spec_augment={'on' if spec else 'off'}")
    rates = []
    for rep in range(args.repeats):
        loader = dm.train_dataloader()
        it = iter(loader)
        t_start = time.perf_counter()
        for _ in range(args.loader_warmup):
            next(it)
        t_warm = time.perf_counter()
        audio = 0.0
        for _ in range(args.loader_batches):
            b = next(it)
            audio += float(b["feature_lens"].sum()) * FRAME_SHIFT_S
        t_end = time.perf_counter()
        rates.append(audio / (t_end - t_warm))
        print(f"  repeat {rep}: warm-up {args.loader_warmup} batches {t_warm - t_start:.2f} s, then "
              f"{args.loader_batches} batches, {audio:.1f} audio-s in {t_end - t_warm:.2f} s "
              f"= {rates[-1]:.0f} audio-s/s", flush=True)
        del it, loader
    print(f"\nloader throughput: median {statistics.median(rates):.0f} audio-s/s (min {min(rates):.0f}, "
          f"max {max(rates):.0f}) over {args.repeats} repeats")
    return 0


# ---------------------------------------------------------------------------------------------- compare


def run_compare(args: argparse.Namespace, configs: list[tuple[str, str, str, str]]) -> int:
    """Before/after of one change in this process: baseline and candidate steps alternate (so both
    see the same machine load); prints median wall and CPU ms per step and the speed-up."""
    print(f"machine: {cpu_model_name()} ({cpu_flags()}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"load average {os.getloadavg()[0]:.2f}")
    print_command_and_setup(args)
    new_pkg = None
    if args.compare_src:
        old_pkg = import_package_copy(args.compare_src)
        labels = (f"model from {args.compare_src}", "model from this checkout")
        if args.candidate_src:
            new_pkg = import_package_copy(args.candidate_src, "just_asr_after")
            labels = (labels[0], f"model from {args.candidate_src}")
        print(f"baseline: {labels[0]} ({Path(old_pkg.__file__).parent}); candidate: {labels[1]}")
    else:
        old_pkg = None
        labels = ("for-loop AdamW", "project AdamW (fused)")
    print()
    print(f"| preset | precision | RNN-T | objective | {labels[0]}: ms/step (CPU ms) | {labels[1]}: ms/step (CPU ms) "
          "| speed-up (wall) | speed-up (CPU) | x real time after | repeats |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for preset, precision, rnnt, objective in configs:
        batch = make_batch(args.batch, args.seconds, VOCAB[preset], args.spec_augment)
        audio = float(batch["feature_lens"].sum()) * FRAME_SHIFT_S
        if args.compare_src:
            pair = [build(preset, rnnt, objective, adamw=args.adamw, model_pkg=old_pkg, branch=args.rnnt_branch),
                    build(preset, rnnt, objective, adamw=args.adamw, model_pkg=new_pkg, branch=args.rnnt_branch)]
        else:
            pair = [build(preset, rnnt, objective, adamw="for-loop", branch=args.rnnt_branch),
                    build(preset, rnnt, objective, adamw="default", branch=args.rnnt_branch)]
        for model, opt, _ in pair:
            for _ in range(args.warmup):
                train_step(model, opt, batch, precision)
        reps = repeats_for(args, preset)
        wall: list[list[float]] = [[], []]
        cpu: list[list[float]] = [[], []]
        for _ in range(reps):
            for i, (model, opt, _) in enumerate(pair):
                t0, c0 = time.perf_counter(), time.process_time()
                train_step(model, opt, batch, precision)
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.process_time() - c0)
        w = [statistics.median(x) * 1e3 for x in wall]
        c = [statistics.median(x) * 1e3 for x in cpu]
        print(f"| {preset} | {precision} | {rnnt} | {objective} | {w[0]:.0f} ({c[0]:.0f}) | {w[1]:.0f} ({c[1]:.0f}) | "
              f"{w[0] / w[1]:.2f}x | {c[0] / c[1]:.2f}x | {audio / (w[1] / 1e3):.0f} | {reps} |", flush=True)
        del pair
    return 0


# ---------------------------------------------------------------------------------------------- GPU


def gpu_peak_tflops(name: str) -> tuple[float, str] | None:
    """The datasheet dense bf16 peak for a GPU named ``name``, and the table entry it matched."""
    import re

    for key, tflops in GPU_BF16_PEAK_TFLOPS:  # whole words: "L4" must not match "L40S"
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name, flags=re.IGNORECASE):
            return tflops, key
    return None


def run_gpu(args: argparse.Namespace, configs: list[tuple[str, str, str, str]], device: torch.device) -> int:
    """The throughput table on a CUDA GPU: audio-seconds and tokens per second, TFLOP/s, MFU against
    both the bf16 matmul measured in this process and the datasheet peak, and peak GPU memory."""
    import just_asr

    name = torch.cuda.get_device_name(device)
    props = torch.cuda.get_device_properties(device)
    peak = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else gpu_peak_tflops(name)
    size = args.roof_size or 8192
    print(f"machine: {name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB), "
          f"host {cpu_model_name()}, {os.cpu_count()} CPUs; torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print_command_and_setup(args)
    print(f"just_asr from {Path(just_asr.__file__).parent}")
    print(f"matmul roof: torch.mm ({size}x{size}) @ ({size}x{size}) in the config's dtype on the GPU, measured right "
          f"after each config's timed steps; datasheet dense bf16 peak: "
          f"{f'{peak[0]:.0f} TFLOP/s ({peak[1]})' if peak else 'unknown (pass --peak-tflops)'}")
    # fp32 means fp32: no TF32 in matmuls or cuDNN convolutions
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    batches = {}
    for preset in args.presets:
        b = make_batch(args.batch, args.seconds, VOCAB[preset], args.spec_augment)
        audio = float(b["feature_lens"].sum()) * FRAME_SHIFT_S
        print(f"batch ({preset}): B={args.batch}, T_max={b['features'].size(1)} frames, U_max={b['targets'].size(1)}, "
              f"{int(b['target_lens'].sum())} target tokens, {audio:.1f} audio-s, vocab {VOCAB[preset]}, "
              f"spec_augment copy: {'yes' if args.spec_augment else 'no'}")
        batches[preset] = {k: v.to(device) for k, v in b.items()}
    print()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    rows, profiles = [], []
    for preset, precision, rnnt, objective in configs:
        batch = batches[preset]
        audio = float(batch["feature_lens"].sum()) * FRAME_SHIFT_S
        tokens = int(batch["target_lens"].sum())
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        model, opt, _ = build(preset, rnnt, objective, adamw=args.adamw, branch=args.rnnt_branch, device=str(device))
        n_params = sum(q.numel() for q in model.parameters())
        reps = repeats_for(args, preset)
        flops, compile_s, times, _, _ = time_config(model, opt, batch, precision, args, reps)
        med = statistics.median(times)
        mem = torch.cuda.max_memory_allocated(device) / 2**30
        roof, _ = matmul_roof(size, dtypes[precision], device=str(device))
        achieved = flops / med
        enc_frames = int(model.frontend.output_lengths(batch["feature_lens"]).sum())
        row = dict(preset=preset, precision=precision, rnnt=rnnt, objective=objective, params=n_params / 1e6,
                   compile_s=compile_s,
                   ms=med * 1e3, min=min(times) * 1e3, rt=audio / med, tok=tokens / med, frames=enc_frames / med,
                   gflop=flops / 1e9, tflops=achieved / 1e12, roof=roof / 1e12, mfu_roof=100 * achieved / roof,
                   mfu_peak=100 * achieved / (peak[0] * 1e12) if peak and precision == "bf16" else float("nan"),
                   mem=mem, reps=reps)
        rows.append(row)
        print(f"  {preset} {precision} {rnnt} {objective}: {row['ms']:.1f} ms/step (min {row['min']:.1f}), "
              f"{row['rt']:.0f} audio-s/s, {row['tok']:.0f} tokens/s, {row['tflops']:.1f} TFLOP/s, "
              f"MFU {row['mfu_peak']:.1f}% of the datasheet peak / {row['mfu_roof']:.1f}% of the measured matmul, "
              f"peak memory {mem:.1f} GiB"
              + (f", first (compiling) step {compile_s:.0f} s" if args.compile else ""), flush=True)
        if args.profile:
            profiles.append((f"{preset} {precision} {rnnt} {objective}",
                             profile_step(model, opt, batch, precision, args.top)))
        del model, opt
    print()
    print("| preset | params (M) | precision | RNN-T | objective | compiled | ms/step (median) | min | audio-s/s | "
          "text tokens/s | encoder frames/s | GFLOP/step | TFLOP/s | matmul roof TFLOP/s | MFU % (datasheet) | "
          "MFU % (measured roof) | peak GPU GiB | repeats |")
    print("|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        compiled = f"yes ({r['compile_s']:.0f} s)" if args.compile else "no"
        print(f"| {r['preset']} | {r['params']:.0f} | {r['precision']} | {r['rnnt']} | {r['objective']} | {compiled} | "
              f"{r['ms']:.1f} | {r['min']:.1f} | {r['rt']:.0f} | {r['tok']:.0f} | {r['frames']:.0f} | "
              f"{r['gflop']:.0f} | {r['tflops']:.1f} | {r['roof']:.0f} | {r['mfu_peak']:.1f} | {r['mfu_roof']:.1f} | "
              f"{r['mem']:.1f} | {r['reps']} |")
    for label, text in profiles:
        print(f"\n### Profile: {label}\n\n{text}")
    return 0


# ---------------------------------------------------------------------------------------------- main


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config: tuple[str, str, str, str], args: argparse.Namespace,
                queue) -> None:
    """One rank of ``--processes``: DDP over gloo, timed steps fenced by barriers; rank 0 reports
    ``(flops of one rank's step, wall times, audio seconds of one rank's batch)`` on ``queue``."""
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(args.src).resolve()) if args.src else str(ROOT / "src"))
    apply_malloc(args.malloc)  # each spawned rank, as each rank of just-asr fit tunes itself when asked
    from datetime import timedelta

    # a rank that dies leaves the others in a collective: give up after 10 minutes, not gloo's 30
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(minutes=10))
    try:
        preset, precision, rnnt, objective = config
        model, opt, _ = build(preset, rnnt, objective, adamw=args.adamw, branch=args.rnnt_branch)
        batch = make_batch(args.batch, args.seconds, VOCAB[preset], args.spec_augment, seed=rank)
        flops = count_flops(model, batch, precision) if rank == 0 else 0.0
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        for _ in range(args.warmup):
            train_step(ddp, opt, batch, precision)
        times = []
        for _ in range(repeats_for(args, preset)):
            dist.barrier()
            t0 = time.perf_counter()
            train_step(ddp, opt, batch, precision)
            dist.barrier()
            times.append(time.perf_counter() - t0)
        if rank == 0:
            queue.put((flops, times, float(batch["feature_lens"].sum()) * FRAME_SHIFT_S))
    finally:
        dist.destroy_process_group()


def run_processes(args: argparse.Namespace, configs: list[tuple[str, str, str, str]]) -> int:
    """``--processes N``: data-parallel steps on the CPU (see the module docstring)."""
    import torch.multiprocessing as mp

    world = args.processes
    print(f"machine: {cpu_model_name()} ({cpu_flags()}), {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{world} processes x {args.threads} threads (DDP, gloo); {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"load average {os.getloadavg()[0]:.2f}")
    print_command_and_setup(args)
    print(f"roof: torch.mm {args.roof_size}^3 with "
          f"{world * args.threads} threads in the parent process\n")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    ctx = mp.get_context("spawn")
    rows = []
    import queue as queue_mod

    for config in configs:
        queue = ctx.Queue()
        port = _free_port()
        procs = [ctx.Process(target=_ddp_worker, args=(r, world, port, config, args, queue)) for r in range(world)]
        for proc in procs:
            proc.start()
        result = None
        while result is None:  # read before joining (a full pipe would block the sender); stop if a rank died
            try:
                result = queue.get(timeout=1.0)
            except queue_mod.Empty:
                if any(proc.exitcode not in (None, 0) for proc in procs) or not any(p.is_alive() for p in procs):
                    break
        for proc in procs:
            proc.join(timeout=None if result is not None else 5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        if result is None or any(proc.exitcode != 0 for proc in procs):
            print(f"benchmarks/train_step.py: a rank failed (exit codes {[proc.exitcode for proc in procs]})",
                  file=sys.stderr)
            return 1
        flops, times, audio = result
        med = statistics.median(times)
        torch.set_num_threads(world * args.threads)
        roof, _ = matmul_roof(args.roof_size, dtypes[config[1]])
        achieved = world * flops / med
        rows.append((*config, med * 1e3, min(times) * 1e3, world * audio / med, world * flops / 1e9, achieved / 1e9,
                     roof / 1e9, 100 * achieved / roof, len(times)))
        print(f"  {' '.join(config)}: {med * 1e3:.0f} ms/step, {world * audio / med:.0f}x real time", flush=True)
    print()
    print("| preset | precision | RNN-T | objective | processes x threads | ms/step (median) | min | x real time | "
          "GFLOP/step (all ranks) | GFLOP/s | roof GFLOP/s | roof % | repeats |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {world} x {args.threads} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} | "
              f"{r[7]:.3f} | {r[8]:.1f} | {r[9]:.0f} | {r[10]:.1f} | {r[11]} |")
    return 0


def _child_argv(argv: list[str]) -> list[str]:
    """``argv`` without ``--compare-malloc``, ``--malloc`` and ``--result-json`` (and their values)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--compare-malloc", "--malloc", "--result-json"):
            skip = "=" not in a
            continue
        out.append(a)
    return out


def run_compare_malloc(args: argparse.Namespace, argv: list[str]) -> int:
    """``--compare-malloc ROUNDS``: each round runs this script with the other arguments twice, in child
    processes, ``--malloc default`` and ``--malloc tuned`` (odd rounds in that order, even rounds the
    other way round); prints their medians, faults per step and peak RSS, the speed-up per round, and
    the median speed-up over the rounds."""
    print(f"machine: {cpu_model_name()} ({cpu_flags()}), {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.2f}")
    print_command_and_setup(args)
    runtime = checkout_runtime()
    # the children compare glibc's defaults with the tuning: neither may inherit a malloc setting
    env = {k: v for k, v in os.environ.items() if k != runtime.ENV_VAR and k not in runtime.GLIBC_MALLOC_ENV}
    reason = runtime.malloc_set_by_environment(env)
    if reason is not None:
        print(f"train_step.py: --compare-malloc compares glibc's malloc settings, but {reason}", file=sys.stderr)
        return 2
    base = [sys.executable, str(Path(__file__).resolve()), *_child_argv(argv)]
    print(f"each round: {' '.join(Path(a).name if i < 2 else a for i, a in enumerate(base))} --malloc default|tuned "
          "(odd rounds default first, even rounds tuned first; without JUST_ASR_MALLOC_TUNING and MALLOC_*_)")
    print()
    header = ("| round | preset | precision | RNN-T | objective | default: ms/step (CPU ms) | faults/step | peak RSS MiB "
              "| tuned: ms/step (CPU ms) | faults/step | peak RSS MiB | speed-up (wall) | speed-up (CPU) | x real time tuned |")
    ratios: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(1, args.compare_malloc + 1):
            results = {}
            for mode in ("default", "tuned") if rnd % 2 else ("tuned", "default"):
                out = Path(tmp) / f"{mode}.json"
                proc = subprocess.run([*base, "--malloc", mode, "--result-json", str(out)], capture_output=True,
                                      text=True, env=env)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stdout + proc.stderr)
                    print(f"train_step.py: the --malloc {mode} child of round {rnd} exited with {proc.returncode}",
                          file=sys.stderr)
                    return 1
                results[mode] = json.loads(out.read_text())
                if results[mode]["malloc_tuned"] != (mode == "tuned"):
                    print(f"train_step.py: the --malloc {mode} child ran with: {results[mode]['malloc']}", file=sys.stderr)
                    return 1
            if rnd == 1:
                print(f"tuned children: {results['tuned']['malloc']}\n")
                print(header)
                print("|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for d, t in zip(results["default"]["rows"], results["tuned"]["rows"]):
                key = (d["preset"], d["precision"], d["rnnt"], d["objective"])
                ratios.setdefault(key, []).append(d["ms"] / t["ms"])
                print(f"| {rnd} | {' | '.join(key)} | {d['ms']:.0f} ({d['cpu_ms']:.0f}) | {d['faults_per_step']:.0f} "
                      f"| {d['max_rss_mib']:.0f} | {t['ms']:.0f} ({t['cpu_ms']:.0f}) | {t['faults_per_step']:.0f} "
                      f"| {t['max_rss_mib']:.0f} | {d['ms'] / t['ms']:.2f}x | {d['cpu_ms'] / t['cpu_ms']:.2f}x "
                      f"| {t['x_real_time']:.0f} |", flush=True)
    print()
    for key, r in ratios.items():
        print(f"{' '.join(key)}: median speed-up (wall) over {len(r)} rounds {statistics.median(r):.2f}x "
              f"(min {min(r):.2f}x, max {max(r):.2f}x)")
    return 0


def _selected(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    only = None
    if args.only:
        only = set(args.only.split(","))
    out = []
    for preset in args.presets:
        for precision in PRECISIONS:
            for rnnt in RNNTS:
                for objective in OBJECTIVES:
                    if only is not None and not only <= {precision, rnnt, objective}:
                        continue
                    out.append((preset, precision, rnnt, objective))
    return out


def main(argv: list[str] | None = None) -> int:
    # no abbreviations: --compare-malloc passes the other options on to its children by name
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--presets", nargs="+", default=["tiny"], choices=sorted(VOCAB))
    p.add_argument("--only", default=None,
                   help="comma-separated filter, e.g. 'bf16,full,just' (any of fp32/bf16, full/pruned, just/supervised)")
    p.add_argument("--batch", type=int, default=12, help="utterances per batch")
    p.add_argument("--seconds", type=float, default=1.6, help="mean utterance duration (s)")
    p.add_argument("--spec-augment", action=argparse.BooleanOptionalAction, default=True,
                   help="carry a supervised_features copy (as with data.spec_augment)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--base-repeats", type=int, default=None, help="repeats for presets other than tiny (default --repeats)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--roof-size", type=int, default=None,
                   help="side of the square matmul that measures the roof (default 1024 on CPU, 8192 on a GPU)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default) or cuda[:N]: run the steps on that GPU (see 'On a GPU' in the docstring)")
    p.add_argument("--compile", action="store_true",
                   help="run every conformer block through torch.compile(dynamic=True) (the first step, "
                        "which compiles, is timed apart)")
    p.add_argument("--compile-static", action="store_true",
                   help="with --compile: dynamic=False (one graph per shape; the benchmark's batch never changes)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="GPU: the datasheet dense bf16 peak for the MFU column (default: looked up by device name)")
    p.add_argument("--profile", action="store_true", help="print the top ops and per-part shares per config")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--rnnt-branch", choices=("masked", "unmasked"), default="masked",
                   help="the JUST objective's RNN-T branch (default masked: one encoder pass, as BENCHMARKS.md's "
                        "figures unless they say otherwise; the presets default to unmasked, which adds a "
                        "second encoder pass over the transcribed rows)")
    p.add_argument("--adamw", choices=("default", "fused", "for-loop"), default="default",
                   help="AdamW implementation: the project's default (fused on CPU/CUDA), forced fused, or "
                   "torch's per-parameter for-loop (what build_optimizer gave before 2026-11-24's change)")
    p.add_argument("--src", default=None, metavar="DIR",
                   help="import just_asr from DIR instead of this checkout's src/ (before/after runs: "
                        "git archive COMMIT src configs | tar -x -C /tmp/before; --src /tmp/before/src)")
    p.add_argument("--compare-src", default=None, metavar="DIR",
                   help="before/after in one process: the model built from DIR/just_asr (e.g. an older commit's "
                        "src, extracted with: git archive COMMIT src configs | tar -x -C /tmp/before; then "
                        "DIR=/tmp/before/src, and the presets come from /tmp/before/configs) against this "
                        "checkout's, same batch, steps interleaved")
    p.add_argument("--candidate-src", default=None, metavar="DIR",
                   help="with --compare-src: the candidate model from DIR/just_asr instead of this checkout")
    p.add_argument("--compare-adamw", action="store_true",
                   help="before/after in one process: the for-loop AdamW against the project's (fused)")
    p.add_argument("--malloc", choices=("default", "tuned"), default="default",
                   help="default: glibc's own malloc settings, as just-asr fit; tuned: just_asr.runtime.tune_malloc() "
                        "at start-up, as JUST_ASR_MALLOC_TUNING=1 just-asr fit")
    p.add_argument("--compare-malloc", type=int, default=0, metavar="ROUNDS",
                   help="run the other arguments in 2 x ROUNDS child processes, --malloc default and tuned "
                        "back to back in each round (odd rounds default first, even rounds tuned first), "
                        "and print the speed-up (CPU, one process per run)")
    p.add_argument("--result-json", default=None, metavar="PATH", help="also write the table's rows to PATH (JSON)")
    p.add_argument("--prewarm-batch", type=int, default=0, metavar="B",
                   help="before the warm-up, two untimed steps on a batch of B utterances of --prewarm-seconds "
                        "(default 2 x --seconds) mean duration: the allocator then starts from where a training "
                        "loop's varied batch shapes leave it (default 0: none)")
    p.add_argument("--prewarm-seconds", type=float, default=None,
                   help="mean utterance duration of the --prewarm-batch batch (default 2 x --seconds)")
    p.add_argument("--processes", type=int, default=1,
                   help="CPU: N data-parallel processes (DDP over gloo) of --threads threads each, as just-asr fit "
                        "--trainer.devices N --trainer.strategy ddp (default 1: one process)")
    p.add_argument("--loader", default=None, metavar="MANIFEST_DIR", help="time the data loader instead")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--cmvn", default=None)
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--loader-duration", type=float, default=20.0, help="data.max_duration (s per batch)")
    p.add_argument("--loader-batches", type=int, default=50)
    p.add_argument("--loader-warmup", type=int, default=5)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    sys.path.insert(0, str(Path(args.src).resolve()) if args.src else str(ROOT / "src"))
    if args.result_json and (args.compare_src or args.compare_adamw or args.processes > 1 or args.loader
                             or args.device != "cpu" or args.compare_malloc):
        p.error("--result-json is written by the plain CPU table only (not with --compare-src/--compare-adamw/"
                "--processes/--loader/--device/--compare-malloc)")
    if args.prewarm_batch < 0 or (args.prewarm_seconds is not None and not args.prewarm_seconds > 0):
        p.error("--prewarm-batch must be >= 0 and --prewarm-seconds positive")
    if args.prewarm_seconds is not None and not args.prewarm_batch:
        p.error("--prewarm-seconds needs --prewarm-batch")
    if args.prewarm_batch and (args.compare_src or args.compare_adamw or args.processes > 1 or args.loader
                               or args.device != "cpu"):
        # (on a GPU the larger batch would also set the peak-memory column)
        p.error("--prewarm-batch is for the plain CPU table (and --compare-malloc), not --compare-src/"
                "--compare-adamw/--processes/--loader/--device")
    if args.compare_malloc:
        if args.compare_malloc < 1:
            p.error(f"--compare-malloc must be >= 1, got {args.compare_malloc}")
        if (args.compare_src or args.compare_adamw or args.profile or args.compile or args.processes > 1
                or args.loader or args.device != "cpu"):
            p.error("--compare-malloc runs plain CPU configs (no --compare-src/--compare-adamw/--profile/"
                    "--compile/--processes/--loader/--device)")
        return run_compare_malloc(args, list(sys.argv[1:] if argv is None else argv))
    try:
        args.malloc_tuned, args.malloc_applied = apply_malloc(args.malloc)
    except ValueError as exc:
        p.error(str(exc))
    torch.set_num_threads(args.threads)
    if args.loader is not None:
        return run_loader(args)

    configs = _selected(args)
    if not configs:
        p.error(f"--only {args.only!r} selects no config")
    if args.compile_static and not args.compile:
        p.error("--compile-static needs --compile")
    if args.processes < 1:
        p.error(f"--processes must be >= 1, got {args.processes}")
    device = torch.device(args.device)
    if args.processes > 1 and device.type != "cpu":
        p.error("--processes runs on the CPU only")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        if args.compare_src or args.compare_adamw:
            p.error("--compare-src/--compare-adamw run on the CPU only")
        return run_gpu(args, configs, device)
    if device.type != "cpu":
        p.error(f"--device {args.device}: only cpu and cuda[:N] are supported")
    if args.peak_tflops is not None:
        p.error("--peak-tflops is for --device cuda (the CPU figures use the measured matmul roof)")
    if args.compile and (args.compare_src or args.compare_adamw or args.profile):
        p.error("--compile does not combine with --compare-src/--compare-adamw/--profile")
    if args.roof_size is None:
        args.roof_size = 1024
    if args.processes > 1:
        if args.compare_src or args.compare_adamw or args.profile or args.compile:
            p.error("--processes does not combine with --compare-src/--compare-adamw/--profile/--compile")
        return run_processes(args, configs)
    if args.compare_src or args.compare_adamw:
        return run_compare(args, configs)
    print(f"machine: {cpu_model_name()} ({cpu_flags()}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"load average {os.getloadavg()[0]:.2f}")
    print_command_and_setup(args)
    import just_asr

    print(f"just_asr from {Path(just_asr.__file__).parent}")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    n = args.roof_size
    print(f"matmul roof: torch.mm ({n}x{n}) @ ({n}x{n}) in the config's dtype, measured right after each config's timed steps")
    batches = {preset: make_batch(args.batch, args.seconds, VOCAB[preset], args.spec_augment) for preset in args.presets}
    for preset, b in batches.items():
        audio = float(b["feature_lens"].sum()) * FRAME_SHIFT_S
        print(f"batch ({preset}): B={args.batch}, T_max={b['features'].size(1)} frames, U_max={b['targets'].size(1)}, "
              f"{audio:.1f} audio-s, vocab {VOCAB[preset]}, spec_augment copy: {'yes' if args.spec_augment else 'no'}")
    print()
    rows = []
    profiles = []
    for preset, precision, rnnt, objective in configs:
        model, opt, _ = build(preset, rnnt, objective, adamw=args.adamw, branch=args.rnnt_branch)
        batch = batches[preset]
        audio = float(batch["feature_lens"].sum()) * FRAME_SHIFT_S
        reps = repeats_for(args, preset)
        flops, compile_s, times, cpu, faults = time_config(model, opt, batch, precision, args, reps)
        if args.compile:
            print(f"  {preset} {precision} {rnnt} {objective}: first (compiling) step {compile_s:.0f} s", flush=True)
        med = statistics.median(times)
        cpu_med = statistics.median(cpu)
        roof, roof_cpu = matmul_roof(args.roof_size, dtypes[precision])
        achieved = flops / med
        roof_pct_cpu = 100 * (flops / cpu_med) / roof_cpu
        row = (preset, precision, rnnt, objective, med * 1e3, min(times) * 1e3, audio / med, flops / 1e9,
               achieved / 1e9, 100 * achieved / roof, reps, cpu_med * 1e3, roof / 1e9, roof_pct_cpu, faults,
               max_rss_mb())
        rows.append(row)
        print(f"  {preset} {precision} {rnnt} {objective}: {med * 1e3:.0f} ms/step (min {min(times) * 1e3:.0f}), "
              f"{audio / med:.0f}x real time, {flops / 1e9:.2f} GFLOP/step, {100 * achieved / roof:.1f}% "
              f"of the matmul roof, {faults:.0f} page faults/step", flush=True)
        if args.profile:
            profiles.append((f"{preset} {precision} {rnnt} {objective}",
                             profile_step(model, opt, batch, precision, args.top)))
        del model, opt
    print()
    print("| preset | precision | RNN-T | objective | ms/step (median) | min | CPU ms/step | x real time | "
          "GFLOP/step | GFLOP/s | roof GFLOP/s | roof % | roof % (CPU time) | faults/step | peak RSS MiB | repeats |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.0f} | {r[5]:.0f} | {r[11]:.0f} | {r[6]:.0f} | "
              f"{r[7]:.2f} | {r[8]:.1f} | {r[12]:.0f} | {r[9]:.1f} | {r[13]:.1f} | {r[14]:.0f} | {r[15]:.0f} | {r[10]} |")
    print("(peak RSS: the process's so far, after each config's steps and roof matmul)")
    if args.result_json:
        keys = ("preset", "precision", "rnnt", "objective", "ms", "min_ms", "x_real_time", "gflop", "gflops",
                "roof_pct", "repeats", "cpu_ms", "roof_gflops", "roof_pct_cpu", "faults_per_step", "max_rss_mib")
        Path(args.result_json).write_text(json.dumps({
            "malloc_tuned": args.malloc_tuned, "malloc": args.malloc_applied,
            "rows": [dict(zip(keys, r)) for r in rows]}))
    for name, text in profiles:
        print(f"\n### Profile: {name}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
