"""The same numbers on a CUDA GPU as on the CPU (skipped where torch sees no GPU, as in CI).

Nothing in the project needs a GPU, but everything is written device-agnostic; these tests hold it
to that where one exists: ``pytest tests/test_cuda.py`` on a GPU machine. Each one computes the same
thing from the same float32 inputs on both devices (TF32 off) and compares values and gradients, or,
for bf16, checks one whole training step on the GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from model_helpers import model_config

from just_asr.losses import rnnt_loss
from just_asr.losses.pruned_rnnt import pruned_rnnt_loss
from just_asr.losses.w2vbert import contrastive_loss, diversity_loss, mlm_loss, sample_distractors
from just_asr.model import JustModel, ModelConfig
from just_asr.model.transducer import Joiner

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_tf32():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def leaf(x: torch.Tensor, device: str) -> torch.Tensor:
    return x.detach().clone().to(device).requires_grad_()


def test_rnnt_loss_matches_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    B, T, U, V = 4, 30, 8, 33
    logits = torch.randn(B, T, U + 1, V, generator=g)
    targets = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32)
    t_lens = torch.tensor([30, 21, 9, 1], dtype=torch.int32)
    u_lens = torch.tensor([8, 5, 0, 1], dtype=torch.int32)
    out = {}
    for dev in ("cpu", "cuda"):
        x = leaf(logits, dev)
        loss = rnnt_loss(x, targets.to(dev), t_lens.to(dev), u_lens.to(dev), blank=0, reduction="none")
        (loss * torch.arange(1, B + 1, device=dev)).sum().backward()
        out[dev] = (loss, x.grad)
    assert out["cuda"][0].device.type == "cuda"
    assert rel(out["cuda"][0], out["cpu"][0]) < 1e-5
    assert rel(out["cuda"][1], out["cpu"][1]) < 1e-5


def test_pruned_rnnt_loss_matches_cpu() -> None:
    g = torch.Generator().manual_seed(1)
    B, T, U, V, J = 3, 25, 7, 19, 16
    enc = torch.randn(B, T, J, generator=g)
    pred = torch.randn(B, U + 1, J, generator=g)
    am = torch.randn(B, T, V, generator=g)
    lm = torch.randn(B, U + 1, V, generator=g)
    targets = torch.randint(1, V, (B, U), generator=g)
    t_lens = torch.tensor([25, 17, 8])
    u_lens = torch.tensor([7, 4, 2])
    torch.manual_seed(0)
    joiner_cpu = Joiner(J, J, J, V)
    out = {}
    for dev in ("cpu", "cuda"):
        joiner = Joiner(J, J, J, V).to(dev)
        joiner.load_state_dict(joiner_cpu.state_dict())
        xs = [leaf(t, dev) for t in (enc, pred, am, lm)]
        res = pruned_rnnt_loss(joiner.project_encoder(xs[0]), joiner.project_predictor(xs[1]), joiner.join,
                               xs[2], xs[3], targets.to(dev), t_lens.to(dev), u_lens.to(dev), prune_range=4)
        (0.5 * res.simple + res.pruned).backward()
        out[dev] = (res.simple, res.pruned, [x.grad for x in xs], [p.grad for p in joiner.parameters()])
    cpu, gpu = out["cpu"], out["cuda"]
    assert rel(gpu[0], cpu[0]) < 1e-5 and rel(gpu[1], cpu[1]) < 1e-5
    for a, b in zip(gpu[2] + gpu[3], cpu[2] + cpu[3]):
        assert rel(a, b) < 1e-4


def test_lattice_columns_on_gpu_match_diagonals_on_cpu() -> None:
    from just_asr.losses.lattice import forward_backward
    from just_asr.losses.lattice import lattice_masks

    g = torch.Generator().manual_seed(2)
    B, T, U1 = 3, 60, 12
    lp = torch.randn(B, T, U1, 3, generator=g, dtype=torch.float64).log_softmax(-1)
    tl, ul = torch.tensor([60, 41, 7]), torch.tensor([11, 6, 0])
    node_ok, emit_ok = lattice_masks(tl, ul, T, U1)
    lpb, lpe = lp[..., 0].masked_fill(~node_ok, float("-inf")), lp[..., 1].masked_fill(~emit_ok, float("-inf"))
    cpu = forward_backward(lpb, lpe, tl, ul, method="diagonals")
    gpu = forward_backward(lpb.cuda(), lpe.cuda(), tl.cuda(), ul.cuda(), method="columns")
    for a, b in zip(gpu, cpu):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)


def test_w2vbert_losses_match_cpu() -> None:
    g = torch.Generator().manual_seed(2)
    B, T, D, K = 3, 40, 12, 24
    context = torch.randn(B, T, D, generator=g)
    quantized = torch.randn(B, T, D, generator=g)
    mask = torch.rand(B, T, generator=g) < 0.4
    mask[:, :3] = True
    lengths = torch.tensor([40, 31, 20])
    mask &= torch.arange(T)[None] < lengths[:, None]
    distractors = sample_distractors(mask, 6, generator=torch.Generator().manual_seed(3))
    logits = torch.randn(B, T, K, generator=g)
    ids = torch.randint(0, K, (B, T), generator=g)
    probs = torch.softmax(torch.randn(2, K, generator=g), -1)  # (G, V) averaged code usage
    out = {}
    for dev in ("cpu", "cuda"):
        c, q, lg, pr = (leaf(t, dev) for t in (context, quantized, logits, probs))
        con = contrastive_loss(c, q, mask.to(dev), lengths.to(dev), num_distractors=6,
                               distractors=distractors.to(dev))
        mlm = mlm_loss(lg, ids.to(dev), mask.to(dev))
        div = diversity_loss(pr)
        (con.loss + mlm.loss + div).backward()
        out[dev] = ([con.loss, mlm.loss, div], [c.grad, q.grad, lg.grad, pr.grad])
    for a, b in zip(out["cuda"][0] + out["cuda"][1], out["cpu"][0] + out["cpu"][1]):
        assert rel(a, b) < 1e-5


def small_cfg(**over: Any) -> ModelConfig:
    base: dict[str, Any] = {
        "frontend": {"conv_channels": 8, "dropout": 0.0},
        "encoder": {"d_model": 32, "num_heads": 4, "ffn_dim": 64, "conv_kernel": 5, "dropout": 0.0,
                    "attention_dropout": 0.0, "left_max_position": 8, "right_max_position": 2},
        "quantizer": {"num_codebooks": 2, "codebook_size": 16, "code_dim": 8},
        "contrastive": {"num_layers": 1, "final_dim": 16, "num_distractors": 5},
        "mlm": {"num_layers": 1},
        "decoder": {"embed_dim": 16, "hidden_dim": 16, "joint_dim": 16, "dropout": 0.0},
    }
    return model_config(base, over)


def small_batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    feature_lens = torch.tensor([160, 120, 90])
    features = torch.randn(3, 160, 80, generator=g) * (torch.arange(160)[None, :, None] < feature_lens[:, None, None])
    target_lens = torch.tensor([7, 5, 3])
    targets = torch.randint(1, vocab, (3, 7), generator=g) * (torch.arange(7)[None] < target_lens[:, None])
    return dict(features=features, feature_lens=feature_lens, targets=targets, target_lens=target_lens,
                has_text=torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("rnnt", ["full", "pruned"])
def test_supervised_model_step_matches_cpu(rnnt: str) -> None:
    """No SSL (its masks come from each device's own RNG) and no dropout: the whole forward, loss and
    backward of the model are deterministic, so both devices must agree."""
    vocab = 13
    cfg = small_cfg(decoder={"rnnt": rnnt}, loss={"ssl": 0.0})
    torch.manual_seed(0)
    ref = JustModel(cfg, vocab)
    ref.set_step(10**6)
    batch = small_batch(vocab)
    out = {}
    for dev in ("cpu", "cuda"):
        model = JustModel(cfg, vocab).to(dev)
        model.load_state_dict(ref.state_dict())
        model.train()
        model.set_step(10**6)
        b = {k: v.to(dev) for k, v in batch.items()}
        loss = model(b["features"], b["feature_lens"], b["targets"], b["target_lens"], b["has_text"]).compute_loss()
        loss.total.backward()
        out[dev] = (loss.total, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert rel(out["cuda"][0], out["cpu"][0]) < 1e-5
    assert out["cuda"][1].keys() == out["cpu"][1].keys() and len(out["cpu"][1]) > 10
    # per tensor, relative to the whole gradient's size: some are exactly 0 in exact arithmetic (the
    # attention key bias: softmax ignores a constant added to every key) and only rounding is left
    scale = torch.cat([g.flatten() for g in out["cpu"][1].values()]).double().norm()
    for name, grad in out["cpu"][1].items():
        diff = (out["cuda"][1][name].double().cpu() - grad.double()).norm()
        assert diff <= 1e-4 * grad.double().norm() + 1e-6 * scale, name


@pytest.mark.parametrize("branch", ["masked", "unmasked"])
def test_just_bf16_training_step_on_gpu(branch: str) -> None:
    """The whole JUST objective under CUDA bf16 autocast: finite loss terms, a finite gradient for
    every parameter, and an optimiser step that changes the weights."""
    vocab = 13
    cfg = small_cfg(rnnt_branch=branch)
    torch.manual_seed(0)
    model = JustModel(cfg, vocab).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    b = {k: v.cuda() for k, v in small_batch(vocab).items()}
    b["supervised_features"] = b["features"].clone()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(b["features"], b["feature_lens"], b["targets"], b["target_lens"], b["has_text"],
                    supervised_features=b["supervised_features"])
        loss = out.compute_loss()
    assert loss.total.dtype == torch.float32 and torch.isfinite(loss.total)
    loss.total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    assert sum(int(not torch.equal(a, p.detach())) for a, p in zip(before, model.parameters())) > 10


def test_train_step_benchmark_runs_on_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rc = train_step.main(["--device", "cuda", "--presets", "tiny", "--only", "bf16,pruned,just", "--repeats", "2",
                          "--warmup", "1", "--batch", "4", "--roof-size", "2048"])
    assert rc == 0
    text = capsys.readouterr().out
    row = [line for line in text.splitlines() if line.startswith("| tiny | ")]
    assert len(row) == 1
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert cells[5] == "no"
    audio_per_s, tokens_per_s, gflop, tflops, roof = (float(cells[i]) for i in (8, 9, 11, 12, 13))
    assert audio_per_s > 0 and tokens_per_s > 0 and gflop > 0 and roof > 1
    assert 0 <= tflops < roof and 0 <= float(cells[15]) < 100
