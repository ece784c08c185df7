"""The CPU backend against the reference backend (dequantize_torch + float32 matmul), both kernel paths."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels import KernelError, QuantTensor, embedding_rows, make_linear
from kamado.kernels.activations import activation_rounding
from kamado.quants import dequantize, quantize


def tensor(qtype, rows=96, cols=256, seed=0):
    w = np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32)
    raw = w.view(np.uint8) if qtype == T.F32 else quantize(w, qtype)
    return QuantTensor.from_info(SimpleNamespace(name="w", type=qtype, shape=w.shape, raw=raw)), raw


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_0, T.Q4_K, T.Q6_K])
@pytest.mark.parametrize("m", [1, 40])  # decode (int8pack) and prefill (bf16 matmul) paths
def test_cpu_backend_close_to_reference(qtype, m):
    t, raw = tensor(qtype)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(1))
    ref = make_linear(t, "reference")(x)
    exact = x @ torch.from_numpy(dequantize(raw, qtype)).T
    torch.testing.assert_close(ref, exact, rtol=1e-5, atol=1e-5)
    out = make_linear(t, "cpu")(x)
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_0, T.Q4_K, T.Q6_K])
@pytest.mark.parametrize("m", [1, 40])
def test_layer_products_see_llamacpps_rounded_activations_the_output_does_not(qtype, m):
    t, _ = tensor(qtype)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(3))
    rounded = activation_rounding(qtype)(x)
    assert not torch.equal(rounded, x)
    layer, logits = make_linear(t, "cpu"), make_linear(t, "cpu", logits=True)
    assert torch.equal(layer(x), layer(rounded))
    assert not torch.equal(logits(x), logits(rounded))


def test_decode_rows_do_not_depend_on_the_batch():
    t, _ = tensor(T.Q5_0)
    lin = make_linear(t, "cpu")
    x = torch.randn(9, 256, generator=torch.Generator().manual_seed(2))
    assert torch.equal(lin(x)[3:4], lin(x[3:4]))


def test_embedding_rows_and_errors():
    t, raw = tensor(T.Q8_0)
    rows = embedding_rows(t, torch.tensor([5, 0]))
    np.testing.assert_array_equal(rows.numpy(), dequantize(raw, T.Q8_0)[[5, 0]])
    with pytest.raises(KernelError, match="out of range for w"):
        embedding_rows(t, torch.tensor([96]))
    with pytest.raises(KernelError, match="unknown kernel backend 'gpu9'"):
        make_linear(t, "gpu9")
