"""The CPU backend's int4 path: Q4_K weights computed from their own 4-bit codes (torch's packed int4 kernel)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels import QuantTensor, cpu, make_linear
from kamado.quants import quantize


def weight(qtype, rows, cols=512, seed=0) -> QuantTensor:
    w = np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32)
    w[:, 3] *= 20  # a large column: rows whose int8 scale it sets lose the small values' precision
    return QuantTensor.from_info(SimpleNamespace(name="w", type=qtype, shape=w.shape, raw=quantize(w, qtype)))


def test_only_q4_k_weights_of_whole_row_blocks_go_int4():
    assert isinstance(make_linear(weight(T.Q4_K, 128), "cpu"), cpu.Int4Linear)
    assert isinstance(make_linear(weight(T.Q4_K, 96), "cpu"), cpu.Int8Linear)  # not a multiple of the 64-row block
    assert isinstance(make_linear(weight(T.Q5_K, 128), "cpu"), cpu.Int8Linear)


@pytest.mark.parametrize("m", [1, 5, 40])  # one decode row, a decode batch, a prefill
def test_int4_product_is_llama_cpps_up_to_bf16_rounding(m):
    """llama.cpp's product for Q4_K (activations rounded to Q8_K blocks, the file's weights), and far closer to it than
    the int8 path (requantized rows, bf16 activations)."""
    t = weight(T.Q4_K, 192)
    x = torch.randn(m, t.shape[1], generator=torch.Generator().manual_seed(1))
    ggml = make_linear(t, "ggml")(x)
    int4_error = (make_linear(t, "cpu")(x) - ggml).norm() / ggml.norm()
    int8_error = (cpu.Int8Linear(t)(x) - ggml).norm() / ggml.norm()
    assert int4_error < 1e-2  # bf16 activations and outputs alone: ~2e-3
    assert int4_error < int8_error / 4


def test_a_row_is_computed_the_same_alone_and_in_a_batch():
    lin = make_linear(weight(T.Q4_K, 128), "cpu")
    x = torch.randn(6, 512, generator=torch.Generator().manual_seed(2))
    together = lin(x)
    assert all(torch.equal(lin(x[i : i + 1])[0], together[i]) for i in range(6))
