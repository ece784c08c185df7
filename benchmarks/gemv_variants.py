"""Research: new designs for the Q4_K batch-1 GEMV (y = W x) against the production kernels.gemv_kernel.

The production GEMV runs Q4_K 14336x4096 at ~34 µs, 23% of the H200's copy roofline, whatever its block config,
split-K or loop pipelining (docs/GPU.md, sessions 3-4). What all designs here share, against the suspected causes:
quants read as int32 words of the file's bytes, 16 bytes per thread and load; nibbles taken out of each word with
shifts in the tile's final shape (no reshape/transpose of loaded data, which Triton routes through shared memory);
Q4_K's 12 scale bytes read as 3 int32 words and (d, dmin) as one (no byte gathers); nothing reduced inside the K
loop (products scaled per word position, summed once at the end); every x value a thread loads is used for all the
rows that thread holds. The designs differ in how rows and K are laid over lanes and in the memory layout:

  rowtile      file layout; tile [rows, blocks, 4 chunks, 8 words]. Triton puts 2 lanes on a chunk's 8 words (one
               32-byte sector per row) and 16 lanes on rows. Configs from many rows and a short K step to
               llama.cpp's MMVQ shape (2 rows per program, the whole K at once, thousands of small programs).
  lanes        file layout; lanes over rows: tile [32 * warps rows, blocks, groups, rows per thread, 4 words], each
               lane reading 16 bytes of its own row per group, so all lanes of a warp need the same x (a broadcast
               load) and every reduction stays inside a thread. Across lanes the loads are not coalesced.
  kmajor       lanes's kernel over a K-major copy of the planes made once at load (same bytes): quant words as
               (K/32, N, 4), scale words as (K/256 * 3, N), (d, dmin) as (K/256, N), so a warp's 32 lanes read 512
               contiguous bytes.
  ... mant     decode by the mantissa trick: (q << 19) | 0x3F800000 is the float 1 + q/16 (shift + LOP3, no float
               subtraction: 3 instructions per weight instead of 4); not bit-exact, relative error ~2e-7.
  ... x16      x converted to fp16 once per call (half the x bytes and registers); x's rounding costs ~1e-4 relative
               error, so its tolerance is 1e-3 instead of 1e-4.

Every variant reads x in "nibble order" (xp[16 (w // 4) + 4 b + w % 4] = x[4 w + b] per 32 values: the b-th nibble
of word w), made by one small kernel per call (x_prep) and included in the variant's time; the "x_prep alone" row
says what that launch costs (in the engine it would be fused into the RMS norm / activation that produces x).

  python3 benchmarks/gemv_variants.py [--quick]     GPU: correctness against float64, then the timing table
  TRITON_INTERPRET=1 PYTHONPATH=/tmp/tritonlib:$PWD python3 benchmarks/gemv_variants.py --check
                                                    CPU: correctness only, small shapes (Triton's interpreter)
  PYTHONPATH=/tmp/tritonlib:$PWD python3 benchmarks/gemv_variants.py --compile
                                                    CPU, no GPU needed: compile every config for sm_90 and print
                                                    registers, spills, shared memory and layout conversions
Timings: medians of CUDA-graph replays over weight copies totalling >= 256 MiB (as bench_gpu_kernels.py);
% is of 4250 GB/s, bytes = Q4_K weight bytes + x (float32). Error: max |y - ref| / max |ref| against the float64
product of the dequantized weight.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.gguf.constants import GGMLQuantizationType as Q  # noqa: E402
from kamado.kernels.linear import QuantTensor  # noqa: E402
from kamado.kernels.triton.kernels import _exact_float, _store_split  # noqa: E402
from kamado.kernels.triton.layout import random_blocks  # noqa: E402
from kamado.kernels.triton.linear import TritonLinear, _block_k, _split_k, _split_workspace  # noqa: E402
from kamado.quants import dequantize_torch  # noqa: E402

ROOF_GBS = 4250.0  # H200 copy roofline used in docs/GPU.md session 4
ROTATE_BYTES = 256 << 20
SHAPES = [(14336, 4096), (4096, 14336), (4096, 4096), (1024, 4096), (128256, 4096)]
QUICK_SHAPES = [(14336, 4096), (4096, 14336), (4096, 4096)]
CHECK_SHAPES = [(40, 1024), (72, 512)]


# ----------------------------------------------------------------------------------------------------------- kernels
@triton.jit
def x_prep_kernel(x_ptr, xp_ptr, BLOCK: tl.constexpr):
    """x in nibble order: per 32 values, xp[16 (w // 4) + 4 b + w % 4] = x[4 w + b], the b-th nibble of word w
    (dtype of xp: float32 or fp16). Runs of 4 words, as the weight tiles hold them per thread, read 4 contiguous x."""
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = o % 32
    src = (o // 32) * 32 + ((v // 16) * 4 + v % 4) * 4 + (v % 16) // 4
    tl.store(xp_ptr + o, tl.load(x_ptr + src).to(xp_ptr.dtype.element_ty))


@triton.jit
def _half_pair(word):
    """(d, dmin) as float32 from the int32 word holding Q4_K's two fp16 super-scales (d in the low half)."""
    d = (word & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    dmin = (word >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return d, dmin


@triton.jit
def _scale_min(w0, w1, w2, sub):
    """6-bit scale and min of sub-block `sub` (0..7) from the 3 int32 words of a block's 12 scale bytes."""
    shift = (sub % 4) * 8
    low = (w0 >> shift) & 0xFF
    mid = (w1 >> shift) & 0xFF
    high = (w2 >> shift) & 0xFF
    first = sub < 4
    sc = tl.where(first, low & 63, (high & 0xF) | ((low >> 6) << 4))
    mn = tl.where(first, mid & 63, (high >> 4) | ((mid >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _sub_product(words, x_at, lane_rows, SHIFT: tl.constexpr, scale, mins, MANT: tl.constexpr):
    """scale * sum(q * x) - mins * sum(x) for each word, its 4 values q being the nibbles at bits SHIFT + 8 b (b = 0..3);
    x_at: x in nibble order for b = 0 (b's values 4 b further). It is broadcast against lane_rows (the rows the lanes
    hold, one per thread) before loading, so that Triton gives the x loads the words' layout (without that it converted
    every product tile through shared memory); not against rows a thread repeats: it would load x once per such row.
    MANT: q + 16 as float is (q << 19) | 0x3F800000 read as a float, i.e. 1 + q / 16: one shift and one LOP3 per value,
    no float subtraction; sum(q x) = 16 (sum((1 + q / 16) x) - sum(x)), folded into the two coefficients (not exact:
    the float sums differ in rounding from the exact decode, relative ~1e-7)."""
    x_at, _ = tl.broadcast(x_at, lane_rows)
    xsum = tl.zeros(words.shape, dtype=tl.float32)
    dot = tl.zeros(words.shape, dtype=tl.float32)
    for b in tl.static_range(4):
        xv = tl.load(x_at + 4 * b).to(tl.float32)
        pos = SHIFT + 8 * b  # a constexpr: b is static
        if MANT:
            if pos <= 19:
                moved = words << (19 - pos)
            else:
                moved = words >> (pos - 19)
            q = ((moved & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
        else:
            q = _exact_float((words >> pos) & 0xF, 0)
        dot += q * xv
        xsum += xv
    if MANT:
        return (16.0 * scale) * dot - (16.0 * scale + mins) * xsum
    return scale * dot - mins * xsum


@triton.jit
def rowtile_kernel(
    xp, y_ptr, N, K, qs, dm, sc, s_qs, s_dm, s_sc, partial_ptr, count_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, MANT: tl.constexpr,
):  # fmt: skip
    """Q4_K GEMV over the file-order planes as int32 words (qs: 32 words per 256-block, sc: 3, dm: 1). Tile
    [BLOCK_N rows, NB blocks, 4 chunks, 8 words]; chunk c's low nibbles are sub-block 2c, its high nibbles 2c + 1."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r4 = tl.minimum(rn, N - 1).to(tl.int64)[:, None, None, None]  # clamped: rows past N are never stored
    NB: tl.constexpr = BLOCK_K // 256
    nb = tl.arange(0, NB)[None, :, None, None]
    cc = tl.arange(0, 4)[None, None, :, None]
    w = tl.arange(0, 8)[None, None, None, :]
    acc = tl.zeros([BLOCK_N, NB, 4, 8], dtype=tl.float32)
    k_len = K // SPLIT_K
    for k0 in range(split * k_len, split * k_len + k_len, BLOCK_K):
        blk = k0 // 256 + nb
        words = tl.load(qs + r4 * s_qs + blk * 32 + cc * 8 + w)
        scales = sc + r4 * s_sc + blk * 3
        w0, w1, w2 = tl.load(scales), tl.load(scales + 1), tl.load(scales + 2)
        d, dmin = _half_pair(tl.load(dm + r4 * s_dm + blk))
        sc_lo, mn_lo = _scale_min(w0, w1, w2, 2 * cc)
        sc_hi, mn_hi = _scale_min(w0, w1, w2, 2 * cc + 1)
        x_at = xp + (blk * 8 + cc * 2) * 32 + (w // 4) * 16 + w % 4
        acc += _sub_product(words, x_at, r4, 0, d * sc_lo, dmin * mn_lo, MANT)
        acc += _sub_product(words, x_at + 32, r4, 4, d * sc_hi, dmin * mn_hi, MANT)
    out = tl.sum(tl.sum(tl.sum(acc, axis=3), axis=2), axis=1)
    _store_split(y_ptr + rn, out, rn < N, partial_ptr, rn, tl.num_programs(0) * BLOCK_N, count_ptr, pid_n, split, SPLIT_K)


@triton.jit(do_not_specialize=["rs_q", "gs_q", "rs_s", "gs_s", "rs_d", "gs_d"])  # a stride of 1 would vectorize along rows
def lanes_kernel(
    xp, y_ptr, N, K, qs, dm, sc, rs_q, gs_q, rs_s, gs_s, rs_d, gs_d, partial_ptr, count_ptr,
    RL: tl.constexpr, NB: tl.constexpr, GPB: tl.constexpr, RPT: tl.constexpr, SPLIT_K: tl.constexpr,
    MANT: tl.constexpr,
):  # fmt: skip
    """Q4_K GEMV with lanes over rows: tile [RL rows on lanes, NB blocks, GPB groups, RPT rows per thread, 4 words],
    a group being 4 words (16 bytes: 16 values of a chunk's low and of its high sub-block); RL = 32 * num_warps, so
    that each thread holds one row of dimension 0 and loads its x values once for its RPT rows (x is the same address
    for all lanes). Word (row, g, j) is at qs + 4 (row * rs_q + g * gs_q) + j (strides in groups, so that Triton knows
    each group is 16-byte aligned: one vector load), scale word i of block blk at sc + row * rs_s + (3 blk + i) * gs_s,
    (d, dmin) at dm + row * rs_d + blk * gs_d: the file layout and the K-major copy differ only in these strides.
    Every reduction stays inside a thread. A K step is NB * GPB * 32 values (GPB < 8 only with NB = 1)."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    BLOCK_N: tl.constexpr = RL * RPT
    rn = pid_n * BLOCK_N + tl.arange(0, RL)[:, None] + tl.arange(0, RPT)[None, :] * RL  # [RL, RPT]
    r5 = tl.minimum(rn, N - 1).to(tl.int64)[:, None, None, :, None]
    lane_rows = tl.arange(0, RL)[:, None, None, None, None]  # the shape x is broadcast against
    STEP: tl.constexpr = NB * GPB * 32
    nb = tl.arange(0, NB)[None, :, None, None, None]
    gi0 = tl.arange(0, GPB)[None, None, :, None, None]
    j = tl.arange(0, 4)[None, None, None, None, :]
    acc = tl.zeros([RL, NB, GPB, RPT, 4], dtype=tl.float32)
    k_len = K // SPLIT_K
    for k0 in range(split * k_len, split * k_len + k_len, STEP):
        blk = k0 // 256 + nb
        gi = (k0 % 256) // 32 + gi0  # group in its block: chunk gi // 2, words 4 (gi % 2) .. + 3 of the chunk
        words = tl.load(qs + (r5 * rs_q + (blk * 8 + gi).to(tl.int64) * gs_q) * 4 + j)
        scales = sc + r5 * rs_s + (blk * 3).to(tl.int64) * gs_s
        w0, w1, w2 = tl.load(scales), tl.load(scales + gs_s), tl.load(scales + 2 * gs_s)
        d, dmin = _half_pair(tl.load(dm + r5 * rs_d + blk.to(tl.int64) * gs_d))
        cc = gi // 2
        sc_lo, mn_lo = _scale_min(w0, w1, w2, 2 * cc)
        sc_hi, mn_hi = _scale_min(w0, w1, w2, 2 * cc + 1)
        x_at = xp + (blk * 8 + cc * 2) * 32 + (gi % 2) * 16 + j
        acc += _sub_product(words, x_at, lane_rows, 0, d * sc_lo, dmin * mn_lo, MANT)
        acc += _sub_product(words, x_at + 32, lane_rows, 4, d * sc_hi, dmin * mn_hi, MANT)
    out = tl.sum(tl.sum(tl.sum(acc, axis=4), axis=2), axis=1)
    _store_split(y_ptr + rn, out, rn < N, partial_ptr, rn, tl.num_programs(0) * BLOCK_N, count_ptr, pid_n, split, SPLIT_K)


# ------------------------------------------------------------------------------------------------------ host side
class Weight:
    """One random Q4_K weight: the production TritonLinear (file-order planes) and, on request, the K-major copy."""

    def __init__(self, rows: int, cols: int, device: str, seed: int, kmajor: bool):
        self.raw = random_blocks(Q.Q4_K, rows, cols, device=device, seed=seed)
        self.lin = TritonLinear(QuantTensor("w", Q.Q4_K, (rows, cols), self.raw), device=device)
        self.rows, self.cols = rows, cols
        qs, dm, sc = (p.view(torch.int32) for p in self.lin.weight.planes)
        self.words = (qs, dm, sc)
        self.kmajor = None
        if kmajor:
            qs_t = qs.reshape(rows, cols // 32, 4).permute(1, 0, 2).contiguous()
            self.kmajor = (qs_t, dm.T.contiguous(), sc.T.contiguous())

    @property
    def nbytes(self) -> int:
        return self.lin.nbytes


def x_prep(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    k = x.shape[-1]
    xp = torch.empty(k, dtype=dtype, device=x.device)
    x_prep_kernel[(k // 256,)](x, xp, BLOCK=256, num_warps=2)
    return xp


def run_rowtile(w: Weight, x: torch.Tensor, config, x_dtype: torch.dtype, mant: bool) -> torch.Tensor:
    block_n, block_k, warps, min_programs = config
    n, k = w.rows, w.cols
    block_k = _block_k(block_k, k, 256)
    xp = x_prep(x, x_dtype)
    y = torch.empty(1, n, dtype=torch.float32, device=x.device)
    tiles = triton.cdiv(n, block_n)
    split = _split_k(tiles, k, block_k, block_n, min_programs)
    qs, dm, sc = w.words
    rowtile_kernel[(tiles, split)](
        xp, y, n, k, qs, dm, sc, qs.stride(0), dm.stride(0), sc.stride(0), *_split_workspace(x.device),
        BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, MANT=mant, num_warps=warps,
    )  # fmt: skip
    return y


def run_lanes(w: Weight, x: torch.Tensor, config, x_dtype: torch.dtype, mant: bool, kmajor: bool) -> torch.Tensor:
    rpt, nb, gpb, warps, min_programs = config
    n, k = w.rows, w.cols
    block_n = 32 * warps * rpt
    while nb > 1 and k % (nb * 256):
        nb //= 2
    xp = x_prep(x, x_dtype)
    y = torch.empty(1, n, dtype=torch.float32, device=x.device)
    tiles = triton.cdiv(n, block_n)
    split = _split_k(tiles, k, nb * gpb * 32, block_n, min_programs)
    if kmajor:
        qs, dm, sc = w.kmajor
        strides = (1, qs.stride(0) // 4, 1, sc.stride(0), 1, dm.stride(0))
    else:
        qs, dm, sc = w.words
        strides = (qs.stride(0) // 4, 1, sc.stride(0), 1, dm.stride(0), 1)
    lanes_kernel[(tiles, split)](
        xp, y, n, k, qs, dm, sc, *strides, *_split_workspace(x.device),
        RL=32 * warps, NB=nb, GPB=gpb, RPT=rpt, SPLIT_K=split, MANT=mant, num_warps=warps,
    )  # fmt: skip
    return y


def run_baseline(w: Weight, x: torch.Tensor, config=None) -> torch.Tensor:
    return w.lin(x[None, :])  # the public path: M = 1 takes kernels.gemv_kernel with linear.GEMV_CONFIG


def run_x_prep(w: Weight, x: torch.Tensor, config=None) -> torch.Tensor:
    return x_prep(x, torch.float32)


F32, F16 = torch.float32, torch.float16
# rowtile config: (BLOCK_N, BLOCK_K, num_warps, min programs for split-K), BLOCK_N = 16 * the warps Triton puts on
# rows (more rows would be repeated in each thread, and each repeat would load x again); (64, 512, 4) converts its scale
# tiles through shared memory in the loop (--compile), kept as a measure of that cost; lanes/kmajor: (rows per thread,
# NB, GPB, num_warps, min programs), 32 * num_warps * rows per thread rows per program. Split-K: linear._split_k (K
# halved while there are fewer programs than min programs).
ROWTILE = [(16, 512, 4, 2048), (16, 1024, 4, 2048), (64, 512, 4, 1024), (2, 2048, 2, 0), (16, 2048, 8, 1024)]
LANES = [(1, 1, 8, 4, 1024), (2, 1, 4, 4, 1024), (2, 1, 8, 4, 512), (1, 1, 8, 2, 2048), (4, 1, 2, 4, 512)]
CHECK_ROWTILE = [(16, 512, 4, 0), (64, 256, 2, 64), (1, 1024, 1, 0)]
CHECK_LANES = [(1, 1, 8, 1, 0), (2, 1, 4, 1, 16), (1, 2, 8, 1, 0)]
# name -> (run(weight, x, config), configs, quick configs, check configs, error tolerance)
VARIANTS = {
    "baseline": (run_baseline, [None], [None], [None], 1e-4),
    "rowtile": (lambda w, x, c: run_rowtile(w, x, c, F32, False), ROWTILE, ROWTILE[:2], CHECK_ROWTILE, 1e-4),
    "rowtile mant": (lambda w, x, c: run_rowtile(w, x, c, F32, True), ROWTILE[:2] + ROWTILE[3:4], ROWTILE[:1], CHECK_ROWTILE[:2], 1e-4),
    "lanes": (lambda w, x, c: run_lanes(w, x, c, F32, False, False), LANES[:3], LANES[:2], CHECK_LANES, 1e-4),
    "kmajor": (lambda w, x, c: run_lanes(w, x, c, F32, False, True), LANES, LANES[:3], CHECK_LANES, 1e-4),
    "kmajor mant": (lambda w, x, c: run_lanes(w, x, c, F32, True, True), LANES[:3], LANES[:1], CHECK_LANES[:2], 1e-4),
    "kmajor x16": (lambda w, x, c: run_lanes(w, x, c, F16, False, True), LANES[:3], LANES[:1], CHECK_LANES[:1], 1e-3),
    "x_prep alone": (run_x_prep, [None], [None], [], None),
}


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double().flatten() - ref).abs().max() / ref.abs().max()).item()


def reference(w: Weight, x: torch.Tensor) -> torch.Tensor:
    return dequantize_torch(w.raw, Q.Q4_K).double() @ x.double()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check(device: str) -> None:
    """Correctness of every variant and check config on small shapes (the interpreter on a CPU)."""
    failures = []
    for rows, cols in CHECK_SHAPES:
        w = Weight(rows, cols, device, seed=rows, kmajor=True)
        x = torch.randn(cols, device=device)
        ref = reference(w, x)
        for name, (run, _, _, configs, tol) in VARIANTS.items():
            for config in configs:
                err = rel_error(run(w, x, config), ref)
                ok = err <= tol
                print(f"{rows}x{cols} {name} {config}: error {err:.2e} {'ok' if ok else f'FAIL (> {tol:g})'}", flush=True)
                if not ok:
                    failures.append(f"{name} {config} {rows}x{cols}")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


def run_all(run, weights: list[Weight], x: torch.Tensor, config) -> list[torch.Tensor]:
    return [run(w, x, config) for w in weights]


def graph_us(run, copies: int) -> float:
    """Median µs per product of `run` (`copies` products over rotating weights) replayed from a CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        run()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=150, return_mode="median") * 1e3 / copies


def bench(quick: bool) -> None:
    import triton.testing  # noqa: F401  (do_bench)

    shapes = QUICK_SHAPES if quick else SHAPES
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, triton {triton.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    cells: dict[tuple[str, str], dict] = {}
    errors: dict[tuple[str, str], float] = {}
    failures = []
    start = time.time()
    for rows, cols in shapes:
        one = rows * cols * 9 // 16  # Q4_K: 144 bytes per 256 values
        n_copies = max(1, math.ceil(ROTATE_BYTES / one))
        weights = [Weight(rows, cols, "cuda", seed=i, kmajor=True) for i in range(n_copies)]
        x = torch.randn(cols, device="cuda")
        ref = reference(weights[0], x)
        nbytes = weights[0].nbytes + 4 * cols
        for name, (run, configs, quick_configs, _, tol) in VARIANTS.items():
            for config in quick_configs if quick else configs:
                key = (name, "" if config is None else str(config))
                log(f"[{time.time() - start:6.1f} s] {rows}x{cols} {name} {config}")
                try:
                    if tol is not None:
                        err = rel_error(run(weights[0], x, config), ref)
                        errors[key] = max(errors.get(key, 0.0), err)
                        if err > tol:
                            failures.append(f"{name} {config} {rows}x{cols}: error {err:.2e} > {tol}")
                            cells.setdefault(key, {})[(rows, cols)] = f"WRONG {err:.1e}"
                            continue
                    us = graph_us(partial(run_all, run, weights, x, config), n_copies)
                    cells.setdefault(key, {})[(rows, cols)] = f"{us:.1f} ({nbytes / us / 1e3 / ROOF_GBS:.0%})"
                except Exception as e:  # a config that does not compile or run is reported, not fatal
                    log(f"    failed: {type(e).__name__}: {str(e)[:300]}")
                    cells.setdefault(key, {})[(rows, cols)] = f"error: {type(e).__name__}"
        weights.clear()
        torch.cuda.empty_cache()
    print(f"\nQ4_K batch-1 GEMV, µs (% of {ROOF_GBS:.0f} GB/s; bytes = weight + float32 x); error = max |y - ref| / "
          "max |ref| against float64 over the shapes; every variant's time includes its x_prep launch")  # fmt: skip
    print("| variant | config | " + " | ".join(f"{r}x{c}" for r, c in shapes) + " | error |")
    print("|---|---|" + "---|" * (len(shapes) + 1))
    for (name, config), row in cells.items():
        err = f"{errors[(name, config)]:.1e}" if (name, config) in errors else "-"
        print(f"| {name} | {config} | " + " | ".join(row.get(s, "-") for s in shapes) + f" | {err} |")
    log(f"done in {time.time() - start:.0f} s")
    if failures:
        sys.exit("WRONG RESULTS:\n" + "\n".join(failures))


# ------------------------------------------------------------------------------------- offline compile for sm_90
def compile_report() -> None:
    """Compile each kernel config for sm_90 without a GPU and print what decides its speed before any device time:
    registers and spills (ptxas), shared memory, and the layout conversions Triton inserted (ttg.convert_layout).
    Conversions inside the K loop are what matters: one between layouts that place a tensor's elements on the same
    threads is free (lanes' scale tiles), one that moves data goes through shared memory every step (rowtile's scale
    tiles when more than 16 rows; the shared bytes then exceed what the final reduction needs, ~4 per row)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kamado.kernels.triton import kernels, linear

    target = GPUTarget("cuda", 90, 32)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    aligned = [["tt.divisibility", 16]]

    def build(fn, signature: dict, constexprs: dict, warps: int, label: str) -> None:
        names = list(signature)
        attrs = {(names.index(a),): aligned for a, t in signature.items() if t.startswith("*") or a in ALIGNED_INTS}
        sig = {**signature, **{k: "constexpr" for k in constexprs}}
        try:
            c = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target, options={"num_warps": warps})
        except Exception as e:
            print(f"| {label} | COMPILE ERROR: {type(e).__name__}: {' '.join(str(e).split())[-300:]} |||||", flush=True)
            return
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(c.asm["cubin"])
            f.flush()
            usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
        regs = re.search(r"REG:(\d+)", usage)
        local = re.search(r"LOCAL:(\d+)", usage)
        ttgir = c.asm["ttgir"]
        loop = ttgir[ttgir.find("scf.for") : ttgir.find("scf.yield")]  # the K loop comes first
        print(f"| {label} | {regs.group(1) if regs else '?'} | {local.group(1) if local else '?'} | {c.metadata.shared} | "
              f"{ttgir.count('ttg.convert_layout')} | {loop.count('ttg.convert_layout')} |", flush=True)  # fmt: skip

    ALIGNED_INTS = {"s0", "s1", "s2", "s_qs", "s_dm", "s_sc", "K"}
    common = {"y_ptr": "*fp32", "N": "i32", "K": "i32"}
    split = {"partial_ptr": "*fp32", "count_ptr": "*i32"}
    print("| kernel config | registers | local (spill) bytes | shared bytes | convert_layout | in the K loop |")
    print("|---|---|---|---|---|---|")
    block_n, block_k, warps = linear.GEMV_CONFIG
    planes = {f"p{i}": "*u8" for i in range(4)}
    planes["p1"] = "*fp16"
    gemv_sig = {"x_ptr": "*fp32", **common, **split, **planes, **{f"s{i}": "i32" for i in range(4)}, "table": "*fp32"}
    for sk in (1, 2):
        build(
            kernels.gemv_kernel,
            gemv_sig,
            {"QTYPE": 12, "GS": 32, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": sk},
            warps,
            f"baseline gemv_kernel {linear.GEMV_CONFIG} SPLIT_K={sk}",
        )
    for xt in ("*fp32", "*fp16"):
        build(x_prep_kernel, {"x_ptr": "*fp32", "xp_ptr": xt}, {"BLOCK": 256}, 2, f"x_prep_kernel x={xt[1:]}")
    words = {"qs": "*i32", "dm": "*i32", "sc": "*i32"}
    for xt, mant in (("*fp32", False), ("*fp32", True), ("*fp16", False)):
        flags = f"x={xt[1:]}{' mant' if mant else ''}"
        sig = {"xp": xt, **common, **words, "s_qs": "i32", "s_dm": "i32", "s_sc": "i32", **split}
        for bn, bk, w, _ in ROWTILE:
            build(
                rowtile_kernel,
                sig,
                {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 2, "MANT": mant},
                w,
                f"rowtile {flags} {(bn, bk, w)} SPLIT_K=2",
            )
        sig = {"xp": xt, **common, **words, **{s: "i32" for s in ("rs_q", "gs_q", "rs_s", "gs_s", "rs_d", "gs_d")}, **split}
        for rpt, nb, gpb, w, _ in LANES:
            build(
                lanes_kernel,
                sig,
                {"RL": 32 * w, "NB": nb, "GPB": gpb, "RPT": rpt, "SPLIT_K": 2, "MANT": mant},
                w,
                f"lanes/kmajor {flags} {(rpt, nb, gpb, w)} SPLIT_K=2",
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer configs and shapes (~1.5 min)")
    mode.add_argument("--check", action="store_true", help="correctness only on small shapes (CPU interpreter or GPU)")
    mode.add_argument("--compile", action="store_true", help="compile for sm_90 offline: registers, spills, conversions")
    args = ap.parse_args()
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if args.compile:
        compile_report()
    elif args.check:
        check("cpu" if interpreted else "cuda")
    else:
        if interpreted or not torch.cuda.is_available():
            sys.exit("timing needs a CUDA device (use --check under TRITON_INTERPRET=1, or --compile)")
        bench(args.quick)


if __name__ == "__main__":
    main()
