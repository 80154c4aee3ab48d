"""End-to-end through the command line on the tiny espeak-ng corpus (``tiny_corpus_dir``):

``just-asr fit`` with composed presets (tiny model preset + the JUST regime preset + overrides of
nested keys) -> checkpoints and TensorBoard logs with every loss term and dev WER per language ->
``--resume`` continues the step count -> ``export`` (final / EMA / average of the last N) writes model
directories whose weights are exactly the checkpoint's / EMA's / the mean of the checkpoints' ->
``load_model_dir`` + ``Transcriber`` give the same text as an independent greedy decode ->
``--init-from`` a model directory reports loaded / new / dropped tensors correctly.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from just_asr.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]

from data_helpers import SMALL_MODEL_ARGS as SMALL  # a ~50k-parameter model for `fit` runs


@pytest.fixture(scope="module")
def prepared(tiny_corpus_dir, tmp_path_factory):
    """Manifests and a tokenizer for two languages of the tiny corpus."""
    from just_asr.data.dataset import cut_text
    from just_asr.data.mls import load_manifests, prepare_mls
    from just_asr.data.tokenizer import train_tokenizer

    work = tmp_path_factory.mktemp("fit_cli")
    prepare_mls(tiny_corpus_dir, work / "manifests", langs=["en", "pl"], progress=False)
    texts = {l: [cut_text(c) for c in load_manifests(work / "manifests", l, "train")] for l in ("en", "pl")}
    tok = train_tokenizer(texts, work / "tok", vocab_size=128)
    return work, work / "manifests", tok


def fit_args(work: Path, manifests: Path, tok: Path, steps: int, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs/model/tiny.yaml"), "--config", str(ROOT / "configs/just.yaml"),
        *SMALL,
        "--data.manifest_dir", str(manifests), "--data.tokenizer", str(tok), "--data.langs", "[en,pl]",
        "--data.max_duration", "8", "--data.num_workers", "0", "--data.max_dev_cuts_per_lang", "1",
        "--trainer.precision", "32", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", str(work / "exp"), "--periodic_checkpoint.every_n_train_steps", "2",
        "--model.warmup_steps", "2", *extra,
    ]


def _scalars(root: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for f in glob.glob(str(root / "lightning_logs" / "*")):
        ea = EventAccumulator(f)
        ea.Reload()
        tags |= set(ea.Tags()["scalars"])
    return tags


def test_help_and_print_config(capsys):
    assert cli(["fit", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "--model.arch" in helptext and "--model.init_from" in helptext and "--ckpt_path" in helptext
    code = cli(["fit", "--config", str(ROOT / "configs/model/tiny.yaml"), "--config", str(ROOT / "configs/just.yaml"),
                "--model.arch.loss.ssl", "0.25", "--print-config"])
    out = capsys.readouterr().out
    assert code == 0
    assert "d_model: 144" in out  # from the model preset
    assert "ssl: 0.25" in out and "temperature: 3.0" in out  # override, and the regime preset
    assert cli(["fit", "--model.no_such_option", "1"]) != 0


def test_fit_resume_export_transcribe_initfrom(prepared, capsys):
    from safetensors.torch import load_file

    from just_asr.data.features import cut_features
    from just_asr.data.mls import load_manifests
    from just_asr.decode.greedy import greedy_search
    from just_asr.inference import Transcriber, load_model_dir
    from just_asr.model import JustModel, ModelConfig
    from just_asr.train.averaging import strip_prefix

    work, manifests, tok = prepared
    ckdir = work / "exp" / "checkpoints"

    # --- fit 4 steps, then resume to 6
    assert cli(fit_args(work, manifests, tok, 4)) == 0
    last = torch.load(ckdir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert glob.glob(str(ckdir / "best-step*.ckpt"))
    tags = _scalars(work / "exp")
    for t in ["train/rnnt", "train/contrastive", "train/diversity", "train/mlm", "train/loss", "train/grad_norm",
              "train/lr_encoder", "train/audio_sec_per_sec", "train/masked_fraction", "train/codebook_perplexity",
              "train/code_usage", "train/nonfinite_skipped", "train/gumbel_temperature",
              "dev/wer_en", "dev/wer_pl", "dev/wer_avg"]:
        assert t in tags, t
    capsys.readouterr()
    assert cli(fit_args(work, manifests, tok, 6, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().out
    last = torch.load(ckdir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6
    assert last["lr_schedulers"][0]["last_epoch"] == 6
    steps = sorted(int(Path(p).stem[4:]) for p in glob.glob(str(ckdir / "step*.ckpt")))
    assert steps == [2, 4, 6]

    # --- export three ways; the weights are exactly what they should be
    out = {k: work / f"model-{k}" for k in ("final", "ema", "avg")}
    assert cli(["export", str(ckdir / "last.ckpt"), str(out["final"])]) == 0
    assert cli(["export", str(ckdir / "last.ckpt"), str(out["ema"]), "--ema"]) == 0
    assert cli(["export", str(ckdir), str(out["avg"]), "--average-last", "2"]) == 0
    final = load_file(str(out["final"] / "model.safetensors"))
    state = strip_prefix(last["state_dict"])
    assert set(final) == set(state) and all(torch.equal(final[k], state[k]) for k in state)
    ema = load_file(str(out["ema"] / "model.safetensors"))
    assert all(torch.equal(ema[k], last["ema_state_dict"][k]) for k in ema)
    assert any(not torch.equal(ema[k], final[k]) for k in ema)
    s4 = strip_prefix(torch.load(ckdir / "step000004.ckpt", weights_only=True)["state_dict"])
    avg = load_file(str(out["avg"] / "model.safetensors"))
    k = "joiner.output.weight"
    torch.testing.assert_close(avg[k], (s4[k] + state[k]) / 2)
    assert cli(["export", str(ckdir), str(work / "nope"), "--average-last", "9"]) == 1
    # a folder of periodic checkpoints without last.ckpt averages the same way (it required last.ckpt)
    import shutil

    nolast = work / "nolast"
    nolast.mkdir()
    for name in ("step000004.ckpt", "step000006.ckpt"):
        shutil.copy(ckdir / name, nolast / name)
    assert cli(["export", str(nolast), str(work / "model-avg2"), "--average-last", "2"]) == 0
    avg2 = load_file(str(work / "model-avg2" / "model.safetensors"))
    assert all(torch.equal(avg2[k], avg[k]) for k in avg)
    empty = work / "no-checkpoints"
    empty.mkdir()
    assert cli(["export", str(empty), str(work / "nope"), "--average-last", "2"]) == 1
    assert "no *.ckpt files to average" in capsys.readouterr().err
    # a mistyped folder is not found (its parent, holding other runs' checkpoints, is not searched)
    assert cli(["export", str(work / "nolast-typo"), str(work / "nope"), "--average-last", "2"]) == 1
    assert "nolast-typo: checkpoint or checkpoint folder not found" in capsys.readouterr().err

    # --- load + transcribe == an independent greedy decode of the same features
    loaded = load_model_dir(out["final"])
    cut = next(iter(load_manifests(manifests, "pl", "test")))
    audio = cut.recording.sources[0].source
    text = Transcriber(loaded).transcribe_files([audio])[0]
    model = JustModel(ModelConfig.from_dict(last["hyper_parameters"]["arch"]), last["hyper_parameters"]["vocab_size"])
    model.load_state_dict(state)
    model.eval()
    feats = cut_features(cut).unsqueeze(0)
    with torch.no_grad():
        enc, lens = model.encode(feats, torch.tensor([feats.shape[1]]))
        toks = greedy_search(model.predictor, model.joiner, enc, lens, blank_id=0).tokens[0]
    assert text == loaded.tokenizer.decode(toks)
    capsys.readouterr()
    assert cli(["transcribe", "--model", str(out["final"]), audio]) == 0
    assert capsys.readouterr().out.strip() == f"{audio}\t{text}".strip()

    # --- --init-from a model directory into a model with a wider predictor
    capsys.readouterr()
    args = fit_args(work / "ft", manifests, tok, 1, "--init-from", str(out["final"]),
                    "--model.arch.decoder.hidden_dim", "48", "--model.arch.loss.ssl", "0")
    assert cli(args) == 0
    printed = capsys.readouterr().out
    wide = JustModel(ModelConfig.from_dict({**last["hyper_parameters"]["arch"],
                                            "decoder": {**last["hyper_parameters"]["arch"]["decoder"],
                                                        "hidden_dim": 48}}), last["hyper_parameters"]["vocab_size"]).state_dict()
    same = [k for k in state if k in wide and wide[k].shape == state[k].shape]
    changed = [k for k in state if k in wide and wide[k].shape != state[k].shape]
    assert changed and all(k.startswith(("predictor.", "joiner.predictor_proj")) for k in changed)
    assert f"loaded  {len(same)} tensors" in printed
    assert f"new     {len(wide) - len(same)} tensors" in printed
    assert f"dropped {len(changed)} tensors" in printed and "predictor.lstm.weight_hh_l0 (shape" in printed
