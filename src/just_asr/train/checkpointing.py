"""Atomic, pickle-free checkpoint files for Lightning.

:class:`AtomicCheckpointIO` is the ``CheckpointIO`` plugin ``just-asr fit`` installs on its trainer:

* **writes are atomic**: the checkpoint is serialised into ``<path>.tmp`` in the same folder, flushed
  and ``fsync``-ed, then renamed over ``<path>`` with ``os.replace`` (atomic on POSIX and Windows),
  and the folder is ``fsync``-ed so the rename itself survives a power cut. A process killed at any
  moment (SIGKILL, out of memory, pre-emption) leaves either the previous complete checkpoint or
  the new complete one at ``<path>``, never a torn file; at worst a stale ``<path>.tmp`` stays
  behind (:func:`remove_stale_temporaries` deletes those; ``fit`` calls it on start).
* **reads never unpickle code**: checkpoints are loaded with ``torch.load(weights_only=True)``,
  which only rebuilds tensors and plain containers (dict, list, tuple, str, numbers, bool, None).
  Everything our training state holds is of those types (the module saves its hyper-parameters as
  plain dicts, the DataModule and callbacks save ints, floats and strings). A file that needs
  anything else (a crafted pickle, a checkpoint holding arbitrary objects) is refused with a
  ``ValueError`` naming the file; its payload never runs.

:class:`LinkedLastCheckpoint` is the ``ModelCheckpoint`` of ``just-asr fit``'s periodic checkpoints:
with ``save_last="link"`` (the fit default) ``last.ckpt`` becomes a hard link to the step checkpoint
just written (:func:`atomic_link`: a link made under ``<last>.tmp`` and renamed over ``last.ckpt``)
instead of a second serialisation and write of the same state. It is a regular file with the same
contents, so resuming and ``export`` read it as before, and it outlives the step file when
``save_top_k`` deletes that. Lightning's own ``"link"`` mode makes a symbolic link after removing
the old ``last.ckpt``, which a process killed in between would leave without one.

Example::

    trainer = pl.Trainer(plugins=[AtomicCheckpointIO()])
    trainer.fit(model, datamodule=dm, ckpt_path="exp/checkpoints/last.ckpt", weights_only=True)
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

#: suffix of the temporary file a checkpoint is written to before it is renamed into place
TMP_SUFFIX = ".tmp"


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(checkpoint: dict[str, Any], tmp: Path) -> None:
    """Serialise ``checkpoint`` into ``tmp`` and force it to disk (flush + fsync)."""
    with open(tmp, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


def atomic_torch_save(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save(checkpoint, path)`` made atomic: write ``<path>.tmp``, fsync, ``os.replace``,
    fsync the folder. On any error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_via_temporary(path, lambda tmp: _write_file(checkpoint, tmp))


def _replace_via_temporary(path: Path, make: Callable[[Path], None]) -> None:
    """``make(<path>.tmp)``, then rename it over ``path`` and fsync the folder; on any error the
    temporary is removed and ``path`` is left as it was."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        make(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


_copy_warned = False


def atomic_link(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` a hard link to the file ``src`` (same contents, no copy), atomically: the link is
    made as ``<dst>.tmp`` and renamed over ``dst``, then the folder is fsync-ed, so ``dst`` is at every
    moment either its old file or ``src``'s. Where hard links are refused (another filesystem, one
    without links), ``src`` is copied to ``<dst>.tmp`` (and fsync-ed) instead.

    Raises:
        FileNotFoundError: ``src`` does not exist (``dst`` is left as it was).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no checkpoint to link {dst} to")
    if src.resolve() == dst.resolve():
        return

    def make(tmp: Path) -> None:
        global _copy_warned
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError as exc:
            if not _copy_warned:
                _copy_warned = True
                warnings.warn(f"atomic_link: no hard link in {dst.parent} ({exc.strerror or exc}); "
                              f"{dst.name} is written as a copy instead", RuntimeWarning, stacklevel=3)
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())

    _replace_via_temporary(dst, make)


class LinkedLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``save_last="link"`` makes ``last.ckpt`` an atomic hard link to the
    checkpoint just saved (:func:`atomic_link`) rather than Lightning's symbolic link (made after
    deleting the old ``last.ckpt``). With ``save_last=True`` it behaves as ``ModelCheckpoint``.

    Two consequences of the link being the step file itself are handled here: the state inside it was
    dumped before Lightning sets ``last_model_path`` for that save (empty for a run's first periodic
    checkpoint), so on resume an empty ``last_model_path`` is set to this folder's ``last.ckpt``
    (Lightning would otherwise take the existing ``last.ckpt`` for another run's and start writing
    ``last-v1.ckpt``, which ``--resume`` never reads); and the shared file must only ever be replaced,
    never rewritten in place, which ``AtomicCheckpointIO`` guarantees (a warning says so when the
    trainer writes with another ``CheckpointIO``). Checkpoints saved as folders (sharded strategies)
    get Lightning's symbolic link."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.save_last == "link" and not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            warnings.warn(f"LinkedLastCheckpoint: the trainer writes checkpoints with "
                          f"{type(trainer.strategy.checkpoint_io).__name__}, which may write in place; a write to "
                          f"last.ckpt would then also change the step checkpoint it is linked to (use "
                          f"AtomicCheckpointIO, or save_last=True)", RuntimeWarning, stacklevel=2)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if self.save_last and not self.last_model_path and self.dirpath:
            self.last_model_path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)

    @staticmethod
    def _link_checkpoint(trainer: Any, filepath: str, linkpath: str) -> None:
        if os.path.isdir(filepath):
            ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
            return
        if trainer.is_global_zero:
            atomic_link(filepath, linkpath)
        trainer.strategy.barrier()


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises ``FileNotFoundError`` when ``path`` is missing and ``ValueError`` when it is not a
    checkpoint of tensors and plain containers (e.g. a pickle that would run code on loading: it is
    refused before anything in it runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch's zip format, or a (legacy) pickle
        what = "an empty file" if not head else "neither a zip archive nor a pickle"
        raise ValueError(f"{path}: not a torch checkpoint ({what}; corrupt, or another kind of file?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # the restricted unpickler met something it does not allow
        raise ValueError(
            f"{path}: refused to load: it holds more than tensors and plain containers (torch.load with "
            f"weights_only=True: {_first_line(exc)}). This loader never runs code stored in a file; "
            f"only open such a file with plain pickle if you trust its origin."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - RuntimeError (bad zip), EOFError...: re-raised with the name
        raise ValueError(
            f"{path}: cannot read the checkpoint (corrupt or truncated file?): {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete ``*.ckpt.tmp`` files left in ``folder`` by a run killed while saving; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(f"*.ckpt{TMP_SUFFIX}"))
    for p in stale:
        try:
            p.unlink()
            log.info("removed %s, left by a run killed while it was saving a checkpoint", p)
        except OSError as exc:
            log.warning("could not remove stale temporary checkpoint %s: %s", p, exc)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` with atomic local writes and ``weights_only=True`` reads.

    Only local paths are supported (``ValueError`` for URLs such as ``s3://``: their atomicity
    would need the object store's own rules).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        if "://" in str(path):
            raise ValueError(f"{path}: AtomicCheckpointIO writes local files only")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(
                f"{path}: AtomicCheckpointIO loads checkpoints with weights_only=True only (no arbitrary pickles)"
            )
        ckpt = safe_torch_load(path, map_location=map_location)
        if not isinstance(ckpt, dict):
            raise ValueError(f"{path}: not a Lightning checkpoint (a {type(ckpt).__name__}, not a dict)")
        return ckpt

    def remove_checkpoint(self, path: Any) -> None:
        p = Path(path)
        if p.is_file() or p.is_symlink():
            p.unlink()
            log.debug("removed checkpoint %s", p)
