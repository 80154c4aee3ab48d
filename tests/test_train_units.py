"""Unit tests of the training layer's model-independent pieces: the Noam schedule (values by hand),
parameter groups, weight averaging (EMA and checkpoint averaging), init_from's key report, the CLI's
alias rewriting."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from just_asr.train.averaging import (
    EMAWeights,
    average_checkpoints,
    average_state_dicts,
    find_last_checkpoints,
    strip_prefix,
)
from just_asr.train.optim import build_noam_scheduler, build_optimizer, noam_lr, param_groups


def test_noam_values_by_hand():
    # peak 1e-3, warm-up 4: steps 1..4 rise linearly, then peak * sqrt(4 / step)
    peak, w = 1e-3, 4
    expected = [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3 * math.sqrt(4 / 5), 1e-3 * math.sqrt(4 / 6), 0.5e-3]
    got = [noam_lr(s, peak, w) for s in [1, 2, 3, 4, 5, 6, 16]]
    assert got == pytest.approx(expected, rel=1e-12)
    # the peak is the maximum and is reached exactly at the end of warm-up
    vals = [noam_lr(s, peak, 100) for s in range(1, 1000)]
    assert max(vals) == pytest.approx(peak) and vals.index(max(vals)) == 99
    # decay is proportional to step^-0.5 after warm-up
    assert noam_lr(400, peak, 100) / noam_lr(1600, peak, 100) == pytest.approx(2.0)
    assert noam_lr(9, 1.0, 0) == pytest.approx(1 / 3)


def test_noam_scheduler_drives_optimizer_and_decoder_lr():
    model = nn.Module()
    model.encoder = nn.Linear(3, 3)
    model.predictor = nn.Linear(3, 3)
    model.joiner = nn.Linear(3, 2)
    groups = param_groups(model, lr=1e-3, decoder_lr=4e-3, weight_decay=0.1)
    names = {g["name"]: g for g in groups}
    assert set(names) == {"encoder", "encoder_no_decay", "decoder", "decoder_no_decay"}
    assert names["decoder"]["lr"] == 4e-3 and names["encoder"]["lr"] == 1e-3
    assert names["encoder_no_decay"]["weight_decay"] == 0.0 and names["encoder"]["weight_decay"] == 0.1
    n_dec = sum(p.numel() for g in groups if g["name"].startswith("decoder") for p in g["params"])
    assert n_dec == 3 * 3 + 3 + 3 * 2 + 2
    opt = build_optimizer(groups, "adamw", lr=1e-3)
    sched = build_noam_scheduler(opt, warmup_steps=2)
    seen = []
    for _ in range(4):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    # optimiser step k (1-based) uses noam_lr(k, peak, 2) for both peaks
    for k, lrs in enumerate(seen, start=1):
        assert lrs["encoder"] == pytest.approx(noam_lr(k, 1e-3, 2))
        assert lrs["decoder"] == pytest.approx(noam_lr(k, 4e-3, 2))
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(groups, "sgd")


def test_average_state_dicts_and_errors():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "h": torch.tensor([1.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5), "h": torch.tensor([3.0], dtype=torch.bfloat16)}
    c = {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(7), "h": torch.tensor([5.0], dtype=torch.bfloat16)}
    avg = average_state_dicts([a, b, c])
    assert avg["w"].tolist() == pytest.approx([3.0, 3.0])
    assert int(avg["n"]) == 7  # integer buffers come from the newest
    assert avg["h"].dtype == torch.bfloat16 and float(avg["h"]) == 3.0
    with pytest.raises(ValueError, match="different keys"):
        average_state_dicts([a, {"w": a["w"]}])
    with pytest.raises(ValueError, match="shape"):
        average_state_dicts([{"w": torch.zeros(3)}, {"w": torch.zeros(2)}])


def test_ema_matches_independent_loop():
    torch.manual_seed(0)
    lin = nn.Linear(2, 2)
    ema = EMAWeights(lin, decay=0.9, warmup=False)
    ref = {k: v.clone() for k, v in lin.state_dict().items()}
    for _ in range(5):
        with torch.no_grad():
            for p in lin.parameters():
                p.add_(torch.randn_like(p))
        ema.update(lin)
        for k, v in lin.state_dict().items():
            ref[k] = 0.9 * ref[k] + 0.1 * v
    for k in ref:
        torch.testing.assert_close(ema.shadow[k], ref[k])
    # warm-up decay: (1 + n) / (10 + n) capped by decay
    w = EMAWeights(lin, decay=0.999)
    assert w.current_decay() == pytest.approx(0.1)
    w.num_updates = 10_000
    assert w.current_decay() == pytest.approx(0.999)
    # round trip of the state
    other = EMAWeights(lin, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.num_updates == 5
    torch.testing.assert_close(other.shadow["weight"], ema.shadow["weight"])


def _fake_ckpt(path, step, value):
    torch.save({"global_step": step, "state_dict": {"model.w": torch.full((2,), float(value)), "other": torch.ones(1)}},
               path)


def test_find_and_average_last_checkpoints(tmp_path):
    for step, val in [(10, 1.0), (20, 2.0), (30, 4.0)]:
        _fake_ckpt(tmp_path / f"step{step:06d}.ckpt", step, val)
    _fake_ckpt(tmp_path / "last.ckpt", 30, 4.0)  # same step as step000030: counted once
    last2 = find_last_checkpoints(tmp_path / "last.ckpt", 2)
    assert [p.name for p in last2] == ["step000020.ckpt", "step000030.ckpt"]
    avg = average_checkpoints(last2)
    assert set(avg) == {"w"} and avg["w"].tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="only 3 checkpoint"):
        find_last_checkpoints(tmp_path, 4)
    assert strip_prefix({"a": torch.zeros(1)}) .keys() == {"a"}


def test_load_matching_reports_loaded_new_dropped(tmp_path):
    from safetensors.torch import save_file

    from just_asr.train.module import load_matching, read_source_weights

    src = nn.Module()
    src.enc = nn.Linear(4, 3)
    src.head = nn.Linear(3, 5)  # different output size than the target's head
    src.extra = nn.Linear(2, 2)  # absent in the target
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "model.safetensors"))

    dst = nn.Module()
    dst.enc = nn.Linear(4, 3)
    dst.head = nn.Linear(3, 7)
    dst.fresh = nn.Linear(1, 1)  # new
    before_head = dst.head.weight.detach().clone()
    report = load_matching(dst, read_source_weights(tmp_path), str(tmp_path))
    assert report.loaded == ["enc.bias", "enc.weight"]
    assert report.new == ["fresh.bias", "fresh.weight", "head.bias", "head.weight"]
    assert set(report.dropped) == {"head.weight", "head.bias", "extra.weight", "extra.bias"}
    assert "shape" in report.dropped["head.weight"] and report.dropped["extra.bias"] == "absent in model"
    torch.testing.assert_close(dst.enc.weight, src.enc.weight)
    torch.testing.assert_close(dst.head.weight, before_head)
    text = report.summary()
    assert "loaded  2" in text and "new     4" in text and "dropped 4" in text
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        read_source_weights(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else None)


def test_fit_alias_rewriting():
    from just_asr.cli.fit import _rewrite_aliases

    assert _rewrite_aliases(["--init-from", "x.ckpt", "--resume", "--init_from=y", "--model.lr", "1"]) == [
        "--model.init_from", "x.ckpt", "--ckpt_path", "last", "--model.init_from=y", "--model.lr", "1"]


def test_ddp_padding_duplicates_are_recognised() -> None:
    from just_asr.train.module import _is_padding_duplicate

    assert _is_padding_duplicate("8890_6589_000021_dup1")
    assert _is_padding_duplicate("a_dup12")
    assert not _is_padding_duplicate("8890_6589_000021")
    assert not _is_padding_duplicate("speaker_dupont_000001")
    assert not _is_padding_duplicate("_dup3")


def test_constant_schedule_warms_up_then_holds() -> None:
    import torch

    from just_asr.train.optim import build_noam_scheduler

    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = build_noam_scheduler(opt, 4, "constant")
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5, 0.5]
    import pytest

    with pytest.raises(ValueError, match="lr_schedule"):
        build_noam_scheduler(opt, 4, "cosine")


def test_wsd_schedule_warms_up_holds_then_decays_to_zero() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_noam_scheduler(opt, 2, "wsd", total_steps=10, decay_fraction=0.4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 1/2, 2/2; held through optimiser step 7; then 0.75, 0.5, 0.25 and 0 from step 11 on
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    with pytest.raises(ValueError, match="max_steps"):
        build_noam_scheduler(opt, 2, "wsd")
    with pytest.raises(ValueError, match="lr_decay_fraction"):
        build_noam_scheduler(opt, 2, "wsd", total_steps=10, decay_fraction=0.0)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_optimizer_is_the_default_on_cpu_and_updates_like_the_for_loop(name: str) -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer(param_groups(a, 1e-2, None, 0.1), name, lr=1e-2)
    opt_b = build_optimizer(param_groups(b, 1e-2, None, 0.1), name, lr=1e-2, fused=False)
    assert opt_a.defaults["fused"] is True and not opt_b.defaults["fused"]
    x = torch.randn(11, 5)

    def step_both_and_compare(pairs, steps: int) -> None:
        """Train each (model, optimiser) on ``x`` for ``steps`` steps; the models must stay equal."""
        for _ in range(steps):
            for m, o in pairs:
                o.zero_grad()
                m(x).pow(2).sum().backward()
                o.step()
        (m0, _), (m1, _) = pairs
        for p0, p1 in zip(m0.parameters(), m1.parameters()):
            torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-6)

    step_both_and_compare(((a, opt_a), (b, opt_b)), 5)
    # a for-loop checkpoint resumes into a fused optimiser that stays fused and steps like the for-loop
    c = copy.deepcopy(b)
    opt_c = build_optimizer(param_groups(c, 1e-2, None, 0.1), name, lr=1e-2)
    opt_c.load_state_dict(copy.deepcopy(opt_b.state_dict()))  # as from a checkpoint file: no shared tensors
    assert all(g["fused"] is True for g in opt_c.param_groups)
    step_both_and_compare(((b, opt_b), (c, opt_c)), 1)
    # groups given as generators keep their parameters
    gen = build_optimizer([{"params": a.parameters()}], name, lr=1e-2)
    assert len(gen.param_groups[0]["params"]) == len(list(a.parameters()))
