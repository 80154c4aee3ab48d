"""Safe loading: a crafted pickle whose unpickling would write a marker file is refused wherever
weights are read, and its payload never runs.

Places the pickle goes:

* as ``model.safetensors`` in an otherwise valid model directory: ``load_model_dir``,
  ``just-asr transcribe --model`` and ``just-asr fit --init-from DIR`` refuse it;
* as a Lightning checkpoint (``torch.save`` of a checkpoint-looking dict holding the payload):
  ``just-asr fit --resume`` (as ``last.ckpt``), ``--ckpt_path FILE``, ``--init-from FILE``,
  ``just-asr export`` and :class:`~just_asr.train.checkpointing.AtomicCheckpointIO` refuse it.

Each refusal is a clear error naming the file; the marker file never appears. Positive controls
show the payloads are live: plain ``pickle.loads`` / ``torch.load(weights_only=False)`` of twin
payloads (other marker paths) do create their markers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from data_helpers import SENTENCES
from just_asr.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this object runs ``exec`` of code that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def crafted_pickle(marker: Path) -> bytes:
    """A plain pickle (protocol 2) of a weights-looking dict that holds the payload."""
    return pickle.dumps({"encoder.weight": Payload(marker)}, protocol=2)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save'd (zip format) Lightning-looking checkpoint holding the payload."""
    torch.save({"state_dict": {"model.x": torch.zeros(2)}, "global_step": 3, "evil": Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from just_asr.data.tokenizer import train_tokenizer

    texts = {iso: s * 20 for iso, s in SENTENCES.items() if iso in ("en", "pl")}
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=100)


@pytest.fixture()
def model_dir(tmp_path, tok):
    """A valid model directory (tiny model) whose weights file is then replaced by a crafted pickle."""
    from just_asr.inference import load_model_dir, save_model_dir
    from just_asr.model import JustModel
    from test_train import tiny_arch

    from just_asr.data.tokenizer import Tokenizer

    arch = tiny_arch()
    model = JustModel(arch, Tokenizer(tok).vocab_size)
    out = save_model_dir(tmp_path / "model", model, arch, tok)
    load_model_dir(out)  # valid before the swap
    return out


def test_payloads_are_live(tmp_path):
    """Positive controls: unguarded loaders run the payloads (so the refusals below mean something)."""
    m1, m2 = tmp_path / "control1", tmp_path / "control2"
    pickle.loads(crafted_pickle(m1))
    assert m1.read_text() == "payload ran"
    torch.load(crafted_checkpoint(tmp_path / "c.ckpt", m2), weights_only=False)
    assert m2.read_text() == "payload ran"


def test_model_directory_with_pickled_weights_is_refused(tmp_path, model_dir, capsys):
    from just_asr.inference import ModelDirError, load_model_dir
    from just_asr.train.module import read_source_weights

    marker = tmp_path / "MARKER"
    weights = model_dir / "model.safetensors"
    weights.write_bytes(crafted_pickle(marker))
    with pytest.raises(ModelDirError, match="model.safetensors: is a Python pickle, not safetensors; refusing"):
        load_model_dir(model_dir)
    with pytest.raises(ValueError, match="model.safetensors: cannot read safetensors weights"):
        read_source_weights(model_dir)
    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(str(wav), np.zeros(8000, np.float32), 16000)
    capsys.readouterr()
    assert cli(["transcribe", "--model", str(model_dir), str(wav)]) != 0
    assert "model.safetensors" in capsys.readouterr().err
    # the same with a torch.save'd file under the safetensors name
    crafted_checkpoint(weights, marker)
    with pytest.raises(ModelDirError, match=r"model.safetensors: is a zip archive \(torch.save format\), not safetensors; refusing"):
        load_model_dir(model_dir)
    assert not marker.exists()


def fit_args(root: Path, tok: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs/model/tiny.yaml"), "--config", str(ROOT / "configs/just.yaml"),
        "--model.arch.encoder.d_model", "32", "--model.arch.encoder.num_heads", "2",
        "--model.arch.encoder.ffn_dim", "64", "--model.arch.quantizer.code_dim", "32",
        "--model.arch.mlm.num_layers", "1", "--model.arch.contrastive.num_layers", "1",
        "--data.manifest_dir", str(root / "manifests"), "--data.tokenizer", str(tok), "--data.langs", "[en,pl]",
        "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.precision", "32", "--trainer.max_steps", "2", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root / "exp"), *extra,
    ]


def test_fit_refuses_crafted_checkpoints(tmp_path, tok, model_dir, capsys):
    marker = tmp_path / "MARKER"
    ckdir = tmp_path / "exp" / "checkpoints"
    ckdir.mkdir(parents=True)

    # --resume with a crafted last.ckpt
    crafted_checkpoint(ckdir / "last.ckpt", marker)
    capsys.readouterr()
    assert cli(fit_args(tmp_path, tok, "--resume")) == 1
    err = capsys.readouterr().err
    assert f"{ckdir / 'last.ckpt'}: refused to load" in err and "weights_only=True" in err
    assert not marker.exists()

    # --ckpt_path with a plain pickle (not even a zip checkpoint)
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(crafted_pickle(marker))
    assert cli(fit_args(tmp_path, tok, "--ckpt_path", str(raw))) == 1
    assert f"{raw}: refused to load" in capsys.readouterr().err
    assert not marker.exists()

    # --init-from a crafted checkpoint, and from a model directory with pickled weights
    assert cli(fit_args(tmp_path, tok, "--init-from", str(ckdir / "last.ckpt"))) == 1
    assert f"{ckdir / 'last.ckpt'}: refused to load" in capsys.readouterr().err
    (model_dir / "model.safetensors").write_bytes(crafted_pickle(marker))
    assert cli(fit_args(tmp_path, tok, "--init-from", str(model_dir))) == 1
    assert "model.safetensors: cannot read safetensors weights" in capsys.readouterr().err
    assert not marker.exists()

    # export reads checkpoints the same way
    assert cli(["export", str(ckdir / "last.ckpt"), str(tmp_path / "exported")]) != 0
    printed = capsys.readouterr()
    assert f"{ckdir / 'last.ckpt'}: refused to load" in printed.err  # stderr, not stdout
    assert "error" not in printed.out
    assert not marker.exists()


def test_checkpoint_io_refuses_pickles_and_never_allows_weights_only_false(tmp_path):
    from just_asr.train.checkpointing import AtomicCheckpointIO, safe_torch_load

    marker = tmp_path / "MARKER"
    io = AtomicCheckpointIO()
    bad = crafted_checkpoint(tmp_path / "bad.ckpt", marker)
    with pytest.raises(ValueError, match=r"bad.ckpt: refused to load"):
        io.load_checkpoint(bad)
    with pytest.raises(ValueError, match="weights_only=True only"):
        io.load_checkpoint(bad, weights_only=False)
    with pytest.raises(ValueError, match=r"bad.ckpt: refused to load"):
        safe_torch_load(bad)
    with pytest.raises(FileNotFoundError, match="nope.ckpt: checkpoint not found"):
        safe_torch_load(tmp_path / "nope.ckpt")
    # a torn (truncated) checkpoint is reported as unreadable, not as unsafe
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.ckpt")
    data = (tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "torn.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"torn.ckpt: cannot read the checkpoint \(corrupt or truncated file\?\)"):
        io.load_checkpoint(tmp_path / "torn.ckpt")
    # a file that is not a checkpoint at all, or empty: said so (torch's answer blamed "unsafe" content)
    (tmp_path / "text.ckpt").write_text("garbage\n")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"text.ckpt: not a torch checkpoint \(neither a zip archive nor a pickle"):
        safe_torch_load(tmp_path / "text.ckpt")
    with pytest.raises(ValueError, match=r"empty.ckpt: not a torch checkpoint \(an empty file"):
        io.load_checkpoint(tmp_path / "empty.ckpt")
    assert not marker.exists()
    # a checkpoint of tensors and plain containers round-trips through the atomic writer
    good = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "global_step": 7, "meta": {"a": [1, "b", None, 2.5]}}
    io.save_checkpoint(good, tmp_path / "sub" / "good.ckpt")
    back = io.load_checkpoint(tmp_path / "sub" / "good.ckpt")
    assert torch.equal(back["state_dict"]["w"], good["state_dict"]["w"])
    assert back["global_step"] == 7 and back["meta"] == good["meta"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["good.ckpt"]  # no temporary left
