"""Research: does a Q4_K GEMV that keeps raw weight words in flight beat kernels.gemv_kernel? (docs/GPU.md, session 4)

kernels.gemv_kernel decodes each K tile into float32 right after loading it, so the registers that could hold the next
tiles' bytes hold decoded floats (~32 per thread per tile), and each K step waits for its own loads. Here the raw
tile (qs as int32 words, 2 KB for 8 rows x 512 values, 4 registers a thread) of step t + 1 is loaded before step t is
decoded: a register double buffer, by hand (Triton's own loop pipelining stages through shared memory and measured
slower). Run on a CUDA machine:  python3 benchmarks/gemv_prefetch.py   (prints µs against the production kernel)
Under TRITON_INTERPRET=1 it only checks the result on a small weight.
Measured on the H200 (2026-12-03): both variants are exact and 2x slower than kernels.gemv_kernel (docs/GPU.md,
session 4), probably through the word-to-nibble reshape, which Triton lowers through shared memory.
"""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.gguf.constants import GGMLQuantizationType as Q  # noqa: E402
from kamado.kernels.linear import QuantTensor  # noqa: E402
from kamado.kernels.triton.kernels import _exact_float  # noqa: E402
from kamado.kernels.triton.layout import random_blocks  # noqa: E402
from kamado.kernels.triton.linear import TritonLinear  # noqa: E402
from kamado.quants import dequantize_torch  # noqa: E402


@triton.jit
def _load_tile(qs, dm, sc, rows, s_qs, s_dm, s_sc, k0, NCH: tl.constexpr):
    """Raw Q4_K tile of NCH 64-value chunks from column k0: qs words [R, NCH, 8], the 6 scale bytes each chunk needs
    (low/mid/high byte of its two sub-blocks) and the block's (d, dmin) as one int32 word, all still packed."""
    ch = k0 // 64 + tl.arange(0, NCH)  # chunk index over the row: block ch // 4, chunk ch % 4 of it
    r2 = rows.to(tl.int64)[:, None]
    words = tl.load(qs + r2[:, :, None] * s_qs + (ch * 8)[None, :, None] + tl.arange(0, 8)[None, None, :])
    base = sc + r2 * s_sc + (ch // 4 * 12)[None, :]
    lo_sub = (ch % 4) * 2  # sub-blocks 2c (low nibbles) and 2c + 1 (high)
    first = (lo_sub % 4)[None, :]
    second = ((lo_sub + 1) % 4)[None, :]
    dmin_d = tl.load(dm + r2 * s_dm + (ch // 4)[None, :])  # int32: fp16 d in the low half, dmin in the high half
    return (words, tl.load(base + first), tl.load(base + first + 4), tl.load(base + first + 8), tl.load(base + second),
            tl.load(base + second + 4), tl.load(base + second + 8), dmin_d)


@triton.jit
def _scale_min(low, mid, high, upper):
    """6-bit scale and min of a sub-block from its three packed bytes; `upper`: sub-block index >= 4."""
    low, mid, high = low.to(tl.int32), mid.to(tl.int32), high.to(tl.int32)
    sc = tl.where(upper, (high & 0xF) | ((low >> 6) << 4), low & 63)
    mn = tl.where(upper, (high >> 4) | ((mid >> 6) << 4), mid & 63)
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _tile_product(x_ptr, k0, words, c0, c1, c2, e0, e1, e2, dmin_d, BLOCK_N: tl.constexpr, NCH: tl.constexpr):
    """[R, NCH] partial sums of one raw tile (as _load_tile returns it) times x from column k0."""
    ch = k0 // 64 + tl.arange(0, NCH)
    upper = ((ch % 4) * 2 >= 4)[None, :]
    sc_lo, mn_lo = _scale_min(c0, c1, c2, upper)
    sc_hi, mn_hi = _scale_min(e0, e1, e2, upper)
    d = (dmin_d & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    dmin = (dmin_d >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    v = tl.arange(0, 32)[None, :]
    x_lo = tl.load(x_ptr + (ch * 64)[:, None] + v)  # [NCH, 32]: values 4 * word + byte of the low nibbles
    x_hi = tl.load(x_ptr + (ch * 64 + 32)[:, None] + v)
    shifts = (tl.arange(0, 4) * 8)[None, None, None, :]
    q_lo = _exact_float(tl.reshape((words[:, :, :, None] >> shifts) & 0xF, [BLOCK_N, NCH, 32]), 0)
    q_hi = _exact_float(tl.reshape((words[:, :, :, None] >> (shifts + 4)) & 0xF, [BLOCK_N, NCH, 32]), 0)
    dots = sc_lo * tl.sum(q_lo * x_lo[None, :, :], axis=2) + sc_hi * tl.sum(q_hi * x_hi[None, :, :], axis=2)
    mins = mn_lo * tl.sum(x_lo, axis=1)[None, :] + mn_hi * tl.sum(x_hi, axis=1)[None, :]
    return d * dots - dmin * mins


@triton.jit
def gemv_prefetch_kernel(x_ptr, y_ptr, N, K, qs, dm, sc, s_qs, s_dm, s_sc, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    NCH: tl.constexpr = BLOCK_K // 64
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1)
    acc = tl.zeros([BLOCK_N, NCH], dtype=tl.float32)
    # the tile's eight parts as separate loop-carried tensors (the double buffer)
    w, a0, a1, a2, b0, b1, b2, dmin_d = _load_tile(qs, dm, sc, rows, s_qs, s_dm, s_sc, 0, NCH)
    for k0 in range(0, K, BLOCK_K):
        cur_words, c0, c1, c2, e0, e1, e2, cur_dm = w, a0, a1, a2, b0, b1, b2, dmin_d
        nxt = tl.minimum(k0 + BLOCK_K, K - BLOCK_K)  # the last step reloads its own tile (never used)
        w, a0, a1, a2, b0, b1, b2, dmin_d = _load_tile(qs, dm, sc, rows, s_qs, s_dm, s_sc, nxt, NCH)
        acc += _tile_product(x_ptr, k0, cur_words, c0, c1, c2, e0, e1, e2, cur_dm, BLOCK_N, NCH)
    tl.store(y_ptr + rn, tl.sum(acc, axis=1), mask=rn < N)


@triton.jit
def gemv_persistent_kernel(x_ptr, y_ptr, N, K, qs, dm, sc, s_qs, s_dm, s_sc, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The same product with a persistent grid: each program walks row tiles pid, pid + grid, ... and the (tile, K step)
    pairs form one loop, so the prefetch runs across tile boundaries and programs never end early."""
    NCH: tl.constexpr = BLOCK_K // 64
    pid, grid = tl.program_id(0), tl.num_programs(0)
    steps = K // BLOCK_K
    n_iter = tl.cdiv(tl.cdiv(N, BLOCK_N) - pid, grid) * steps
    rows = tl.minimum(pid * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)
    w, a0, a1, a2, b0, b1, b2, dmin_d = _load_tile(qs, dm, sc, rows, s_qs, s_dm, s_sc, 0, NCH)
    acc = tl.zeros([BLOCK_N, NCH], dtype=tl.float32)
    for it in range(0, n_iter):
        cur_words, c0, c1, c2, e0, e1, e2, cur_dm = w, a0, a1, a2, b0, b1, b2, dmin_d
        k0 = (it % steps) * BLOCK_K
        nxt = tl.minimum(it + 1, n_iter - 1)
        next_rows = tl.minimum((pid + (nxt // steps) * grid) * BLOCK_N + tl.arange(0, BLOCK_N), N - 1)
        w, a0, a1, a2, b0, b1, b2, dmin_d = _load_tile(qs, dm, sc, next_rows, s_qs, s_dm, s_sc, (nxt % steps) * BLOCK_K, NCH)
        acc += _tile_product(x_ptr, k0, cur_words, c0, c1, c2, e0, e1, e2, cur_dm, BLOCK_N, NCH)
        if it % steps == steps - 1:
            rn = (pid + (it // steps) * grid) * BLOCK_N + tl.arange(0, BLOCK_N)
            tl.store(y_ptr + rn, tl.sum(acc, axis=1), mask=rn < N)
            acc = tl.zeros([BLOCK_N, NCH], dtype=tl.float32)


def gemv_persistent(lin: TritonLinear, x: torch.Tensor, block_n: int = 8, block_k: int = 512, warps: int = 4,
                    per_sm: int = 8) -> torch.Tensor:  # fmt: skip
    qs, dm, sc = lin.weight.planes
    words, dm_words = qs.view(torch.int32), dm.view(torch.int32)
    y = torch.empty(1, lin.out_features, dtype=torch.float32, device=x.device)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 2
    grid = min(triton.cdiv(lin.out_features, block_n), sms * per_sm)
    gemv_persistent_kernel[(grid,)](
        x, y, lin.out_features, lin.in_features, words, dm_words, sc, words.stride(0), dm_words.stride(0), sc.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)  # fmt: skip
    return y


def gemv_prefetch(lin: TritonLinear, x: torch.Tensor, block_n: int = 8, block_k: int = 512, warps: int = 4) -> torch.Tensor:
    qs, dm, sc = lin.weight.planes
    words, dm_words = qs.view(torch.int32), dm.view(torch.int32)
    y = torch.empty(1, lin.out_features, dtype=torch.float32, device=x.device)
    gemv_prefetch_kernel[(triton.cdiv(lin.out_features, block_n),)](
        x, y, lin.out_features, lin.in_features, words, dm_words, sc, words.stride(0), dm_words.stride(0), sc.stride(0),
        BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)  # fmt: skip
    return y


def main() -> None:
    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    rows, cols = (24, 1024) if device == "cpu" else (4096, 4096)
    raw = random_blocks(Q.Q4_K, rows, cols, device=device, seed=1)
    lin = TritonLinear(QuantTensor("w", Q.Q4_K, (rows, cols), raw), device=device)
    x = torch.randn(1, cols, device=device)
    ref = x.double() @ dequantize_torch(raw, Q.Q4_K).double().T
    for name, run in (("prefetch", gemv_prefetch), ("persistent", gemv_persistent)):
        err = ((run(lin, x).double() - ref).norm() / ref.norm()).item()
        print(f"{name}: relative error against the float64 product: {err:.2e}")
    if device == "cpu":
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import triton.testing
    from bench_gpu_kernels import ROTATE_BYTES, make_weight

    print("| shape | production GEMV µs | " + " | ".join(f"prefetch {c} µs" for c in CONFIGS)
          + " | " + " | ".join(f"persistent {c} µs" for c in PERSISTENT) + " |")
    for rows, cols in ((14336, 4096), (4096, 14336), (4096, 4096), (128256, 4096)):
        lins = [make_weight(Q.Q4_K, rows, cols, seed=i) for i in range(max(1, ROTATE_BYTES // (rows * cols * 9 // 16)))]
        x = torch.randn(1, cols, device="cuda")
        runs = [partial(_production, lins, x)] + [partial(_prefetch, lins, x, config) for config in CONFIGS]
        runs += [partial(_persistent, lins, x, config) for config in PERSISTENT]
        cells = [_graph_us(run, len(lins), triton.testing) for run in runs]
        print(f"| {rows}x{cols} | " + " | ".join(f"{c:.1f}" for c in cells) + " |", flush=True)


def _production(lins, x):
    return [lin.gemv(x) for lin in lins]


def _prefetch(lins, x, config):
    return [gemv_prefetch(lin, x, *config) for lin in lins]


def _persistent(lins, x, config):
    return [gemv_persistent(lin, x, *config) for lin in lins]


CONFIGS = [(8, 512, 4), (8, 256, 4), (16, 256, 4), (4, 512, 2), (8, 1024, 8)]
PERSISTENT = [(8, 512, 4, 8), (8, 512, 4, 4), (16, 256, 4, 8), (4, 512, 2, 16)]  # (BLOCK_N, BLOCK_K, warps, programs per SM)


def _graph_us(run, n: int, testing) -> float:
    """Median µs per product of `run` (n products over rotating weights) replayed from a CUDA graph."""
    run()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median") * 1e3 / n


if __name__ == "__main__":
    main()
