"""kamado.kernels.ggml_matmul: llama.cpp's CPU products in ggml's float32 operation order."""

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels.activations import quantize_q8_0, quantize_q8_k
from kamado.kernels.ggml_matmul import GgmlProduct, emulated, runs_on_amx
from kamado.quants import dequantize, quantize

TYPES = [T.Q4_0, T.Q5_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]


def _weight(qtype, n_out, n_in, seed=0):
    w = np.random.default_rng(seed).standard_normal((n_out, n_in)).astype(np.float32)
    raw = quantize(w, qtype)
    return torch.from_numpy(raw), torch.from_numpy(dequantize(raw, qtype))


def _fma32(a, b, c):
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _scalar_product(qtype, x, raw, n_out, n_in):
    """Legacy types, one output at a time, straight from the definitions in the module docstring (slow, obvious)."""
    xq, xd = quantize_q8_0(x)
    w = dequantize(raw.numpy(), qtype).astype(np.float64)
    out = np.zeros((x.shape[0], n_out), np.float32)
    for m in range(x.shape[0]):
        for n in range(n_out):
            lanes = np.zeros(8, np.float32)  # the vec_dot/tinyBLAS lanes; the AMX path uses lanes[0] only
            for b in range(n_in // 32):
                dw = _block_d(raw, qtype, n, b)
                ints = xq[m, b].numpy().astype(np.float64) * (w[n, 32 * b : 32 * b + 32] / dw)  # w = d * q exactly
                scale = np.float32(xd[m, b].item()) * dw
                if runs_on_amx(qtype, n_out, n_in):
                    lanes[0] = _fma32(ints.sum(), scale, lanes[0])
                else:
                    lane_ints = ints.reshape(8, 4).sum(1)
                    lanes = np.array([_fma32(scale, lane_ints[j], lanes[j]) for j in range(8)], np.float32)
            r = lanes[:4] + lanes[4:]
            out[m, n] = (r[0] + r[2]) + (r[1] + r[3])
    return out


def _block_d(raw, qtype, row, block):
    size = {T.Q4_0: 18, T.Q5_0: 22, T.Q8_0: 34}[qtype]
    b = raw.numpy().reshape(raw.shape[0], -1, size)[row, block]
    return np.float32(b[:2].copy().view(np.float16)[0])


@pytest.mark.parametrize("qtype", TYPES)
def test_product_agrees_with_the_exact_product_of_rounded_activations(qtype):
    # ggml's result is dequant(W) @ dequant(quantize(x)) up to float32 summation order
    raw, w = _weight(qtype, 64, 512)
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(1)) * 2
    xq, xd = (quantize_q8_k if qtype in (T.Q4_K, T.Q5_K, T.Q6_K) else quantize_q8_0)(x)
    expected = (xq * xd[..., None]).reshape(3, 512).double() @ w.double().T
    got = GgmlProduct(qtype, raw, (64, 512))(x)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-6 * expected.abs().max().item())


@pytest.mark.parametrize("qtype,n_out", [(T.Q5_0, 32), (T.Q8_0, 32), (T.Q4_0, 48)])
def test_legacy_products_follow_ggml_operation_order_bit_for_bit(qtype, n_out):
    raw, _ = _weight(qtype, n_out, 128, seed=2)
    x = torch.randn(2, 128, generator=torch.Generator().manual_seed(3)) * 5
    got = GgmlProduct(qtype, raw, (n_out, 128))(x).numpy()
    np.testing.assert_array_equal(got, _scalar_product(qtype, x, raw, n_out, 128))


def test_kernel_choice_follows_the_amx_conditions():
    assert runs_on_amx(T.Q8_0, 256, 640) and runs_on_amx(T.Q4_K, 640, 1024)
    assert not runs_on_amx(T.Q8_0, 48, 640)  # out_features % 32 != 0: the 8-lane vec_dot path
    assert not runs_on_amx(T.Q5_0, 1024, 640) and emulated(T.Q5_0, 1024, 640)
    assert not emulated(T.IQ4_NL, 64, 256)


def test_leading_dimensions_are_kept():
    raw, _ = _weight(T.Q8_0, 32, 64)
    x = torch.randn(2, 3, 64)
    assert GgmlProduct(T.Q8_0, raw, (32, 64))(x).shape == (2, 3, 32)
