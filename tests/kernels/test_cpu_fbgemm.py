"""The CPU backend's fbgemm path (large weights: the output projections), forced on small tensors."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels import QuantTensor, cpu, make_linear
from kamado.quants import dequantize, quantize


@pytest.fixture
def fbgemm_everywhere(monkeypatch):
    monkeypatch.setattr(cpu, "FBGEMM_MIN_WEIGHTS", 0)


def linear_and_weight(qtype=T.Q8_0, rows=96, cols=256):
    w = np.random.default_rng(0).normal(0, 0.05, (rows, cols)).astype(np.float32)
    raw = quantize(w, qtype)
    t = QuantTensor.from_info(SimpleNamespace(name="w", type=qtype, shape=w.shape, raw=raw))
    # as the output projection (logits): its activations reach fbgemm unrounded (cpu._input_rounding)
    return make_linear(t, "cpu", logits=True), torch.from_numpy(dequantize(raw, qtype))


def activations(m, outlier=0.0):
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(1))
    x[:, 7] += outlier  # one large channel, as Gemma's hidden states have
    return x


@pytest.mark.parametrize("m", [1, 5, 40])  # one row, a decode batch, a prefill (several fbgemm calls)
def test_fbgemm_path_close_to_exact(fbgemm_everywhere, m):
    lin, w = linear_and_weight()
    assert lin.packed is not None
    x = activations(m)
    exact = x @ w.T
    assert (lin(x) - exact).norm() <= 0.01 * exact.norm()


def test_outlier_channel_keeps_small_values_accurate(fbgemm_everywhere):
    # A single 8-bit pass over a row with a 60x outlier would round most of its values to a few levels
    # (about 4% error here); the residual pass must keep the result as close as the int8 weights allow.
    lin, w = linear_and_weight()
    x = activations(3, outlier=60.0)
    requantized = lin_weight_product(lin, x, w)
    assert (lin(x) - requantized).norm() <= 2e-3 * requantized.norm()


def lin_weight_product(lin, x, w):
    """x times the weights as the kernel holds them (int8 codes x per-row scale), in float64."""
    scale = w.abs().amax(dim=1) / 127.0
    codes = torch.round(w / scale[:, None])
    return (x.double() @ (codes * scale[:, None]).double().T).float()


def test_fbgemm_rows_do_not_depend_on_the_batch(fbgemm_everywhere):
    lin, _ = linear_and_weight()
    x = activations(9, outlier=30.0)
    x[4] *= 100.0  # a row with a much larger range must not change the others
    batch = lin(x)
    for i in range(9):
        assert torch.equal(batch[i : i + 1], lin(x[i : i + 1]))
