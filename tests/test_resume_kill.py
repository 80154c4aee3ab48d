"""Exact resume after SIGKILL, on the tiny espeak-ng corpus, through ``just-asr fit`` subprocesses.

One uninterrupted run of ``STEPS`` steps is the reference. A second run in another folder is
killed twice with SIGKILL and resumed with ``--resume`` each time:

1. in the middle of a training step between two checkpoints (after the forward pass of step 6,
   one step after the checkpoint of step 4: the resumed run must redo steps 5-6 and continue
   the data stream mid-epoch);
2. in the middle of writing a checkpoint (``step000008.ckpt`` half written to
   ``step000008.ckpt.tmp``): the previous ``last.ckpt`` (a hard link to ``step000006.ckpt``) must
   still load and be resumed from;
3. in the middle of linking ``last.ckpt`` to the new ``step000008.ckpt`` (the link made as
   ``last.ckpt.tmp``, not yet renamed): ``last.ckpt`` must still be step 6's.

After the last resume, the final checkpoint equals the reference's exactly (``torch.equal`` on
every weight, optimiser moment, EMA weight, scheduler and loop counter), and every step trained
on exactly the same cut ids as the reference. Dropout is on (tiny preset) and SpecAugment on.

The kills are placed by a small driver script (below) that patches the training step and the
checkpoint writer of the child process before calling the CLI; nothing in the package knows
about the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 10
#: small sampler buffers for tests (the defaults buffer 40k cuts of the endless stream first)
FAST = dict(num_cuts_for_bins_estimate=200, buffer_size=500, shuffle_buffer_size=500)

#: child-process driver: 1 thread; optional SIGKILL inside a training step or inside a checkpoint write
DRIVER = r'''
import io, json, os, signal, sys
import torch
torch.set_num_threads(1)
from just_asr.train.module import JustLightningModule
import just_asr.train.checkpointing as ck

log_path = os.environ["STEP_LOG"]
kill_step = int(os.environ.get("KILL_AT_STEP", "-1"))
kill_write = int(os.environ.get("KILL_IN_WRITE", "-1"))
_step = JustLightningModule.training_step

def training_step(self, batch, batch_idx):
    out = _step(self, batch, batch_idx)  # forward done, backward and update not yet
    with open(log_path, "a") as f:
        f.write(json.dumps([self.global_step, list(batch["cut_ids"])]) + "\n")
    if self.global_step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

JustLightningModule.training_step = training_step
# small sampler buffers: the defaults buffer 40k cuts of the endless stream before the first batch
import functools
import just_asr.data.loader as loader_mod
loader_mod.make_train_dataloader = functools.partial(
    loader_mod.make_train_dataloader, num_cuts_for_bins_estimate=200, buffer_size=500, shuffle_buffer_size=500)
_write = ck._write_file
_writes = [0]

def write_file(checkpoint, tmp):
    _writes[0] += 1
    if _writes[0] == kill_write:  # half the bytes reach the temporary file, then the process dies
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(checkpoint, tmp)

ck._write_file = write_file
kill_link = int(os.environ.get("KILL_IN_LINK", "-1"))
_link = ck.atomic_link
_links = [0]

def atomic_link(src, dst):
    _links[0] += 1
    if _links[0] == kill_link:  # the new link exists under its temporary name, then the process dies
        os.link(src, str(dst) + ck.TMP_SUFFIX)
        os.kill(os.getpid(), signal.SIGKILL)
    return _link(src, dst)

ck.atomic_link = atomic_link
from just_asr.cli.main import main
sys.exit(main(sys.argv[1:]))
'''

from data_helpers import SMALL_MODEL_ARGS as SMALL  # a ~50k-parameter model for `fit` runs


@pytest.fixture(scope="module")
def prepared(tiny_corpus_dir, tmp_path_factory):
    from just_asr.data.dataset import cut_text
    from just_asr.data.mls import load_manifests, prepare_mls
    from just_asr.data.tokenizer import train_tokenizer

    work = tmp_path_factory.mktemp("resume_kill")
    prepare_mls(tiny_corpus_dir, work / "manifests", langs=["en", "pl"], splits=("train", "dev"), progress=False)
    texts = {l: [cut_text(c) for c in load_manifests(work / "manifests", l, "train")] for l in ("en", "pl")}
    tok = train_tokenizer(texts, work / "tok", vocab_size=96)
    (work / "driver.py").write_text(DRIVER)
    return work, work / "manifests", tok


def fit_args(run: Path, manifests: Path, tok: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs/model/tiny.yaml"), "--config", str(ROOT / "configs/just.yaml"), *SMALL,
        "--data.manifest_dir", str(manifests), "--data.tokenizer", str(tok), "--data.langs", "[en,pl]",
        "--data.max_duration", "6", "--data.num_workers", "0", "--data.seed", "3",
        "--trainer.precision", "32", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_steps", str(STEPS), "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false", "--trainer.default_root_dir", str(run),
        "--periodic_checkpoint.every_n_train_steps", "2", "--periodic_checkpoint.save_top_k", "-1",
        "--model.warmup_steps", "4", "--model.seed", "11", "--seed_everything", "5", *extra,
    ]


def fit(work: Path, run: Path, manifests: Path, tok: Path, *extra: str, env: dict[str, str] | None = None):
    """``just-asr fit`` in a child process (through DRIVER), so that it can be killed."""
    args = fit_args(run, manifests, tok, *extra)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "STEP_LOG": str(run / "steps.jsonl"),
                "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    run.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(work / "driver.py"), *args], env=full_env, capture_output=True,
                          text=True, timeout=300)


def steps_log(run: Path) -> dict[int, list[str]]:
    """global step -> cut ids of the batch trained at that step (the latest attempt wins)."""
    out: dict[int, list[str]] = {}
    for line in (run / "steps.jsonl").read_text().splitlines():
        step, ids = json.loads(line)
        out[step] = ids
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where: str = "") -> None:
    """Exact equality of nested checkpoint contents (tensors with torch.equal)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def fit_in_process(run: Path, manifests: Path, tok: Path, monkeypatch) -> int:
    """The uninterrupted reference run, in this process (saves a child's start-up), with the same
    single CPU thread and the same per-step log as DRIVER."""
    from just_asr.cli.main import main
    from just_asr.train.module import JustLightningModule

    step = JustLightningModule.training_step

    def training_step(self, batch, batch_idx):
        out = step(self, batch, batch_idx)
        with open(run / "steps.jsonl", "a") as f:
            f.write(json.dumps([self.global_step, list(batch["cut_ids"])]) + "\n")
        return out

    monkeypatch.setattr(JustLightningModule, "training_step", training_step)
    import functools

    import just_asr.data.loader as loader_mod

    monkeypatch.setattr(loader_mod, "make_train_dataloader", functools.partial(loader_mod.make_train_dataloader, **FAST))
    run.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(fit_args(run, manifests, tok))
    finally:
        torch.set_num_threads(threads)


def test_sigkill_mid_step_and_mid_checkpoint_then_resume_is_exact(prepared, monkeypatch):
    work, manifests, tok = prepared
    ref_run, run = work / "reference", work / "killed"

    assert fit_in_process(ref_run, manifests, tok, monkeypatch) == 0
    ref_ck = load(ref_run / "checkpoints" / "last.ckpt")
    assert ref_ck["global_step"] == STEPS
    ref_steps = steps_log(ref_run)
    assert sorted(ref_steps) == list(range(STEPS))

    # 1) SIGKILL in the middle of step 6 (global_step 5 -> 6); the last checkpoint is step 4
    p = fit(work, run, manifests, tok, env={"KILL_AT_STEP": "5"})
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    ck = run / "checkpoints"
    assert load(ck / "last.ckpt")["global_step"] == 4
    assert load(ck / "last.ckpt")["JustDataModule"]["train_batches_consumed"] == 4
    assert max(steps_log(run)) == 5

    # 2) --resume, SIGKILL while writing the 2nd checkpoint file of the resumed run: step 6 writes
    # step000006.ckpt (last.ckpt becomes a hard link to it), step 8 dies inside step000008.ckpt
    p = fit(work, run, manifests, tok, "--resume", env={"KILL_IN_WRITE": "2"})
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    assert "resuming from" in p.stdout
    assert (ck / "step000008.ckpt.tmp").is_file()  # the torn write, never renamed into place
    assert not (ck / "step000008.ckpt").exists()
    with pytest.raises(Exception):
        torch.load(ck / "step000008.ckpt.tmp", weights_only=True)
    assert load(ck / "last.ckpt")["global_step"] == 6  # the previous checkpoint is intact
    assert not (ck / "last.ckpt").is_symlink() and (ck / "last.ckpt").samefile(ck / "step000006.ckpt")

    # 3) --resume, SIGKILL while linking last.ckpt to the new step000008.ckpt
    p = fit(work, run, manifests, tok, "--resume", env={"KILL_IN_LINK": "1"})
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    assert "removed" in p.stdout and "step000008.ckpt.tmp" in p.stdout
    assert (ck / "last.ckpt.tmp").samefile(ck / "step000008.ckpt")  # made, never renamed into place
    assert load(ck / "last.ckpt")["global_step"] == 6
    assert load(ck / "step000008.ckpt")["global_step"] == 8

    # 4) --resume to the end
    p = fit(work, run, manifests, tok, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "removed" in p.stdout and "last.ckpt.tmp" in p.stdout
    assert not (ck / "last.ckpt.tmp").exists()
    assert (ck / "last.ckpt").samefile(ck / f"step{STEPS:06d}.ckpt")
    assert "weights_only" not in p.stderr  # Lightning's "weights_only was not set" warning is gone
    final = load(ck / "last.ckpt")

    # the data stream was continued mid-epoch: every step saw the reference's batch
    assert steps_log(run) == ref_steps
    # and the final state is bit-identical
    assert final["global_step"] == STEPS
    assert final["JustDataModule"]["train_batches_consumed"] == STEPS
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "ema_state_dict"):
        assert_same(ref_ck[key], final[key], key)
    # the intermediate checkpoints also match the reference's
    for step in (4, 6, 8):
        assert_same(load(ref_run / "checkpoints" / f"step{step:06d}.ckpt")["state_dict"],
                    load(ck / f"step{step:06d}.ckpt")["state_dict"], f"step {step}")


# ---------------------------------------------------------------- the pieces, in process (fast)
@pytest.fixture(scope="module")
def small_manifests(tmp_path_factory):
    from data_helpers import write_mls_corpus
    from just_asr.data.mls import prepare_mls

    root = tmp_path_factory.mktemp("resumable")
    write_mls_corpus(root / "corpus", langs=("pl", "de"), splits={"train": 10, "dev": 1, "test": 1}, limited=False)
    prepare_mls(root / "corpus", root / "manifests", splits=("train",), progress=False)
    return root / "manifests"



def test_resumable_sampler_continues_the_stream_with_the_same_specaugment(small_manifests):
    import itertools

    from just_asr.data.augment import SpecAugment
    from just_asr.data.loader import ResumableSampler, make_train_dataloader
    from just_asr.data.mls import load_manifests

    cuts = {l: load_manifests(small_manifests, l, "train") for l in ("pl", "de")}

    def loader(workers: int = 0):
        return make_train_dataloader(cuts, None, max_duration=2.0, num_buckets=2, seed=5, num_workers=workers,
                                     spec_augment=SpecAugment(), **FAST)

    ref = list(itertools.islice(loader(), 10))
    assert len({tuple(b["cut_ids"]) for b in ref}) > 5  # a real, varied stream
    dl = loader()
    assert isinstance(dl.sampler, ResumableSampler)
    dl.sampler.resume_from(6)
    assert dl.sampler.start == 6
    resumed = list(itertools.islice(dl, 4))
    assert dl.sampler.start == 0  # the skip applies once
    for a, b in zip(ref[6:], resumed):
        assert a["cut_ids"] == b["cut_ids"]
        assert torch.equal(a["features"], b["features"])
        assert torch.equal(a["supervised_features"], b["supervised_features"])  # same SpecAugment masks
    assert not torch.equal(ref[6]["supervised_features"], ref[6]["features"])
    # the masks depend on the batch index only, not on the process that made the batch
    with_worker = list(itertools.islice(loader(workers=1), 3))
    for a, b in zip(ref, with_worker):
        assert a["cut_ids"] == b["cut_ids"] and torch.equal(a["supervised_features"], b["supervised_features"])
    # a second iterator created before the first is used still skips (Lightning may call iter() twice)
    dl = loader()
    dl.sampler.resume_from(3)
    iter(dl)
    assert next(iter(dl))["cut_ids"] == ref[3]["cut_ids"]
    with pytest.raises(ValueError, match="batches_consumed must be >= 0"):
        dl.sampler.resume_from(-1)


def test_datamodule_state_round_trip_and_changed_settings(small_manifests, monkeypatch):
    import functools
    import itertools

    import just_asr.data.loader as loader_mod
    from just_asr.train.datamodule import JustDataModule

    # small sampler buffers (the defaults buffer 20k cuts of the endless stream before the first batch)
    monkeypatch.setattr(loader_mod, "make_train_dataloader", functools.partial(loader_mod.make_train_dataloader, **FAST))

    def dm(**kw) -> JustDataModule:
        args = dict(langs=["pl", "de"], max_duration=2.0, num_buckets=2, seed=4, spec_augment={})
        return JustDataModule(str(small_manifests), **{**args, **kw})

    ref = [b["cut_ids"] for b in itertools.islice(dm().train_dataloader(), 8)]
    first = dm()
    assert first.state_dict()["train_batches_consumed"] == 0
    first._batches_consumed = 5
    state = first.state_dict()
    assert state["train_batches_consumed"] == 5 and state["train_stream"]["max_duration"] == 2.0
    # plain types only: survives a weights_only=True round trip
    import io

    buf = io.BytesIO()
    torch.save({"JustDataModule": state}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["JustDataModule"]
    second = dm()
    second.load_state_dict(state)  # before the loader exists (Lightning's order)
    assert [b["cut_ids"] for b in itertools.islice(second.train_dataloader(), 3)] == ref[5:8]
    assert second.state_dict()["train_batches_consumed"] == 5
    third = dm()
    loader = third.train_dataloader()
    third.load_state_dict(state)  # after it exists
    assert next(iter(loader))["cut_ids"] == ref[5]
    with pytest.warns(UserWarning, match=r"max_duration: 2\.0 -> 3\.0.*skipping its 5 consumed batches"):
        dm(max_duration=3.0).load_state_dict(state)


def test_consumed_count_follows_the_stream_index(small_manifests):
    """The count of consumed batches is the last trained batch's ``stream_index`` + 1 (taken out of
    the batch before it reaches the model): a batch the loader left out as unusable counts as
    consumed, so a resumed run does not read it again; batches without the index count one each."""
    from types import SimpleNamespace

    from just_asr.train.datamodule import JustDataModule

    dm = JustDataModule(str(small_manifests), langs=["pl", "de"], max_duration=2.0, num_buckets=2, seed=4)
    dm.trainer = SimpleNamespace(training=True, world_size=1, global_rank=0)
    batch = {"cut_ids": ["a"], "stream_index": 0}
    assert dm.on_before_batch_transfer(batch, 0) is batch and "stream_index" not in batch
    assert dm.state_dict()["train_batches_consumed"] == 1
    dm.on_before_batch_transfer({"cut_ids": ["b"], "stream_index": 3}, 0)  # batches 1 and 2 were left out
    assert dm.state_dict()["train_batches_consumed"] == 4
    dm.on_before_batch_transfer({"cut_ids": ["c"]}, 0)  # e.g. a Shar stream: no index
    assert dm.state_dict()["train_batches_consumed"] == 5
    dm.trainer = SimpleNamespace(training=False, world_size=1, global_rank=0)
    dev = {"cut_ids": ["d"]}
    dm.on_before_batch_transfer(dev, 0)  # validation batches are not counted
    assert dm.state_dict()["train_batches_consumed"] == 5


def test_resume_from_the_first_periodic_checkpoint_keeps_last_ckpt_current(prepared):
    """Killed after the run's first periodic checkpoint (step 2), whose state was dumped before
    Lightning recorded last.ckpt's path: the resumed run must go on linking last.ckpt (not start a
    last-v1.ckpt that --resume would never read)."""
    work, manifests, tok = prepared
    run = work / "early"
    p = fit(work, run, manifests, tok, env={"KILL_AT_STEP": "3"})
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    ck = run / "checkpoints"
    assert load(ck / "last.ckpt")["global_step"] == 2 and (ck / "last.ckpt").samefile(ck / "step000002.ckpt")
    p = fit(work, run, manifests, tok, "--resume", env={"KILL_AT_STEP": "5"})
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-3000:])
    assert "resuming from" in p.stdout
    assert not list(ck.glob("last-v*.ckpt"))
    assert load(ck / "last.ckpt")["global_step"] == 4 and (ck / "last.ckpt").samefile(ck / "step000004.ckpt")
