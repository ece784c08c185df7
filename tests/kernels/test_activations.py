"""ggml-cpu's activation rounding (kamado.kernels.activations), the "ggml" backend built on it, GELU and RMS norm."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import quants as gguf_quants

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels import QuantTensor, make_linear
from kamado.kernels.activations import activation_rounding, round_q8_0, round_q8_k
from kamado.models.blocks import gelu_tanh, rms_norm
from kamado.quants import quantize


def test_q8_0_rounding_matches_gguf_py_quantizer():
    x = torch.randn(8, 640, generator=torch.Generator().manual_seed(0)) * 3
    ref = gguf_quants.dequantize(gguf_quants.quantize(x.numpy(), T.Q8_0), T.Q8_0)
    np.testing.assert_array_equal(round_q8_0(x).numpy(), ref)


def test_q8_0_rounds_ties_to_even_like_the_avx_quantizer():
    # amax 127 gives id = 1 exactly: 2.5 -> 2 and 3.5 -> 4 (the scalar reference quantizer's roundf gives 3 and 4)
    x = torch.zeros(32)
    x[:3] = torch.tensor([127.0, 2.5, 3.5])
    assert round_q8_0(x)[:3].tolist() == [127.0, 2.0, 4.0]


def test_q8_0_divides_127_by_amax_as_ggml_does():
    # id = 127 / amax in one float32 division (quantize_row_q8_0); reciprocal(amax) * 127 is an ulp off here and
    # would round 0.0779... to 2 steps instead of 1
    amax, x = np.float32(6.599526882171631), np.float32(0.07794716209173203)
    block = torch.zeros(32)
    block[0], block[1] = float(amax), float(x)
    d = np.float32(np.float16(amax / np.float32(127)))
    assert round_q8_0(block)[1].item() == np.rint(x * (np.float32(127) / amax)) * d == d


def test_q8_k_rounding_follows_the_signed_peak():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 512, generator=gen)
    x[0, 7] = -9.0  # negative peak: iscale = -127 / -9
    y = round_q8_k(x)
    # quantize_row_q8_K_ref in float32: iscale = -127.f/max, q = nearest_int(iscale*x), d = 1/iscale
    iscale = np.float32(-127.0) / np.float32(-9.0)
    block = x[0, :256].numpy()
    want = np.minimum(np.rint(block * iscale), 127) * (np.float32(1) / iscale)
    assert y[0, 7].item() == pytest.approx(-9.0, rel=1e-6)
    np.testing.assert_array_equal(y[0, :256].numpy(), want.astype(np.float32))
    assert (y - x).abs().max() <= x.abs().amax() / 254 * 1.0001
    assert torch.equal(round_q8_k(torch.zeros(256)), torch.zeros(256))


def _raw(qtype, rows, cols, seed):
    w = np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32)
    raw = quantize(w, qtype)
    return QuantTensor.from_info(SimpleNamespace(name="w", type=qtype, shape=w.shape, raw=raw)), raw


def test_ggml_backend_equals_blockwise_integer_dot_products():
    """y = sum_b d_w d_x (q_w . q_x), computed from the raw Q8_0 bytes in float64, as ggml's vec_dot does."""
    t, raw = _raw(T.Q8_0, 24, 256, 3)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(4))
    got = make_linear(t, "ggml")(x)
    blocks = raw.reshape(24, 8, 34)
    d_w = blocks[..., :2].copy().view(np.float16).astype(np.float64)[..., 0]
    q_w = blocks[..., 2:].view(np.int8).astype(np.int64)
    xq = x.reshape(2, 8, 32)
    amax = xq.abs().amax(-1, keepdim=True)
    q_x = torch.round(xq * (127.0 / amax)).numpy().astype(np.int64)
    d_x = (amax / 127.0).half().double().numpy()[..., 0]
    want = np.einsum("rb,mb,rbi,mbi->mr", d_w, d_x, q_w, q_x)
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("qtype", [T.Q5_0, T.Q4_K, T.Q6_K, T.F16])
def test_ggml_backend_is_the_reference_product_of_rounded_activations(qtype):
    t, _ = _raw(qtype, 32, 512, 5)
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(6))
    rounded = activation_rounding(qtype)(x)
    assert not torch.equal(rounded, x)
    torch.testing.assert_close(make_linear(t, "ggml")(x), make_linear(t, "reference")(rounded), rtol=1e-6, atol=1e-6)


def test_gelu_is_the_fp16_table_lookup():
    x = torch.linspace(-12, 12, 20001)
    y = gelu_tanh(x)
    want = F.gelu(x.half().float(), approximate="tanh").half().float()
    inside = x.abs() < 10
    assert (y[inside] - want[inside]).abs().max() <= 2e-3 * want[inside].abs().max()
    assert torch.equal(y[x <= -10], torch.zeros_like(y[x <= -10]))
    assert torch.equal(y[x >= 10], x[x >= 10])
    assert y.dtype == torch.float32


def test_rms_norm_matches_float64():
    x = torch.randn(4, 640, generator=torch.Generator().manual_seed(7)) * 30
    w = torch.rand(640)
    want = (x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()).float()
    torch.testing.assert_close(rms_norm(x, w, 1e-6), want, rtol=2e-6, atol=1e-6)
    assert math.isfinite(rms_norm(torch.zeros(1, 8), None, 1e-6).sum().item())


def test_rms_norm_scale_is_ggmls_float32_arithmetic():
    """1/sqrtf(mean + eps) with a correctly rounded sqrtf, as ggml_compute_forward_rms_norm_f32 computes it."""
    x = torch.randn(2048, 64, generator=torch.Generator().manual_seed(8)) * 3
    xs = x.numpy()
    mean = ((xs * xs).astype(np.float64).sum(-1, keepdims=True) / 64).astype(np.float32)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(1e-6))
    np.testing.assert_array_equal(rms_norm(x, None, 1e-6).numpy(), xs * scale)


def test_gelu_table_entries_where_the_fused_multiply_add_matters():
    # ggml's table (glibc tanhf, 1 + 0.044715*x*x contracted to an fma) at the two fp16 inputs where float32
    # torch.tanh of the unfused expression rounds to the neighbouring fp16 value
    x = torch.tensor([-1.9990234375, -3.78125])
    assert gelu_tanh(x).tolist() == [-0.045501708984375, -0.0001913309097290039]  # fp16 values, exact
