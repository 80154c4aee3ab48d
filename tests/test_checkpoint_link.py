"""``just_asr.train.checkpointing.atomic_link`` and ``LinkedLastCheckpoint``: ``last.ckpt`` as an atomic
hard link to the step checkpoint just written (no second write), replacing the old one in one rename."""

from __future__ import annotations

import os

import pytest

from just_asr.train import checkpointing as ck


def _tiny_module():
    """A one-layer LightningModule for short real fits."""
    import lightning.pytorch as pl
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny()


def test_link_is_the_same_file_and_replaces_the_old_one(tmp_path):
    old, new, last = tmp_path / "step000002.ckpt", tmp_path / "step000004.ckpt", tmp_path / "last.ckpt"
    old.write_bytes(b"two")
    new.write_bytes(b"four")
    ck.atomic_link(old, last)
    assert last.samefile(old) and not last.is_symlink()
    ck.atomic_link(new, last)
    assert last.samefile(new) and last.read_bytes() == b"four"
    assert old.read_bytes() == b"two"  # the file last.ckpt named before is untouched
    assert not (tmp_path / "last.ckpt.tmp").exists()
    # the step file deleted (save_top_k): last.ckpt keeps its contents
    new.unlink()
    assert last.read_bytes() == b"four"
    # a later atomic write to last.ckpt (the end-of-training save) replaces the link, not the step file
    ck.atomic_link(old, last)
    ck.atomic_torch_save({"x": 1}, last)
    assert old.read_bytes() == b"two" and not last.samefile(old)


def test_a_stale_temporary_is_replaced_and_linking_to_itself_is_a_no_op(tmp_path):
    src, last = tmp_path / "step000002.ckpt", tmp_path / "last.ckpt"
    src.write_bytes(b"two")
    (tmp_path / "last.ckpt.tmp").write_bytes(b"torn")
    ck.atomic_link(src, last)
    assert last.samefile(src) and not (tmp_path / "last.ckpt.tmp").exists()
    ck.atomic_link(last, last)
    assert last.read_bytes() == b"two"


def test_copy_where_hard_links_are_refused(tmp_path, monkeypatch):
    src, last = tmp_path / "step000002.ckpt", tmp_path / "last.ckpt"
    src.write_bytes(b"two")

    def refuse(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(ck, "_copy_warned", False)
    with pytest.warns(RuntimeWarning, match="no hard link"):
        ck.atomic_link(src, last)
    assert last.read_bytes() == b"two" and not last.samefile(src)
    assert not (tmp_path / "last.ckpt.tmp").exists()


def test_missing_source_leaves_last_alone(tmp_path):
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"previous")
    with pytest.raises(FileNotFoundError, match="step000009.ckpt: no checkpoint to link"):
        ck.atomic_link(tmp_path / "step000009.ckpt", last)
    assert last.read_bytes() == b"previous"


def test_fit_links_last_to_the_newest_step_file(tmp_path):
    """A real Lightning run with LinkedLastCheckpoint(save_last="link"): last.ckpt is a regular file,
    the same as the newest step checkpoint, and loads as one."""
    import lightning.pytorch as pl
    import torch

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(12, 2)), batch_size=2)
    cb = ck.LinkedLastCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=2, monitor="step", mode="max",
                                 filename="step{step:06d}", auto_insert_metric_name=False, save_last="link")
    trainer = pl.Trainer(max_steps=5, callbacks=[cb], plugins=[ck.AtomicCheckpointIO()], logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_tiny_module(), data)
    last = tmp_path / "last.ckpt"
    assert sorted(p.name for p in tmp_path.glob("step*.ckpt")) == ["step000002.ckpt", "step000004.ckpt"]
    assert last.is_file() and not last.is_symlink() and last.samefile(tmp_path / "step000004.ckpt")
    assert ck.safe_torch_load(last)["global_step"] == 4


def test_a_failed_rename_leaves_last_as_it_was(tmp_path, monkeypatch):
    src, last = tmp_path / "step000004.ckpt", tmp_path / "last.ckpt"
    src.write_bytes(b"four")
    last.write_bytes(b"two")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        ck.atomic_link(src, last)
    assert last.read_bytes() == b"two" and not last.samefile(src)
    assert not (tmp_path / "last.ckpt.tmp").exists()


def test_resume_from_a_first_checkpoint_keeps_writing_last_ckpt(tmp_path):
    """The step file that last.ckpt links to was dumped before Lightning set last_model_path for that
    save: for a run's first periodic checkpoint the restored value is empty, and Lightning would then
    take the existing last.ckpt for another run's and write last-v1.ckpt (which --resume never reads)."""
    cb = ck.LinkedLastCheckpoint(dirpath=tmp_path, save_last="link")
    cb.load_state_dict({"dirpath": str(tmp_path), "best_model_score": None, "best_model_path": "",
                        "best_k_models": {}, "last_model_path": ""})
    assert cb.last_model_path == str(tmp_path / "last.ckpt")
    cb = ck.LinkedLastCheckpoint(dirpath=tmp_path, save_last="link")
    cb.load_state_dict({"dirpath": str(tmp_path), "best_model_score": None, "best_model_path": "",
                        "best_k_models": {}, "last_model_path": str(tmp_path / "last-v3.ckpt")})
    assert cb.last_model_path == str(tmp_path / "last-v3.ckpt")  # a value that is there stays


def test_fit_warns_when_checkpoints_may_be_written_in_place(tmp_path):
    import lightning.pytorch as pl
    import torch

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    cb = ck.LinkedLastCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last="link")
    trainer = pl.Trainer(max_steps=2, callbacks=[cb], logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.warns(RuntimeWarning, match="may write in place"):
        trainer.fit(_tiny_module(), data)


# ------------------------------------------------------------------ the EMA weights stored once
def _ema_with_state(dtype):
    """An EMA callback after one update of a small module of ``dtype``; its checkpoint dict as Lightning
    builds it (callback states first, then on_save_checkpoint)."""
    from types import SimpleNamespace

    import torch

    from just_asr.train.callbacks import EMA

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(dtype)
    cb = EMA(decay=0.9)
    pl_module = SimpleNamespace(model=module)
    cb.on_fit_start(None, pl_module)
    with torch.no_grad():
        module[0].weight.add_(1.0)
    cb.ema.update(module)
    checkpoint = {"callbacks": {cb.state_key: cb.state_dict()}}
    cb.on_save_checkpoint(None, pl_module, checkpoint)
    return cb, pl_module, checkpoint


def test_float32_checkpoint_holds_the_ema_weights_once_and_resumes_them_exactly():
    import torch

    from just_asr.train.averaging import EMA_CHECKPOINT_KEY
    from just_asr.train.callbacks import EMA

    cb, pl_module, checkpoint = _ema_with_state(torch.float32)
    state = checkpoint["callbacks"][cb.state_key]["ema"]
    assert "shadow" not in state and state["shadow_in"] == EMA_CHECKPOINT_KEY
    # a new callback restored as Lightning does (on_load_checkpoint, then load_state_dict)
    restored = EMA(decay=0.9)
    restored.on_load_checkpoint(None, pl_module, checkpoint)
    restored.load_state_dict(checkpoint["callbacks"][cb.state_key])
    restored.on_fit_start(None, pl_module)
    assert restored.ema.num_updates == cb.ema.num_updates
    for k, v in cb.ema.shadow.items():
        assert torch.equal(restored.ema.shadow[k], v) and restored.ema.shadow[k].dtype == v.dtype
    # a state that names the weights but comes without them is an error, not a silent restart
    with pytest.raises(ValueError, match="'ema_state_dict', which is missing"):
        EMA().load_state_dict(checkpoint["callbacks"][cb.state_key])


def test_bf16_model_keeps_its_float32_shadow_and_old_checkpoints_still_load():
    import torch

    from just_asr.train.callbacks import EMA

    cb, pl_module, checkpoint = _ema_with_state(torch.bfloat16)
    state = checkpoint["callbacks"][cb.state_key]
    assert state["ema"]["shadow"]["0.weight"].dtype == torch.float32  # not the bf16 export copy
    # a checkpoint written before the change (shadow in the callback state) loads without the hook
    old = EMA(decay=0.9)
    old.load_state_dict(state)
    old.on_fit_start(None, pl_module)
    assert torch.equal(old.ema.shadow["0.weight"], cb.ema.shadow["0.weight"])
