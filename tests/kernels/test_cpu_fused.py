"""kamado.kernels.cpu.fused_linear: several weights read by one input (q/k/v, gate/up) computed in one product."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels import QuantTensor, cpu, make_linear
from kamado.quants import quantize


def tensor(qtype, rows, cols=256, seed=0):
    w = np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32)
    raw = w if qtype == T.F32 else quantize(w, qtype)
    return QuantTensor.from_info(SimpleNamespace(name=f"w{seed}", type=qtype, shape=w.shape, raw=raw.view(np.uint8).reshape(rows, -1)))


@pytest.mark.parametrize("m", [1, 3, 40])  # decode (int8pack), a decode batch, a prefill (bf16 chunks)
@pytest.mark.parametrize("fbgemm", [False, True])
def test_fused_outputs_equal_the_separate_layers(monkeypatch, m, fbgemm):
    if fbgemm:
        monkeypatch.setattr(cpu, "FBGEMM_MIN_WEIGHTS", 0)
    parts = [tensor(T.Q5_0, 64, seed=1), tensor(T.Q4_0, 32, seed=2), tensor(T.Q8_0, 48, seed=3)]  # types may differ
    fused = cpu.fused_linear(parts)
    assert fused.out_features == 144
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(4))
    separate = torch.cat([make_linear(p, "cpu")(x) for p in parts], dim=-1)
    assert torch.equal(fused(x), separate)


@pytest.mark.parametrize("m", [1, 40])
def test_fused_int4_outputs_equal_the_separate_layers(m):
    parts = [tensor(T.Q4_K, 128, seed=1), tensor(T.Q4_K, 64, seed=2)]
    fused = cpu.fused_linear(parts)
    assert isinstance(fused, cpu.Int4Linear) and fused.out_features == 192
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fused(x), torch.cat([make_linear(p, "cpu")(x) for p in parts], dim=-1))


def test_float_or_mismatched_weights_are_not_fused():
    assert cpu.fused_linear([tensor(T.Q8_0, 32), tensor(T.F32, 32, seed=1)]) is None
    assert cpu.fused_linear([tensor(T.Q8_0, 32), tensor(T.Q8_0, 32, cols=512, seed=1)]) is None
    assert cpu.fused_linear([tensor(T.Q4_K, 64), tensor(T.Q8_0, 64, seed=1)]) is None  # int4 and int8 each keep their kernel
    assert cpu.fused_linear([tensor(T.Q5_0, 64), tensor(T.Q6_K, 64, seed=1)]) is None  # Q8_0 and Q8_K activation blocks
