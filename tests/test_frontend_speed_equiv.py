"""The speed-oriented formulations in ``model/conformer.py`` and ``model/frontend.py`` keep the math.

* ``ConvModule.forward`` now works in the ``(B, T, d)`` layout (pointwise convolutions as
  ``F.linear``, the depthwise convolution as a channels-last grouped ``conv2d``): its outputs and
  gradients must equal the textbook ``Conv1d``-on-``(B, d, T)`` formulation, written out here
  independently, for every option (layer/batch norm, causal, with/without bias) and under bf16
  autocast.
* ``fast_dropout`` / ``Dropout`` replace ``torch.bernoulli_`` masks with 16- or 32-bit integer
  pieces of 64-bit draws: the outputs must be exactly ``0`` or ``x / (1 - p)``, the gradient must
  be the same mask times ``1 / (1 - p)``, the keep rate must be ``1 - p`` (binomial bounds; rates
  near 0 or 1 included), elements sharing one 64-bit draw must be independent, and eval / ``p = 0``
  / ``p = 1`` must behave as ``F.dropout``.
* ``ConvSubsampling`` runs its convolutions on channels-last tensors on CPU and reads the last one
  in place with the projection's columns reordered: outputs and gradients must equal the NCHW
  formulation (``Conv2d`` modules, ``(B, T', C * F')`` projection), and the weights' gradients must
  keep the parameters' strides.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from just_asr.model.config import EncoderConfig
from just_asr.model.conformer import ConformerStack, ConvModule
from just_asr.model.frontend import ConvSubsampling, Dropout, dropout_keep_mask, fast_dropout

torch.set_num_threads(1)


def reference_conv_module(m: ConvModule, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The Conv1d formulation on ``(B, d, T)`` (the module's previous code path), dropout off."""
    y = m.layer_norm(x).transpose(1, 2)  # (B, d, T)
    y = F.glu(m.pointwise_conv1(y), dim=1)
    y = y.masked_fill(~valid.unsqueeze(1), 0.0)
    pad = (m.kernel_size - 1, 0) if m.causal else ((m.kernel_size - 1) // 2,) * 2
    y = m.depthwise_conv(F.pad(y, pad))
    if m.norm_kind == "layer":
        y = m.depthwise_layer_norm(y.transpose(1, 2)).transpose(1, 2)
    else:
        y = m.depthwise_batch_norm(y, valid)
    y = m.pointwise_conv2(m.activation(y))
    return y.transpose(1, 2)


def _inputs(b: int = 3, t: int = 13, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    lens = torch.tensor([t, t - 4, 5][:b])
    valid = torch.arange(t)[None, :] < lens[:, None]
    return x, valid


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_module_matches_conv1d_formulation(norm: str, causal: bool, bias: bool) -> None:
    torch.manual_seed(1)
    m = ConvModule(8, 5, norm=norm, causal=causal, bias=bias, dropout=0.0)
    m.train()  # batch norm uses batch statistics: both paths must see the same values
    x, valid = _inputs()
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    w = torch.randn(3, 13, 8)  # a fixed cotangent
    y_new = m(x1, valid)
    grads_new = torch.autograd.grad((y_new * w).sum(), [x1, *m.parameters()])
    y_ref = reference_conv_module(m, x2, valid)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), [x2, *m.parameters()])
    assert y_new.shape == (3, 13, 8)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_new, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_conv_module_matches_under_bf16_autocast() -> None:
    torch.manual_seed(2)
    m = ConvModule(16, 7, dropout=0.0).eval()
    x, valid = _inputs(d=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y_new = m(x, valid)
        y_ref = reference_conv_module(m, x, valid)
    assert y_new.dtype == y_ref.dtype == torch.bfloat16
    # both run the same bf16 kernels up to accumulation order: a few bf16 ulps at most
    err = (y_new.float() - y_ref.float()).abs().max() / y_ref.float().abs().max()
    assert float(err) < 2e-2


@pytest.mark.parametrize("causal", [False, True])
def test_depthwise_in_bf16_runs_in_float32_and_rounds_once(causal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under bf16 autocast on CPU the depthwise convolution computes in float32 on the bf16 input
    and rounds its result to bf16 once: it equals a float64 convolution of the same bf16 values to
    within one bf16 rounding, output bf16; its gradients (input bf16, weight/bias float32) match the
    float64 ones to bf16 precision."""
    torch.manual_seed(6)
    d, k = 12, 7
    m = ConvModule(d, k, causal=causal, dropout=0.0)
    y = torch.randn(4, 21, d).bfloat16()
    pad = 0 if causal else (k - 1) // 2
    y_in = F.pad(y, (0, 0, k - 1, 0)) if causal else y
    y1 = y_in.clone().requires_grad_()
    seen = []
    real_conv2d = F.conv2d

    def spy(inp, weight, *args, **kwargs):
        seen.append((inp.dtype, weight.dtype, inp.is_contiguous()))
        return real_conv2d(inp, weight, *args, **kwargs)

    monkeypatch.setattr(F, "conv2d", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m._depthwise(y1, pad)
    monkeypatch.undo()
    # float32 kernel on the channels-last view (no contiguous copy: the bf16 path's hang and cost)
    assert seen == [(torch.float32, torch.float32, False)]
    assert out.dtype == torch.bfloat16 and out.shape == (4, 21, d)
    y2 = y_in.double().requires_grad_()
    w64, b64 = m.depthwise_conv.weight.double(), m.depthwise_conv.bias.double()
    ref = F.conv1d(y2.transpose(1, 2), w64, b64, padding=pad, groups=d).transpose(1, 2)
    torch.testing.assert_close(out.double(), ref.bfloat16().double(), rtol=8e-3, atol=1e-6)
    cot = torch.randn(4, 21, d)
    gy, gw, gb = torch.autograd.grad((out.float() * cot).sum(), [y1, m.depthwise_conv.weight, m.depthwise_conv.bias])
    ry, rw, rb = torch.autograd.grad((ref * cot.double()).sum(), [y2, w64, b64])
    assert gy.dtype == torch.bfloat16 and gw.dtype == torch.float32
    torch.testing.assert_close(gy.double(), ry, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw.double(), rw, rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(gb.double(), rb, rtol=2e-2, atol=5e-2)


def test_depthwise_keeps_float64_and_handles_no_bias_and_bf16_weights() -> None:
    """float64 stays float64 (gradcheck passes), ``bias=False`` works, and a module whose weights
    were cast to bf16 (no autocast) returns bf16 computed from its bf16 weights."""
    torch.manual_seed(7)
    m = ConvModule(6, 5, dropout=0.0, bias=False).double()
    y = torch.randn(2, 9, 6, dtype=torch.float64, requires_grad=True)
    assert m._depthwise(y, 2).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: m._depthwise(t, 2), (y,))
    ref = F.conv1d(y.transpose(1, 2), m.depthwise_conv.weight, None, padding=2, groups=6).transpose(1, 2)
    torch.testing.assert_close(m._depthwise(y, 2), ref, rtol=1e-12, atol=1e-12)
    m16 = ConvModule(6, 5, dropout=0.0).bfloat16()
    y16 = torch.randn(2, 9, 6).bfloat16()
    out = m16._depthwise(y16, 2)
    w, b = m16.depthwise_conv.weight.double(), m16.depthwise_conv.bias.double()
    ref = F.conv1d(y16.double().transpose(1, 2), w, b, padding=2, groups=6).transpose(1, 2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref.bfloat16().double(), rtol=8e-3, atol=1e-6)


@pytest.mark.parametrize("bf16", [False, True])
def test_depthwise_weight_gradient_has_the_parameters_strides(bf16: bool) -> None:
    """DDP's gradient layout contract: a parameter's gradient has the parameter's strides (DDP warned
    "Grad strides do not match bucket view strides" for the depthwise kernel, whose gradient came
    back with the convolution's channels-last strides on its size-1 dims), with the same values as
    ``conv1d``'s gradient."""
    torch.manual_seed(3)
    m = ConvModule(144, 15, dropout=0.0)
    y = torch.randn(4, 30, 144)
    if bf16:  # as in training: the GLU's output is bf16 under autocast
        y = y.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        m._depthwise(y, 7).float().square().sum().backward()
    w = m.depthwise_conv.weight
    assert w.grad.stride() == w.stride() == (15, 15, 1)
    ref_w = w.detach().clone().requires_grad_(True)
    F.conv1d(y.float().transpose(1, 2), ref_w, m.depthwise_conv.bias.detach(), padding=7,
             groups=144).square().sum().backward()
    err = float((w.grad - ref_w.grad).norm() / ref_w.grad.norm())
    assert err < (1e-2 if bf16 else 1e-5)  # bf16: the output is rounded to bf16 before the loss


_TWO_THREAD_BF16 = """
import torch
from just_asr.model.conformer import ConvModule
torch.set_num_threads(2)
torch.manual_seed(0)
m = ConvModule(144, 15, dropout=0.0)
x = torch.randn(15, 38, 144, requires_grad=True)
valid = torch.ones(15, 38, dtype=torch.bool)
with torch.autocast("cpu", dtype=torch.bfloat16):
    y = m(x, valid)
y.float().sum().backward()
print("ok", float(x.grad.abs().sum()) > 0)
"""


def test_conv_module_bf16_two_threads_returns() -> None:
    """Regression: oneDNN's bf16 depthwise conv2d on the channels-last view never returned with two
    threads at this shape (B=15, T=38, d=144, kernel 15), which hung any multi-threaded bf16 CPU
    training. Run in a child process so a hang fails the test instead of the suite."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _TWO_THREAD_BF16], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok", "True"]


def reference_conv_subsampling(fe: ConvSubsampling, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The NCHW formulation (the module's previous code path), dropout off."""
    x = torch.relu(fe.conv1(features.unsqueeze(1)))
    x = torch.relu(fe.conv2(x))
    if fe.conv3 is not None:
        x = torch.relu(fe.conv3(x))
    b, c, t, f = x.shape
    x = fe.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
    valid = torch.arange(t)[None, :] < fe.output_lengths(lens)[:, None]
    return x * valid.unsqueeze(-1).to(x.dtype)


@pytest.mark.parametrize("num_layers", [2, 3])
@pytest.mark.parametrize("bf16", [False, True])
def test_conv_subsampling_channels_last_matches_the_nchw_formulation(num_layers: int, bf16: bool) -> None:
    torch.manual_seed(0)
    fe = ConvSubsampling(input_dim=80, channels=6, d_model=10, num_layers=num_layers).eval()
    features = torch.randn(3, 41, 80)
    lens = torch.tensor([41, 30, 20])
    grad = torch.randn(3, fe.output_lengths(lens).max().item(), 10)
    results = []
    for run in (lambda: fe(features, lens)[0], lambda: reference_conv_subsampling(fe, features, lens)):
        fe.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = run()
        y.float().backward(grad)
        results.append((y.detach().float(), {n: p.grad.clone() for n, p in fe.named_parameters()}))
    (y, g), (y_ref, g_ref) = results
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(y, y_ref, **tol)
    assert g.keys() == g_ref.keys()
    for n, p in fe.named_parameters():
        torch.testing.assert_close(g[n], g_ref[n], **tol)
        assert g[n].stride() == p.stride(), n


def test_conv_module_padding_does_not_leak() -> None:
    """An utterance's outputs in a padded batch equal its outputs alone (eval, layer norm)."""
    torch.manual_seed(3)
    m = ConvModule(8, 5, dropout=0.0).eval()
    x, valid = _inputs()
    y = m(x, valid)
    alone = m(x[1:2, :9], valid[1:2, :9])
    torch.testing.assert_close(y[1:2, :9], alone, rtol=1e-5, atol=1e-6)


def test_conformer_stack_eval_equals_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole stack gives the same output with the old Conv1d path swapped back in."""
    torch.manual_seed(4)
    stack = ConformerStack(EncoderConfig(d_model=16, num_heads=2, ffn_dim=32, conv_kernel=5), 2).eval()
    x, _ = _inputs(d=16)
    lens = torch.tensor([13, 9, 5])
    y_new = stack(x, lens)
    monkeypatch.setattr(ConvModule, "forward", lambda self, x, valid: reference_conv_module(self, x, valid))
    y_ref = stack(x, lens)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- dropout


def test_dropout_values_and_gradient_are_the_inverted_dropout_mask() -> None:
    torch.manual_seed(5)
    p = 0.3
    x = (torch.rand(4000) + 0.5).requires_grad_()  # no zeros: a zero output means "dropped"
    y = fast_dropout(x, p, training=True)
    kept = y != 0
    scale = 1.0 / (1.0 - p)
    torch.testing.assert_close(y[kept], x.detach()[kept] * scale, rtol=0, atol=1e-6)
    (g,) = torch.autograd.grad(y.sum(), [x])
    expected = kept.float() * scale
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.001, 0.999])
def test_keep_rate_is_one_minus_p(p: float) -> None:
    torch.manual_seed(6)
    n = 200_000
    keep = dropout_keep_mask((n,), p, torch.device("cpu"))
    assert keep.dtype == torch.bool and keep.shape == (n,)
    rate = keep.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma


@pytest.mark.parametrize("p, pieces", [(0.5, 4), (0.1, 4), (0.001, 2), (0.9995, 2)])
def test_elements_sharing_a_draw_are_independent(p: float, pieces: int) -> None:
    """One 64-bit draw serves four elements (16-bit pieces) or, for rates near 0 or 1, two (32-bit
    pieces): every pair of elements of a draw is kept together with probability q**2, and each
    position within a draw keeps at rate q on its own."""
    from just_asr.model.frontend import _piece_bits

    assert _piece_bits(p) == 64 // pieces
    torch.manual_seed(7)
    q = 1.0 - p
    n = 2_400_000 if min(p, q) < 0.01 else 400_000
    keep = dropout_keep_mask((n,), p, torch.device("cpu")).view(-1, pieces)
    m = keep.size(0)
    for i in range(pieces):
        rate = keep[:, i].float().mean().item()
        assert abs(rate - q) < 5 * math.sqrt(q * (1 - q) / m)
        for j in range(i + 1, pieces):
            both = (keep[:, i] & keep[:, j]).float().mean().item()
            assert abs(both - q * q) < 5 * math.sqrt(q * q * (1 - q * q) / m)


@pytest.mark.parametrize("p, bits, forced", [(0.1, 16, None), (0.37, 16, None), (0.001, 32, None),
                                             (0.999, 32, None), (0.1, 32, 32), (0.001, 16, 16)])
def test_mask_is_the_documented_threshold_on_the_draws(p: float, bits: int, forced: int | None) -> None:
    """Pinned layout: under the same seed the mask is ``piece < round((1 - p) 2**bits) - 2**(bits-1)``
    over the signed 16- or 32-bit views of ``ceil(n / (64 / bits))`` 64-bit draws, n odd here."""
    n = 1001
    torch.manual_seed(13)
    keep = dropout_keep_mask((7, 11, 13), p, torch.device("cpu"), bits=forced)
    torch.manual_seed(13)
    per = 64 // bits
    words = torch.empty((n + per - 1) // per, dtype=torch.int64).random_(-(2**63), None)
    pieces = words.view(torch.int16 if bits == 16 else torch.int32)[:n]
    ref = (pieces < round((1 - p) * 2**bits) - 2 ** (bits - 1)).view(7, 11, 13)
    assert torch.equal(keep, ref)
    other = torch.int32 if bits == 16 else torch.int16  # the other piece size gives another mask
    torch.manual_seed(13)
    per_o = 64 // (48 - bits)
    w2 = torch.empty((n + per_o - 1) // per_o, dtype=torch.int64).random_(-(2**63), None)
    alt = (w2.view(other)[:n] < round((1 - p) * 2 ** (48 - bits)) - 2 ** (47 - bits)).view(7, 11, 13)
    assert not torch.equal(keep, alt)


def test_sixteen_bit_pieces_quantise_p_finely() -> None:
    """With 16-bit pieces the keep probability is round((1 - p) 2**16) / 2**16: for p = 0.1 that is
    58982 / 65536, 6e-6 from 0.9. Over 2**22 elements the keep rate is within binomial bounds of
    it, and outside the bounds of what 8-bit pieces would give (230 / 256)."""
    torch.manual_seed(11)
    n = 1 << 22
    keep = dropout_keep_mask((n,), 0.1, torch.device("cpu"))
    rate = keep.float().mean().item()
    exact = 58982 / 65536
    assert abs(rate - exact) < 5 * math.sqrt(exact * (1 - exact) / n)
    assert abs(rate - 230 / 256) > 5 * math.sqrt(exact * (1 - exact) / n)


def test_odd_sizes_shapes_and_dtypes() -> None:
    torch.manual_seed(8)
    x = torch.randn(3, 5, 7, dtype=torch.bfloat16)  # 105 elements: an odd count
    y = fast_dropout(x, 0.2, training=True)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    kept = y != 0
    expected = (x.float() * 1.25).to(torch.bfloat16)
    assert torch.equal(y[kept], expected[kept])


def test_eval_and_edge_probabilities() -> None:
    x = torch.randn(6, 9)
    assert fast_dropout(x, 0.4, training=False) is x
    assert fast_dropout(x, 0.0, training=True) is x
    assert torch.equal(fast_dropout(x, 1.0, training=True), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):
        fast_dropout(x, 1.5, training=True)
    with pytest.raises(ValueError, match="p must be in"):
        dropout_keep_mask((3,), 0.0, torch.device("cpu"))


def test_dropout_module_is_seeded_by_the_global_rng_and_a_drop_in() -> None:
    d = Dropout(0.25)
    assert isinstance(d, torch.nn.Dropout) and d.p == 0.25 and not list(d.parameters())
    x = torch.ones(1000)
    torch.manual_seed(9)
    a = d(x)
    torch.manual_seed(9)
    b = d(x)
    c = d(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    d.eval()
    assert torch.equal(d(x), x)
    with pytest.raises(ValueError, match="inplace"):
        Dropout(0.1, inplace=True)


def test_modules_use_the_fast_dropout() -> None:
    stack = ConformerStack(EncoderConfig(d_model=8, num_heads=2, ffn_dim=16, conv_kernel=3), 1)
    fe = ConvSubsampling(80, 4, 8, dropout=0.1)
    mods = [m for m in [*stack.modules(), *fe.modules()] if isinstance(m, torch.nn.Dropout)]
    assert mods and all(type(m) is Dropout for m in mods)



# ------------------------------------------------------------------------------------------------
# attention dropout on the CPU: written-out attention with the integer-draw mask instead of SDPA's
# bernoulli_ (same arithmetic as SDPA's math path otherwise)


def _attention_reference(q, k, v, bias, keep, p):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)) + bias
    return (torch.softmax(scores, dim=-1) * keep / (1.0 - p)) @ v


def test_attention_dropout_is_softmax_times_the_keep_mask() -> None:
    from just_asr.model.conformer import _attention_with_fast_dropout

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)
    bias[1, :, :, 5:] = float("-inf")  # padded keys of the second utterance
    p = 0.3
    torch.manual_seed(11)
    out = _attention_with_fast_dropout(q, k, v, bias, p)
    torch.manual_seed(11)
    keep = dropout_keep_mask((2, 3, 7, 7), p, torch.device("cpu"))
    assert 0 < int(keep.sum()) < keep.numel()
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _attention_reference(q, k, v, bias, keep.double(), p), rtol=1e-12, atol=1e-12)

    # gradients with respect to q, k, v and the bias, the mask held fixed by re-seeding
    def f(q_, k_, v_, b_):
        torch.manual_seed(11)
        return _attention_with_fast_dropout(q_, k_, v_, b_, p)

    finite_bias = torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)
    inputs = [x.clone().requires_grad_() for x in (q, k, v, finite_bias)]
    assert torch.autograd.gradcheck(f, inputs)


def test_attention_dropout_bool_mask_and_bf16_autocast_match_sdpa() -> None:
    from just_asr.model.conformer import _attention_with_fast_dropout

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 9, 8, generator=g) for _ in range(3))
    key_ok = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    key_ok[0, ..., 6:] = False
    tiny_p = 1e-12  # keep probability rounds to 1: every element kept, scale 1 / (1 - 1e-12)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok)
    torch.testing.assert_close(_attention_with_fast_dropout(q, k, v, key_ok, tiny_p), ref, rtol=1e-5, atol=1e-6)
    bias = torch.randn(2, 2, 9, 9, generator=g).to(torch.bfloat16)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _attention_with_fast_dropout(qb, kb, vb, bias, tiny_p)
        sdpa = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias)
    exact = _attention_reference(qb.double(), kb.double(), vb.double(), bias.double(), 1.0, 0.0)
    assert ours.dtype == torch.bfloat16
    # float32 inside, one rounding to bf16 at the end: every element within one bf16 rounding of the
    # exact result (unit roundoff 2^-8 relative; computing in bf16 throughout is off by up to 76%
    # on near-zero elements here). SDPA is as close on average.
    err = (ours.double() - exact).abs()
    assert bool((err <= 2**-8 * exact.abs() + 1e-6).all())
    assert err.mean() <= 1.5 * (sdpa.double() - exact).abs().mean()


def test_attention_module_routes_cpu_training_dropout_to_the_fast_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    import just_asr.model.conformer as conformer

    calls: list[float] = []
    real = conformer._attention_with_fast_dropout

    def spy(q, k, v, mask, p):
        calls.append(p)
        return real(q, k, v, mask, p)

    monkeypatch.setattr(conformer, "_attention_with_fast_dropout", spy)
    att = conformer.RelativeSelfAttention(8, 2, dropout=0.2)
    x = torch.randn(2, 6, 8)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    torch.manual_seed(3)
    a = att(x, valid)
    torch.manual_seed(3)
    b = att(x, valid)
    torch.manual_seed(4)
    c = att(x, valid)
    assert calls == [0.2, 0.2, 0.2]
    assert torch.equal(a, b) and not torch.equal(a, c)  # seeded by the global RNG, and dropout is on
    att.eval()  # eval: SDPA, no dropout
    ref = att(x, valid)
    assert calls == [0.2, 0.2, 0.2]
    att.train()
    att.dropout = 0.0  # no dropout in training either: SDPA
    torch.testing.assert_close(att(x, valid), ref)
    assert len(calls) == 3


def test_attention_with_an_empty_utterance_matches_sdpa_in_training() -> None:
    from just_asr.model.conformer import RelativeSelfAttention

    att = RelativeSelfAttention(8, 2, dropout=0.2)
    x = torch.randn(3, 5, 8)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [False] * 5])
    torch.manual_seed(0)
    out = att(x, valid)  # the batch goes to SDPA, whose fully masked rows give zeros, not NaN
    assert torch.isfinite(out).all()


def test_forced_piece_sizes_and_the_mask_benchmark() -> None:
    """``bits`` forces 16- or 32-bit pieces (both keep at 1 - p); the benchmark prints one row per
    mask and stage with a keep rate near 1 - p for each mask."""
    import subprocess
    import sys
    from pathlib import Path

    torch.manual_seed(12)
    n, p = 400_000, 0.25
    for bits in (16, 32):
        rate = dropout_keep_mask((n,), p, torch.device("cpu"), bits=bits).float().mean().item()
        assert abs(rate - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)
    with pytest.raises(ValueError, match="bits must be 16 or 32"):
        dropout_keep_mask((3,), p, torch.device("cpu"), bits=8)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "dropout_mask.py"), "--shapes", "40,500", "--repeats", "1",
         "--threads", "1", "--p", "0.2"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| 40x500 |")]
    assert [(r[1], r[2]) for r in rows] == [(w, m) for w in ("mask", "dropout fwd+bwd")
                                           for m in ("bernoulli_", "32-bit pieces", "16-bit pieces")]
    for r in rows:
        assert float(r[3]) > 0 and r[4].endswith("x")
        if r[1] == "mask":
            assert abs(float(r[5]) - 0.8) < 0.02  # 20,000 elements


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.001])  # 16- and 32-bit pieces
def test_keep_mask_in_a_floating_dtype_is_the_bool_mask(dtype: torch.dtype, p: float) -> None:
    """The mask written by the comparison in a floating dtype is the bool mask of the same draw as
    1.0/0.0, in the given dtype and shape, and it leaves the generator where the bool mask does."""
    torch.manual_seed(21)
    keep = dropout_keep_mask((5, 7, 9), p, torch.device("cpu"))
    after_bool = torch.rand(3)
    torch.manual_seed(21)
    as_float = dropout_keep_mask((5, 7, 9), p, torch.device("cpu"), dtype=dtype)
    after_float = torch.rand(3)
    assert as_float.dtype == dtype and as_float.shape == (5, 7, 9)
    assert torch.equal(as_float, keep.to(dtype))
    assert torch.equal(after_bool, after_float)
    assert set(as_float.unique().tolist()) <= {0.0, 1.0}


def test_fast_dropout_is_unchanged_by_the_floating_mask() -> None:
    """fast_dropout equals (x * bool mask converted to x's dtype) * scale bit for bit, values and
    gradient, in bf16 and float32."""
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(4, 6, 33, dtype=dtype, requires_grad=True)
        g = torch.randn(4, 6, 33, dtype=dtype)
        torch.manual_seed(5)
        y = fast_dropout(x, 0.2, training=True)
        (gx,) = torch.autograd.grad(y, x, g)
        torch.manual_seed(5)
        keep = dropout_keep_mask(x.shape, 0.2, torch.device("cpu"))
        ref = x.mul(keep.to(dtype)).mul(1.0 / 0.8)
        (gref,) = torch.autograd.grad(ref, x, g)
        assert torch.equal(y, ref) and torch.equal(gx, gref)


@pytest.mark.parametrize("bf16", [False, True])
def test_first_convolution_reads_the_features_in_place_and_writes_channels_last(bf16: bool, monkeypatch) -> None:
    """On CPU the first convolution's input is the features' own memory (a channels-last view, no
    copy) and its output comes out channels-last, so no layout copy follows it (the speed-up)."""
    import torch.nn.functional as F

    calls = []
    real = F.conv2d

    def recording(x, w, *args, **kwargs):
        out = real(x, w, *args, **kwargs)
        calls.append((x, out))
        return out

    monkeypatch.setattr(F, "conv2d", recording)
    fe = ConvSubsampling(input_dim=80, channels=8, d_model=16)
    features = torch.randn(3, 41, 80)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fe(features, torch.tensor([41, 30, 20]))
    (x1, out1), (x2, _) = calls[0], calls[1]
    assert x1.shape == (3, 1, 41, 80)
    if not bf16:  # (under autocast the input is first cast to bf16: a copy of the features anyway)
        assert x1.data_ptr() == features.data_ptr()
    assert out1.is_contiguous(memory_format=torch.channels_last) and not out1.is_contiguous()
    assert x2.is_contiguous(memory_format=torch.channels_last)
