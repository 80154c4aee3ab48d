"""``just-asr fit``: train a model with Lightning's CLI.

Every regime is a YAML preset; presets compose left to right and any key can be overridden::

    just-asr fit --config configs/model/tiny.yaml --config configs/just.yaml \\
        --data.manifest_dir data/manifests --data.tokenizer data/tokenizer.model \\
        --trainer.max_steps 20000 --model.lr 2e-3
    just-asr fit --config configs/model/tiny.yaml --config configs/finetune.yaml --init-from exp/pretrain/checkpoints/last.ckpt
    just-asr fit --config ... --resume              # continue from <checkpoint dir>/last.ckpt
    just-asr fit --config ... --print-config        # the merged configuration

Besides Lightning's ``model``/``data``/``trainer``/``seed_everything`` groups there are:

* ``checkpoint``: the best-by-dev-WER ``ModelCheckpoint`` (``best-step*.ckpt``);
  ``periodic_checkpoint``: every ``every_n_train_steps`` steps, keeps the latest ``save_top_k`` step
  checkpoints (for ``export --average-last N``) and ``last.ckpt`` (a hard link to the newest of them,
  ``save_last: link``; also written when training ends);
* ``gumbel``, ``codebook_health``, ``nonfinite_guard``, ``ema``, ``throughput``, ``data_issues``: the
  callbacks of :mod:`just_asr.train.callbacks` (``data_issues`` lists the input problems the data
  loaders met in ``<trainer.default_root_dir>/data_issues.json``, one ``data_issues.rank<k>.json``
  per rank under DDP);
* ``--ckpt_path PATH|last`` and ``--resume`` (= ``--ckpt_path last``): resume training;
* ``--init-from PATH``: alias of ``--model.init_from`` (initialise matching weights).

Checkpoints go to ``checkpoint.dirpath`` (default ``<trainer.default_root_dir>/checkpoints``),
TensorBoard logs to ``<trainer.default_root_dir>/lightning_logs``. They are written atomically
(``<name>.tmp``, fsync, rename: :mod:`just_asr.train.checkpointing`), so a run killed at any moment
leaves the previous checkpoint loadable, and read back with ``weights_only=True`` (no pickled code
runs). A resumed run continues mid-epoch: the DataModule's state in the checkpoint says how many
training batches were consumed and the sampler skips them (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

#: top-level spellings rewritten before Lightning's parser sees them
_ALIASES = {
    "--init-from": "--model.init_from",
    "--init_from": "--model.init_from",
    "--ckpt-path": "--ckpt_path",
    "--print-config": "--print_config",
}


def _rewrite_aliases(argv: list[str]) -> list[str]:
    out: list[str] = []
    for a in argv:
        key, eq, val = a.partition("=")
        if key in _ALIASES:
            out.append(_ALIASES[key] + (eq + val if eq else ""))
        elif a == "--resume":
            out += ["--ckpt_path", "last"]
        else:
            out.append(a)
    return out


def _make_cli_class():
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from just_asr.train.callbacks import (EMA, CodebookHealth, DataIssueReport, GumbelTemperature, NonFiniteGuard,
                                          Throughput)
    from just_asr.train.checkpointing import LinkedLastCheckpoint

    class JustCLI(LightningCLI):
        """LightningCLI with our callbacks, checkpoints and resume/init options."""

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.link_arguments("data.tokenizer", "model.tokenizer", apply_on="parse")
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "dev/wer_avg",
                    "checkpoint.mode": "min",
                    "checkpoint.save_last": False,
                    "checkpoint.save_top_k": 1,
                    "checkpoint.filename": "best-step{step:06d}",
                    "checkpoint.auto_insert_metric_name": False,
                }
            )
            parser.add_lightning_class_args(LinkedLastCheckpoint, "periodic_checkpoint")
            parser.set_defaults(
                {
                    "periodic_checkpoint.monitor": "step",
                    "periodic_checkpoint.mode": "max",
                    "periodic_checkpoint.save_top_k": 5,
                    "periodic_checkpoint.every_n_train_steps": 1000,
                    "periodic_checkpoint.filename": "step{step:06d}",
                    "periodic_checkpoint.auto_insert_metric_name": False,
                    # last.ckpt as a hard link to the step file just written, not a second write
                    "periodic_checkpoint.save_last": "link",
                }
            )
            parser.add_lightning_class_args(GumbelTemperature, "gumbel")
            parser.add_lightning_class_args(CodebookHealth, "codebook_health")
            parser.add_lightning_class_args(NonFiniteGuard, "nonfinite_guard")
            parser.add_lightning_class_args(EMA, "ema")
            parser.add_lightning_class_args(Throughput, "throughput")
            parser.add_lightning_class_args(DataIssueReport, "data_issues")
            parser.add_argument(
                "--ckpt_path", type=str | None, default=None,
                help="resume from this Lightning checkpoint; 'last' (or --resume) = <checkpoint.dirpath>/last.ckpt",
            )

        def before_instantiate_classes(self) -> None:
            cfg = self.config
            root = Path(cfg.trainer.get("default_root_dir") or ".")
            if cfg.trainer.get("default_root_dir") is None:
                cfg.trainer.default_root_dir = str(root)
            for key in ("checkpoint", "periodic_checkpoint"):
                if cfg[key].get("dirpath") is None:
                    cfg[key].dirpath = str(root / "checkpoints")
            if cfg.trainer.get("strategy") == "ddp":
                # Supervised-only, pretraining-only and untranscribed-only batches leave some
                # parameters without a gradient on some ranks; plain DDP then fails or hangs.
                cfg.trainer.strategy = "ddp_find_unused_parameters_true"
                print("just-asr fit: using strategy 'ddp_find_unused_parameters_true' (JUST's branches "
                      "leave parameters unused on some steps)", flush=True)

    return JustCLI


def _resolve_ckpt(ckpt_path: str | None, dirpath: str) -> str | None:
    if ckpt_path is None:
        return None
    from just_asr.train.checkpointing import remove_stale_temporaries

    for stale in remove_stale_temporaries(dirpath):
        print(f"removed {stale} (a checkpoint write interrupted by the previous run)", flush=True)
    if ckpt_path == "last":
        last = Path(dirpath) / "last.ckpt"
        if last.is_file():
            print(f"resuming from {last}", flush=True)
            return str(last)
        print(f"--resume: no {last} yet; starting a fresh run", flush=True)
        return None
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return ckpt_path


def _save_final_last(trainer: Any, dirpath: str) -> None:
    """Make ``last.ckpt`` hold the final step (periodic saves may have stopped short of it)."""
    last = Path(dirpath) / "last.ckpt"
    if trainer.interrupted or trainer.global_step == 0:
        return
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "save_last", False) and getattr(cb, "_last_global_step_saved", -1) == trainer.global_step:
            return  # the periodic checkpoint already wrote last.ckpt at this step
    trainer.save_checkpoint(last)


def main(argv: list[str] | None = None) -> int:
    """Run ``just-asr fit`` with ``argv`` (without the ``fit`` word). Returns the exit status."""
    from just_asr.runtime import tune_malloc_for_command

    if not tune_malloc_for_command("fit"):
        return 2
    argv = _rewrite_aliases(list(sys.argv[1:] if argv is None else argv))
    JustCLI = _make_cli_class()
    from just_asr.train.datamodule import JustDataModule
    from just_asr.train.module import JustLightningModule

    import warnings

    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    try:
        cli = JustCLI(
            JustLightningModule,
            JustDataModule,
            run=False,
            args=argv,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"prog": "just-asr fit", "description": __doc__.split("\n\n")[0]},
        )
    except SystemExit as exc:  # --help, --print-config, or an argument error (already printed)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except (FileNotFoundError, ValueError) as exc:  # bad data paths, tokenizer, model config values
        print(f"just-asr fit: error: {exc}", file=sys.stderr, flush=True)
        return 1
    from just_asr.train.checkpointing import AtomicCheckpointIO

    cli.trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    try:
        ckpt = _resolve_ckpt(cli.config.get("ckpt_path"), cli.config.checkpoint.dirpath)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True)
        _save_final_last(cli.trainer, cli.config.periodic_checkpoint.dirpath)
    except (OSError, ValueError, RuntimeError) as exc:  # OSError: e.g. a default_root_dir inside a file
        print(f"just-asr fit: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """For ``just-asr`` dispatch symmetry: everything after ``fit`` goes to Lightning's CLI."""
    parser.add_argument("args", nargs=argparse.REMAINDER, help="Lightning CLI arguments (see just-asr fit --help)")


def run(args: Any) -> int:
    return main(list(getattr(args, "args", []) or []))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
