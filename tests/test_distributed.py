"""Distributed data parallel training on CPU (gloo), and the rank sharding of the training stream.

* ``test_ddp_matches_single_process_on_union_batch``: this file, run as a script, trains a tiny
  model for 3 steps with Lightning's DDP on 2 CPU processes (gloo; ``strategy
  ddp_find_unused_parameters_true`` exactly as ``just-asr fit --trainer.strategy ...`` passes it)
  from the real :class:`JustDataModule` over a small MLS-format corpus. Each rank records the
  batches it trained on. The test then trains the same initial model in this process, one device,
  on the union of the two ranks' batches at each step, and checks that the final parameters match.

  Why the math is identical: every rank's batch has exactly 2 transcribed cuts (``max_cuts=2``,
  durations far below ``max_duration``), the objective is the RNN-T loss alone with the
  ``utterance`` reduction (mean over rows), and DDP averages the ranks' gradients; so
  ``(mean over rank 0's 2 rows + mean over rank 1's 2 rows) / 2`` is the mean over the 4 rows of
  the union batch. Nothing random is drawn (dropout 0, no masking, no SpecAugment), and the model
  is padding-invariant (the union batch is re-padded to its longest row).

  Tolerances. The only differences are float32 summation order (the gloo all-reduce adds two
  half-batch gradients, the single process sums four rows at once in other groupings):

  * first-step gradients (DDP's all-reduced gradient on rank 0 vs the union batch's, same initial
    weights): ``3e-4`` of each tensor's largest entry (measured: at most 3e-5);
  * parameters after 3 AdamW steps at ``lr 1e-3`` (a step moves a weight by up to about 1e-3):
    ``atol 5e-5``, i.e. 5% of one step (measured: 7.8e-6). Adam divides each gradient by its own
    running magnitude, so an entry whose true gradient is tiny gets its float noise amplified to a
    step of size ``lr``. That is why the attention *key biases* are left out of the parameter
    comparison: adding the same vector to every key shifts all of a query's logits equally, which
    the softmax ignores, so their true gradient is exactly 0 and their Adam steps are pure noise
    (their gradients are still compared above, where they are ~1e-7 in both runs).

  A negative control (the same single-process run on rank 0's batches only) must differ by more
  than 10x the tolerance (measured: 4.5e-3), so the comparison can fail.

* ``test_rank_sharded_stream_partitions_the_single_stream``: the DataModule, attached to a
  trainer of world size 2, gives rank ``r`` batches ``r, r + 2, r + 4, ...`` of the one-process
  stream: over the first ``2k`` batches, every cut the single process sees is seen by exactly one
  rank, and the ranks never share a cut within a step (``_world()`` reads the trainer's rank).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

#: optimiser steps of the DDP comparison
STEPS = 3
#: see the module docstring
ATOL = 5e-5
GRAD_RTOL = 3e-4
#: parameters whose true gradient is exactly zero (softmax shift invariance), see the module docstring
ZERO_GRAD_SUFFIX = "self_attn.linear_k.bias"


def _arch_dict() -> dict:
    """A ~40k-parameter model: RNN-T only (no masking or quantiser draws), dropout off."""
    return {
        "frontend": {"conv_channels": 8, "dropout": 0.0},
        "encoder": {"d_model": 32, "num_heads": 2, "ffn_dim": 64, "conv_kernel": 3, "dropout": 0.0,
                    "attention_dropout": 0.0, "left_max_position": 8, "right_max_position": 2},
        "quantizer": {"codebook_size": 16, "code_dim": 32},
        "contrastive": {"num_layers": 1, "final_dim": 16, "num_distractors": 4},
        "mlm": {"num_layers": 1},
        "decoder": {"embed_dim": 16, "hidden_dim": 32, "joint_dim": 32, "dropout": 0.0},
        "loss": {"rnnt": 1.0, "ssl": 0.0, "rnnt_reduction": "utterance"},
    }


def _module(tokenizer: str):
    from just_asr.model import ModelConfig
    from just_asr.train.module import JustLightningModule

    torch.manual_seed(0)  # identical initial weights in every process
    return JustLightningModule(arch=ModelConfig.from_dict(_arch_dict()), tokenizer=tokenizer, lr=1e-3,
                               warmup_steps=1, weight_decay=0.0, val_loss=False)


def _datamodule(manifests: str, tokenizer: str):
    from just_asr.train.datamodule import JustDataModule

    return JustDataModule(manifests, tokenizer=tokenizer, langs=["pl"], max_duration=20.0, max_cuts=2,
                          num_buckets=1, seed=0)


def _trainer(**kw):
    import lightning.pytorch as pl

    return pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                      limit_val_batches=0, **kw)


def _record_callback(store: list):
    import lightning.pytorch as pl

    class RecordBatches(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            store.append({k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in batch.items()})

    return RecordBatches()


def _grad_callback(store: dict):
    import lightning.pytorch as pl

    class FirstGrads(pl.Callback):
        """The gradients of the first optimiser step (after DDP's all-reduce: its average)."""

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if not store:
                for n, p in pl_module.model.named_parameters():
                    if p.grad is not None:
                        store[n] = p.grad.detach().clone()

    return FirstGrads()


def _ddp_main(manifests: str, tokenizer: str, out: str) -> None:
    """Run by ``python tests/test_distributed.py``: Lightning's launcher starts rank 1 the same way."""
    torch.set_num_threads(1)
    batches: list[dict] = []
    grads: dict[str, torch.Tensor] = {}
    trainer = _trainer(devices=2, strategy="ddp_find_unused_parameters_true",
                       callbacks=[_record_callback(batches), _grad_callback(grads)])
    mod = _module(tokenizer)
    trainer.fit(mod, datamodule=_datamodule(manifests, tokenizer))
    rank = trainer.global_rank
    torch.save({"batches": batches, "world_size": trainer.world_size,
                "distributed_sampler": trainer._accelerator_connector.use_distributed_sampler},
               Path(out) / f"rank{rank}.pt")
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in mod.model.state_dict().items()}, Path(out) / "final.pt")
        torch.save(grads, Path(out) / "grads0.pt")


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Manifests (one language, 12 train cuts of 0.4-0.7 s tone audio) and a tokenizer."""
    from data_helpers import write_mls_corpus

    from just_asr.data.dataset import cut_text
    from just_asr.data.mls import load_manifests, prepare_mls
    from just_asr.data.tokenizer import train_tokenizer

    work = tmp_path_factory.mktemp("dist")
    write_mls_corpus(work / "corpus", langs=("pl",), splits={"train": 12, "dev": 2})
    prepare_mls(work / "corpus", work / "manifests", langs=["pl"], progress=False)
    texts = {"pl": [cut_text(c) for c in load_manifests(work / "manifests", "pl", "train")]}
    tok = train_tokenizer(texts, work / "tok", vocab_size=128)
    return work, str(work / "manifests"), str(tok)


def _union(a: dict, b: dict) -> dict:
    """Rows of ``a`` then ``b``, re-padded to the longest (features with 0, targets with blank 0)."""
    from just_asr.data.dataset import collate

    feats, toks = [], []
    for x in (a, b):
        for i in range(x["features"].shape[0]):
            feats.append(x["features"][i, : int(x["feature_lens"][i])])
            toks.append(x["targets"][i, : int(x["target_lens"][i])].tolist())
    return collate(feats, toks, a["langs"] + b["langs"], a["cut_ids"] + b["cut_ids"], a["texts"] + b["texts"])


def _fit_single(tokenizer: str, batches: list[dict]) -> dict[str, torch.Tensor]:
    from test_train import loader

    mod = _module(tokenizer)
    _trainer(devices=1).fit(mod, loader(batches))
    return {k: v.detach().clone() for k, v in mod.model.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """Largest absolute difference over the floating-point entries (and where), key biases left out."""
    assert a.keys() == b.keys()
    return max((float((a[k].double() - b[k].double()).abs().max()), k)
               for k in a if torch.is_floating_point(a[k]) and not k.endswith(ZERO_GRAD_SUFFIX))


def _union_grads(tokenizer: str, batch: dict) -> dict[str, torch.Tensor]:
    mod = _module(tokenizer)
    mod._forward_loss(batch).total.backward()
    return {n: p.grad.detach().clone() for n, p in mod.model.named_parameters() if p.grad is not None}


def test_ddp_matches_single_process_on_union_batch(corpus, tmp_path):
    work, manifests, tok = corpus
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                                              os.environ.get("PYTHONPATH", "")]))
    for k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RANK"):
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), manifests, tok, str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        log, _ = proc.communicate()
        pytest.fail(f"the 2-process DDP run did not finish in 150 s:\n{log[-3000:]}")
    assert proc.returncode == 0, log[-4000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert not ranks[0]["distributed_sampler"]  # the DataModule turned Lightning's sampler replacement off
    b0, b1 = ranks[0]["batches"], ranks[1]["batches"]
    assert len(b0) == len(b1) == STEPS
    for x, y in zip(b0, b1):
        assert len(x["cut_ids"]) == len(y["cut_ids"]) == 2  # equal rows per rank: the averaging is exact
        assert bool(x["has_text"].all()) and bool(y["has_text"].all())
        assert not set(x["cut_ids"]) & set(y["cut_ids"]), "both ranks trained on the same cut in one step"

    unions = [_union(x, y) for x, y in zip(b0, b1)]
    ddp_grads = torch.load(tmp_path / "grads0.pt", weights_only=True)
    ref_grads = _union_grads(tok, unions[0])
    assert ddp_grads.keys() == ref_grads.keys()
    for n, g in ref_grads.items():
        scale = float(g.abs().max())
        err = float((ddp_grads[n] - g).abs().max())
        assert err <= GRAD_RTOL * max(scale, 1e-3), f"{n}: first-step gradient differs by {err:.3g} (max |g| {scale:.3g})"

    ddp = torch.load(tmp_path / "final.pt", weights_only=True)
    diff, where = _max_diff(ddp, _fit_single(tok, unions))
    assert diff <= ATOL, f"DDP vs single process on the union batch: max |diff| {diff:.3g} > {ATOL} at {where}"
    control, _ = _max_diff(ddp, _fit_single(tok, b0))  # rank 0's batches alone: no averaging with rank 1
    assert control > 10 * ATOL, f"negative control too close ({control:.3g}): the test could not fail"


def test_rank_sharded_stream_partitions_the_single_stream(corpus):
    _, manifests, tok = corpus
    k = 6

    def first_batches(world_size: int, rank: int, n: int) -> list[list[str]]:
        dm = _datamodule(manifests, tok)
        dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
        assert dm._world() == (world_size, rank)
        out = []
        for batch in dm.train_dataloader():
            out.append(list(batch["cut_ids"]))
            if len(out) == n:
                return out
        raise AssertionError("the training stream ended")

    single = first_batches(1, 0, 2 * k)
    r0, r1 = first_batches(2, 0, k), first_batches(2, 1, k)
    # rank r gets batches r, r + 2, ... of the single-process stream
    assert r0 == single[0::2] and r1 == single[1::2]
    for a, b in zip(r0, r1):
        assert not set(a) & set(b)
    # every cut occurrence of the single stream is trained on by exactly one rank
    seen_single = sorted(c for b in single for c in b)
    seen_ranks = sorted(c for b in r0 + r1 for c in b)
    assert seen_ranks == seen_single and len(seen_single) == 4 * k


if __name__ == "__main__":  # the DDP worker script of test_ddp_matches_single_process_on_union_batch
    _ddp_main(*sys.argv[1:4])
