"""Numeric faults through the real pipeline (``just-asr fit`` on the tiny espeak-ng corpus).

A wrapper around the training dataset turns the features of chosen batches of the stream into NaN
(the stream index of a batch is its global step here: one batch per step, no accumulation).

* one poisoned batch: its update is skipped (weights and optimiser state after that step are
  bit-identical to those before it), a warning names the step and exactly that batch's cut ids,
  training continues (the next step changes the weights), the skip counter in the checkpoint is
  1, and no NaN reached any parameter or buffer;
* K poisoned batches in a row (``--nonfinite_guard.max_consecutive K``): the run stops with exit
  status 1 and an error naming K and the last batch's cut ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from just_asr.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]

from data_helpers import SMALL_MODEL_ARGS as SMALL  # a ~50k-parameter model for `fit` runs


@pytest.fixture(scope="module")
def prepared(tiny_corpus_dir, tmp_path_factory):
    from just_asr.data.dataset import cut_text
    from just_asr.data.mls import load_manifests, prepare_mls
    from just_asr.data.tokenizer import train_tokenizer

    work = tmp_path_factory.mktemp("numeric_faults")
    prepare_mls(tiny_corpus_dir, work / "manifests", langs=["en", "pl"], splits=("train",), progress=False)
    texts = {l: [cut_text(c) for c in load_manifests(work / "manifests", l, "train")] for l in ("en", "pl")}
    return work, work / "manifests", train_tokenizer(texts, work / "tok", vocab_size=96)


def fit_args(root: Path, manifests: Path, tok: Path, steps: int, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs/model/tiny.yaml"), "--config", str(ROOT / "configs/just.yaml"), *SMALL,
        "--data.manifest_dir", str(manifests), "--data.tokenizer", str(tok), "--data.langs", "[en,pl]",
        "--data.max_duration", "6", "--data.num_workers", "0",
        "--trainer.precision", "32", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root), "--periodic_checkpoint.every_n_train_steps", "1",
        "--periodic_checkpoint.save_top_k", "-1", "--model.warmup_steps", "2", *extra,
    ]


@pytest.fixture()
def poison(monkeypatch):
    """``poison(indices)``: NaN features for the stream batches with those indices; returns a dict
    index -> cut ids of each poisoned batch (filled as the batches are made)."""
    from just_asr.data.loader import _StreamDataset

    made: dict[int, list[str]] = {}
    targets: set[int] = set()
    original = _StreamDataset.__getitem__

    def getitem(self, item):
        batch = original(self, item)
        index = item[0] if isinstance(item, tuple) else -1
        if index in targets:
            batch["features"] = torch.full_like(batch["features"], float("nan"))
            if "supervised_features" in batch:
                batch["supervised_features"] = torch.full_like(batch["supervised_features"], float("nan"))
            made[index] = list(batch["cut_ids"])
        return batch

    monkeypatch.setattr(_StreamDataset, "__getitem__", getitem)
    # small sampler buffers (the defaults buffer 40k cuts of the endless stream before the first batch)
    import functools

    import just_asr.data.loader as loader_mod

    monkeypatch.setattr(loader_mod, "make_train_dataloader", functools.partial(
        loader_mod.make_train_dataloader, num_cuts_for_bins_estimate=200, buffer_size=500, shuffle_buffer_size=500))

    def set_targets(indices) -> dict[int, list[str]]:
        targets.update(indices)
        return made

    return set_targets


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _guard_state(ckpt: dict) -> dict:
    keys = [k for k in ckpt["callbacks"] if k.startswith("NonFiniteGuard")]
    assert len(keys) == 1, list(ckpt["callbacks"])
    return ckpt["callbacks"][keys[0]]


def test_one_nan_batch_is_skipped_logged_and_training_continues(prepared, poison, capsys):
    work, manifests, tok = prepared
    made = poison({3})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = cli(fit_args(work / "one", manifests, tok, 6))
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert set(made) == {3} and made[3]
    # the warning names the step and exactly the poisoned batch's cut ids
    warnings = [l for l in out.out.splitlines() if "non-finite" in l]
    assert len(warnings) == 1, warnings
    assert "non-finite loss at step 3: update skipped (1 so far, 1 in a row)" in warnings[0]
    assert warnings[0].endswith("cut ids: [" + ", ".join(made[3]) + "]")

    ck = work / "one" / "checkpoints"
    states = {s: _ckpt(ck / f"step{s:06d}.ckpt") for s in (3, 4, 5)}
    # step 4's checkpoint (after the poisoned step) holds exactly the weights and Adam state of step 3
    for k, v in states[3]["state_dict"].items():
        assert torch.equal(v, states[4]["state_dict"][k]), k
    o3, o4 = states[3]["optimizer_states"][0]["state"], states[4]["optimizer_states"][0]["state"]
    assert o3.keys() == o4.keys()
    for i in o3:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(o3[i][name], o4[i][name]), (i, name)
    # training went on: the next (clean) step changed the weights
    assert any(not torch.equal(v, states[5]["state_dict"][k]) for k, v in states[4]["state_dict"].items())
    last = _ckpt(ck / "last.ckpt")
    assert last["global_step"] == 6
    assert _guard_state(last) == {"skipped": 1, "consecutive": 0}
    # nothing non-finite leaked into parameters, buffers or the EMA
    for k, v in {**last["state_dict"], **last["ema_state_dict"]}.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k


def test_k_consecutive_nan_batches_stop_the_run(prepared, poison, capsys):
    work, manifests, tok = prepared
    made = poison(range(2, 100))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = cli(fit_args(work / "many", manifests, tok, 20, "--nonfinite_guard.max_consecutive", "3"))
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert rc == 1
    # steps 2, 3, 4 were skipped; the third in a row stops the run
    warnings = [l for l in out.out.splitlines() if "non-finite" in l]
    assert [w.split(": update")[0].split("at ")[-1] for w in warnings] == ["step 2", "step 3", "step 4"]
    assert "(3 so far, 3 in a row)" in warnings[-1]
    err = out.err
    assert "just-asr fit: error: 3 consecutive updates had a non-finite loss or gradient" in err
    assert "nonfinite_guard.max_consecutive, is 3" in err
    assert "Last batch's cut ids: [" + ", ".join(made[4]) + "]" in err
    # the run stopped there: no checkpoint beyond step 4
    steps = sorted(int(p.stem[4:]) for p in (work / "many" / "checkpoints").glob("step*.ckpt"))
    assert steps and max(steps) <= 4


def test_an_output_folder_inside_a_file_is_a_one_line_error(prepared, capsys):
    """``fit`` with ``default_root_dir`` under a file: the OSError is printed naming the path, exit 1
    (it was a traceback)."""
    work, manifests, tok = prepared
    (work / "afile").write_text("")
    rc = cli(fit_args(work / "afile" / "run", manifests, tok, 1))
    err = capsys.readouterr().err
    assert rc == 1 and "just-asr fit: error:" in err and str(work / "afile") in err and "Traceback" not in err
