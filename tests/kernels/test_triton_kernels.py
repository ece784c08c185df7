"""Triton GPU kernels against their reference twin (kamado.quants.dequantize_torch + a float64 matmul).

The layout tests run anywhere; the kernel tests need CUDA and Triton and skip cleanly without them.
"""

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGML_BLOCK_SIZES
from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.kernels import KernelError, QuantTensor
from kamado.kernels.triton import available, make_linear, q8k_gemv
from kamado.kernels.triton.layout import PLANES, join_planes, random_blocks, split_planes
from kamado.quants import dequantize_torch, quantize

gpu = pytest.mark.skipif(not available(), reason="needs a CUDA device and Triton")
QUANT_TYPES = list(PLANES)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_planes_hold_exactly_the_file_bytes(qtype):
    raw = random_blocks(qtype, 5, 512, seed=3)
    weight = split_planes(raw, qtype, 512)
    assert weight.nbytes == raw.numel()
    assert torch.equal(join_planes(weight), raw)


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_random_blocks_have_finite_scales(qtype):
    w = dequantize_torch(random_blocks(qtype, 4, 256, seed=4), qtype)
    assert torch.isfinite(w).all() and w.abs().max() > 0


def test_split_planes_rejects_a_wrong_row_length():
    raw = torch.zeros(2, 143, dtype=torch.uint8)
    with pytest.raises(ValueError, match="Q4_K: 256 columns need 144 bytes per row, got 143"):
        split_planes(raw, Q.Q4_K, 256)


@pytest.mark.skipif(available(), reason="checks the message on machines without a GPU")
def test_make_linear_without_gpu_names_the_tensor():
    raw = random_blocks(Q.Q4_0, 2, 32)
    with pytest.raises(KernelError, match="blk.0.ffn_up.weight: the GPU backend needs a CUDA device"):
        make_linear(QuantTensor("blk.0.ffn_up.weight", Q.Q4_0, (2, 32), raw))


def _check_all_paths(qtype, raw, rows, cols):
    lin = make_linear(QuantTensor("w", qtype, (rows, cols), raw))
    w = dequantize_torch(raw.cuda(), qtype).double()
    assert _rel_err(lin.dequantize(), w) < 1e-3
    for m, tol in ((1, 1e-5), (3, 2e-3), (16, 2e-3), (33, 2e-3), (80, 2e-3)):
        x = torch.randn(m, cols, device="cuda")
        y = lin(x)
        assert y.shape == (m, rows) and y.dtype == torch.float32
        if m <= lin.q8k_max_m:  # the CUDA GEMV: exact against the x its planes stand for
            x, tol = q8k_gemv.rounded(x), 1e-5
        assert _rel_err(y, x.double() @ w.T) < tol, f"M={m}"


@gpu
@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_kernels_match_twin_on_random_blocks(qtype):
    # 100 rows: not a multiple of any BLOCK_N; K = 768 is 3 super-blocks (not a power of two)
    rows, cols = 100, 768
    _check_all_paths(qtype, random_blocks(qtype, rows, cols, device="cuda", seed=11), rows, cols)


@gpu
@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda q: q.name)
def test_kernels_match_twin_on_quantized_weights(qtype):
    rows, cols = 70, 896  # Qwen2.5-0.5B's hidden size: 3.5 super-blocks per row for legacy types
    if cols % GGML_BLOCK_SIZES[qtype][0]:
        cols = 1024
    gen = np.random.default_rng(5)
    weights = (gen.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    raw = torch.from_numpy(quantize(weights, qtype))
    _check_all_paths(qtype, raw, rows, cols)


@gpu
@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.F32], ids=lambda q: q.name)
def test_float_weights(qtype):
    dtype = {Q.F16: torch.float16, Q.BF16: torch.bfloat16, Q.F32: torch.float32}[qtype]
    w = (torch.randn(50, 64) * 0.1).to(dtype)
    lin = make_linear(QuantTensor("w", qtype, (50, 64), w.view(torch.uint8).reshape(50, -1)))
    x = torch.randn(5, 64, device="cuda")
    ref = x.double() @ w.cuda().double().T
    assert _rel_err(lin(x), ref) < (1e-5 if qtype == Q.F32 else 1e-2)


@gpu
def test_bad_inputs_name_the_tensor():
    lin = make_linear(QuantTensor("blk.3.attn_q.weight", Q.Q8_0, (8, 64), random_blocks(Q.Q8_0, 8, 64)))
    with pytest.raises(KernelError, match=r"blk.3.attn_q.weight: input of shape \(2, 32\)"):
        lin(torch.randn(2, 32, device="cuda"))
    with pytest.raises(KernelError, match="blk.3.attn_q.weight: input on cpu"):
        lin(torch.randn(2, 64))
    with pytest.raises(KernelError, match="no GPU kernel for TQ1_0"):
        make_linear(QuantTensor("t", Q.TQ1_0, (1, 256), torch.zeros(1, 54, dtype=torch.uint8)))


@gpu
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.F16], ids=lambda q: q.name)
def test_fused_linear_equals_the_separate_products(qtype):
    from kamado.kernels.triton import fused_linear

    cols = 512
    parts = []
    for i, rows in enumerate((64, 16, 16)):  # q, k, v of a small GQA layer
        if qtype == Q.F16:
            raw = (torch.randn(rows, cols) * 0.1).half().view(torch.uint8).reshape(rows, -1)
        else:
            raw = random_blocks(qtype, rows, cols, seed=20 + i)
        parts.append(QuantTensor(f"blk.0.attn_{'qkv'[i]}.weight", qtype, (rows, cols), raw))
    fused = fused_linear(parts)
    for m in (1, 5, 80):  # GEMV, fused GEMM, dequantize + matmul
        x = torch.randn(m, cols, device="cuda")
        separate = torch.cat([make_linear(p)(x) for p in parts], dim=-1)
        assert torch.allclose(fused(x), separate, rtol=1e-5, atol=1e-5), f"M={m}"


def test_fused_linear_refuses_mixed_types():
    from kamado.kernels.triton import fused_linear

    a = QuantTensor("a", Q.Q4_K, (4, 256), random_blocks(Q.Q4_K, 4, 256))
    b = QuantTensor("b", Q.Q6_K, (4, 256), random_blocks(Q.Q6_K, 4, 256))
    assert fused_linear([a, b]) is None
