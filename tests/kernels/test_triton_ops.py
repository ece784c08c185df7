"""The fused GPU ops (kamado/kernels/triton/ops.py, attention.py) against their torch twins, on fresh random inputs.

They run on a CUDA device; without one they skip, except under Triton's CPU interpreter (TRITON_INTERPRET=1 with
Triton installed, see docs/GPU.md), which runs them on CPU tensors.
"""

import importlib.util
import os

import pytest
import torch

from kamado.kernels.triton import available
from kamado.models import exact
from kamado.models.blocks import Rope, RopeSpec

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None
DEVICE = "cuda" if available() else "cpu"
pytestmark = pytest.mark.skipif(not (available() or INTERPRETED), reason="needs a CUDA device and Triton (or TRITON_INTERPRET=1)")


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm()).item()


def _norm_ref(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    x = x.double()
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w.double()


@pytest.mark.parametrize("width", [640, 4096, 1000])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(width, with_residual):
    from kamado.kernels.triton import ops

    gen = torch.Generator().manual_seed(width)
    base = torch.randn(5, width + 8, generator=gen)
    x = base[:, :width].to(DEVICE)  # strided rows
    res = torch.randn(5, width, generator=gen).to(DEVICE)
    w = torch.randn(width, generator=gen).to(DEVICE)
    if with_residual:
        total, y = ops.rms_norm(x, w, 1e-6, res)
        assert torch.equal(total.cpu(), (x + res).cpu())
        assert _rel_err(y, _norm_ref((x + res).cpu(), w.cpu(), 1e-6)) < 1e-6
    else:
        assert _rel_err(ops.rms_norm(x, w, 1e-6), _norm_ref(x.cpu(), w.cpu(), 1e-6)) < 1e-6
        assert _rel_err(ops.rms_norm(x, None, 1e-6), _norm_ref(x.cpu(), None, 1e-6)) < 1e-6


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("n_dims, head_dim", [(128, 128), (32, 80)])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_matches_the_cpu_rotation(neox, n_dims, head_dim, qk_norm):
    from kamado.kernels.triton import ops

    gen = torch.Generator().manual_seed(n_dims + neox)
    heads, rows = 6, 7
    qkv = torch.randn(rows, heads * head_dim + 40, generator=gen)  # q|k heads are a strided slice of a wider row
    x = qkv[:, : heads * head_dim].reshape(rows, heads, head_dim)
    rope = Rope(RopeSpec(n_dims, 10000.0, neox))
    cos, sin = rope.cos_sin(torch.tensor([0, 3, 9, 100, 511, 2, 7]))
    weight = torch.randn(heads, head_dim, generator=gen) if qk_norm else None
    ref = x if weight is None else _norm_ref(x, weight, 1e-6).float()
    ref = rope.rotate(ref, *rope.tables(cos, sin, head_dim))
    y = ops.rope(x.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), neox, None if weight is None else weight.to(DEVICE), 1e-6)
    assert y.shape == (rows, heads, head_dim) and y.is_contiguous()
    assert _rel_err(y, ref) < 1e-6


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_gated_activation(activation):
    from kamado.kernels.triton import ops

    gen = torch.Generator().manual_seed(1)
    gu = torch.randn(3, 2 * 1500, generator=gen) * 4
    gu[0, :8] = torch.tensor([-30.0, -12.0, -1e-4, 0.0, 1e-4, 12.0, 30.0, 80.0])
    g, u = gu.to(DEVICE).chunk(2, dim=-1)
    ref = exact.ACTIVATIONS[activation](g.cpu().double()) * u.cpu().double()
    assert _rel_err(ops.gated(g, u, activation), ref) < 1e-6


def test_store_kv_writes_the_slots():
    from kamado.kernels.triton import ops

    gen = torch.Generator().manual_seed(2)
    qk = torch.randn(3, 6, 64, generator=gen)  # k: the last 2 heads of a q|k row
    v = torch.randn(3, 2 * 48 + 16, generator=gen)[:, : 2 * 48].reshape(3, 2, 48)
    k = qk[:, 4:]
    kc, vc = torch.full((10, 2, 64), 7.0, dtype=torch.float16), torch.full((10, 2, 48), 7.0, dtype=torch.float16)
    slots = torch.tensor([9, 0, 4])
    kc_dev, vc_dev = kc.to(DEVICE), vc.to(DEVICE)
    ops.store_kv(k.to(DEVICE), v.to(DEVICE), kc_dev, vc_dev, slots.to(DEVICE))
    kc.index_copy_(0, slots, k.half())
    vc.index_copy_(0, slots, v.half())
    assert torch.equal(kc_dev.cpu(), kc) and torch.equal(vc_dev.cpu(), vc)


@pytest.mark.parametrize("rows, n_keys", [(1, 64), (1, 1024), (3, 256), (64, 128)])
@pytest.mark.parametrize("window, softcap", [(0, 0.0), (40, 0.0), (0, 50.0)])
def test_decode_attention_matches_paged_attention(rows, n_keys, window, softcap):
    from kamado.engine.cuda_graph import paged_attention
    from kamado.kernels.triton.attention import decode_attention

    gen = torch.Generator().manual_seed(rows * n_keys + window)
    n_head, n_kv, head_dim = 8, 2, 64
    n_slots = rows * n_keys + 5
    kc = torch.randn(n_slots, n_kv, head_dim, generator=gen).half()
    vc = torch.randn(n_slots, n_kv, head_dim, generator=gen).half()
    table = torch.stack([torch.randperm(n_slots, generator=gen)[:n_keys] for _ in range(rows)])
    positions = torch.randint(0, n_keys, (rows,), generator=gen)
    positions[0] = n_keys - 1
    q = torch.randn(rows, n_head + n_kv, head_dim, generator=gen)[:, :n_head] * 3  # strided rows, as the rope output's slice
    ref = paged_attention(q, kc, vc, table, positions, 0.125, window, softcap)
    out = decode_attention(*(t.to(DEVICE) for t in (q, kc, vc, table, positions)), 0.125, window, softcap)
    assert out.shape == (rows, n_head * head_dim)
    assert _rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("qtype, m", [("Q8_0", 1), ("Q4_K", 1), ("Q6_K", 1), ("Q4_K", 5)])
def test_split_k_products_are_reproducible(qtype, m, monkeypatch):
    """A short, wide weight makes the GEMV (m = 1: kernels.gemv_kernel, or a word GEMV, q4k_gemv_kernel or
    q6k_gemv_kernel, under its head config) and the fused GEMM (m = 5) cut K into ranges; the partial sums are added
    in a fixed order by the last program of each tile, so calls give the same bits, and the counters it uses are left
    at zero for the next launch."""
    from kamado.gguf.constants import GGMLQuantizationType as Q
    from kamado.kernels.linear import QuantTensor
    from kamado.kernels.triton import linear
    from kamado.kernels.triton.layout import random_blocks
    from kamado.quants import dequantize_torch

    qtype = Q[qtype]
    if qtype in linear.WORD_GEMVS and m == 1:
        head = linear.WORD_GEMV_CONFIGS[qtype][0][1]
        monkeypatch.setitem(linear.WORD_GEMV_CONFIGS, qtype, ((0, head),))
        block_n, block_k, _, min_programs = head
    elif m == 1:
        (block_n, block_k, _), min_programs = linear.GEMV_CONFIG, linear.GEMV_MIN_PROGRAMS
    else:
        _, block_n, block_k, _, _ = linear.GEMM_CONFIG_SMALL
        min_programs = linear.GEMM_MIN_PROGRAMS
    rows, cols = 40, 4096
    assert linear._split_k(-(-rows // block_n), cols, block_k, block_n, min_programs) > 1  # the shape does split
    raw = random_blocks(qtype, rows, cols, seed=m)
    lin = linear.TritonLinear(QuantTensor("w", qtype, (rows, cols), raw), device=DEVICE)
    x = torch.randn(m, cols, generator=torch.Generator().manual_seed(m)).to(DEVICE)
    product = lin.gemv if m == 1 else lin.fused_gemm  # the Triton kernels, also where the CUDA GEMV (no split) takes x
    first, second = product(x), product(x)
    assert torch.equal(first, second)
    assert int(linear._split_workspace(x.device)[1].abs().sum()) == 0
    xd = x.double() if m == 1 else x.half().double()
    ref = xd.cpu() @ dequantize_torch(raw, qtype).double().T
    assert _rel_err(first, ref) < (1e-5 if m == 1 else 2e-3)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("entry", [0, 1])
@pytest.mark.parametrize("rows, cols, source", [(37, 768, "random"), (37, 2560, "quantized"), (130, 4096, "quantized")])
def test_word_gemv_matches_the_twin(qtype, rows, cols, source, entry, monkeypatch):
    """The Q4_K and Q6_K decode GEMVs (kernels.q4k_gemv_kernel, q6k_gemv_kernel) under each config of
    linear.WORD_GEMV_CONFIGS, against the float64 product of the twin's weight: odd row counts (clamped rows), K of 3
    and 10 blocks (BLOCK_K shrinks to 256 and 512), random bit patterns and kamado-quantized weights; the head configs
    split K on 37 x 2560 and 130 x 4096."""
    from kamado.gguf.constants import GGMLQuantizationType as Q
    from kamado.kernels.linear import QuantTensor
    from kamado.kernels.triton import linear
    from kamado.kernels.triton.layout import random_blocks
    from kamado.quants import dequantize_torch, quantize

    qtype = Q[qtype]
    monkeypatch.setitem(linear.WORD_GEMV_CONFIGS, qtype, ((0, linear.WORD_GEMV_CONFIGS[qtype][entry][1]),))
    gen = torch.Generator().manual_seed(rows + cols)
    if source == "random":
        raw = random_blocks(qtype, rows, cols, seed=rows)
    else:
        raw = torch.from_numpy(quantize((torch.randn(rows, cols, generator=gen) * 0.02).numpy(), qtype))
    lin = linear.TritonLinear(QuantTensor("w", qtype, (rows, cols), raw), device=DEVICE)
    x = torch.randn(1, cols, generator=gen)
    y = lin.gemv(x.to(DEVICE))  # the word GEMV, also where the CUDA GEMV takes lin(x)
    assert y.shape == (1, rows) and y.dtype == torch.float32
    assert _rel_err(y, x.double() @ dequantize_torch(raw, qtype).double().T) < 1e-5


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("rows, cols, source", [(37, 768, "random"), (37, 2560, "quantized"), (130, 4096, "quantized"),
                                                (9, 14336, "quantized")])
def test_cuda_gemv_is_exact_on_q8k_rounded_activations(qtype, rows, cols, source):
    """The CUDA GEMV (q8k_gemv.cu) rounds x to Q8_K exactly as kamado.kernels.activations does (the CPU path's and
    ggml-cpu's rounding), with two planes adds the rounding's remainder (q8k_gemv.rounded is the x both stand for), and
    its integer block sums make the product the float64 product of that x, to float32 rounding: odd row counts (a
    warp's rows past the end), 3, 10, 16 and 56 blocks (steps past a row's end), random bit patterns and
    kamado-quantized weights, an outlier and a zero block."""
    from kamado.gguf.constants import GGMLQuantizationType as Q
    from kamado.kernels.activations import quantize_q8_k, round_q8_k
    from kamado.kernels.triton import q8k_gemv
    from kamado.kernels.triton.layout import random_blocks, split_planes
    from kamado.quants import dequantize_torch, quantize

    if not q8k_gemv.available():
        pytest.skip("the CUDA GEMV needs a CUDA device and NVRTC")
    qtype = Q[qtype]
    gen = torch.Generator().manual_seed(rows + cols)
    if source == "random":
        raw = random_blocks(qtype, rows, cols, seed=rows)
    else:
        raw = torch.from_numpy(quantize((torch.randn(rows, cols, generator=gen) * 0.02).numpy(), qtype))
    m = max(2, q8k_gemv.MAX_M)
    x = torch.randn(m, cols, generator=gen)
    x[0, 5] = 30.0  # an outlier sets its block's scale
    x[1, 256:512] = 0.0  # a zero block: d = 0
    xq, xd, xs = (t.cpu() for t in q8k_gemv.quantize_q8k(x.cuda()))
    q, d = quantize_q8_k(x)  # ggml's signs: q and d both negated where the block's peak is positive
    assert torch.equal(xq[:m].abs().float(), q.abs().reshape(m, cols))
    assert torch.equal((xq[:m].float().reshape(m, -1, 256) * xd[:m, :, None]), q * d[..., None])
    assert torch.equal(xs, xq.int().reshape(len(xq), -1, 16).sum(-1))
    planes_x = (xq.double().reshape(len(xq), -1, 256) * xd.double()[:, :, None]).reshape(len(xq), cols)
    assert _rel_err(planes_x.reshape(q8k_gemv.PLANES, m, cols).sum(0), q8k_gemv.rounded(x)) < 1e-6
    assert _rel_err(q8k_gemv.rounded(x), x) < (3e-2 if q8k_gemv.PLANES == 1 else 3e-4)
    if q8k_gemv.PLANES == 1:
        assert torch.equal(q8k_gemv.rounded(x), round_q8_k(x))
    planes = split_planes(raw.cuda(), qtype, cols).planes
    x, m = x[: q8k_gemv.MAX_M], q8k_gemv.MAX_M
    y = q8k_gemv.gemv(x.cuda(), planes, qtype, rows)
    assert y.shape == (m, rows) and y.dtype == torch.float32
    assert _rel_err(y, q8k_gemv.rounded(x).double() @ dequantize_torch(raw, qtype).double().T) < 1e-6
    for i in (0, 1, m - 1):  # a row's result does not depend on the rows beside it
        assert torch.equal(y[i : i + 1], q8k_gemv.gemv(x[i : i + 1].cuda(), planes, qtype, rows))
