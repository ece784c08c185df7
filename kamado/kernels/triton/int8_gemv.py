"""Decode GEMV with integer dot products (llama.cpp's MMVQ): activations quantized to int8 per 32 values, weights
read in their GGUF bytes, 4 products per `dp4a` instruction.

Why: the float GEMV (kernels.gemv_kernel) spends ~5 instructions per weight (unpack, int-to-float, FMA) and ran at
37-44% of the memory roofline on an H100 for 4-bit types: it was instruction-bound, not memory-bound (docs/GPU.md).
Here a 32-bit word of 4-bit quants gives 8 weights for 2 masks and 2 dp4a; scales are applied once per group.

Activations: x = dx * qx per block of 32 (dx = amax / 127, qx = round(x / dx)), plus xs = dx * sum(qx) per 16 values
for the types whose weights carry an offset. This is the error llama.cpp's CUDA backend accepts too (relative
~1e-3 per product). Types: Q4_0, Q4_1, Q8_0, Q4_K, Q6_K (Q4_K_M's and Q4_0/Q8_0 files' types); M <= MAX_M rows of x,
each weight tile decoded once for all rows.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.kernels.triton.kernels import Q4_0, Q4_1, Q4_K, Q6_K, Q8_0, _k4_scale_min

# qtype -> how many of its leading planes (layout.PLANES) hold quants, read as int32 words of 4 file bytes.
WORD_PLANES = {Q.Q4_0: 1, Q.Q4_1: 1, Q.Q8_0: 1, Q.Q4_K: 1, Q.Q6_K: 2}
MAX_M = 8
# (BLOCK_N, BLOCK_K, num_warps); BLOCK_K halves where K is not a multiple. Best or near-best for Q4_K and Q6_K in the
# H200 sweep of 2026-12-03 (docs/GPU.md): many small programs, long K tiles.
CONFIG = (2, 1024, 2)
# Triton's CPU interpreter has no inline PTX: dp4a is then computed byte by byte (same integers).
EMULATE_DP4A = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _dp4a(a, b, EMULATE: tl.constexpr):
    """Sum of the 4 products of the signed bytes of int32 a and b (broadcast to one shape)."""
    a, b = tl.broadcast(a, b)
    if EMULATE:
        s = tl.zeros_like(a)
        for i in tl.static_range(4):
            s += ((a << (24 - 8 * i)) >> 24) * ((b << (24 - 8 * i)) >> 24)
        return s
    return tl.inline_asm_elementwise("dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, tl.zeros_like(a)],
                                     dtype=tl.int32, is_pure=True, pack=1)  # fmt: skip


@triton.jit
def _dot_groups(w, qx, idx, EMULATE: tl.constexpr):
    """dp4a of weight words w [BN, G, S] with the x words at idx [G, S] of each x row (qx: [BM, 1] pointers), summed
    over each group's S words -> [BM, BN, G] int32. Loading tiles in their final 3-D shape (rather than reshaping a
    flat one) keeps the sums in registers: a reshape made Triton move data through shared memory."""
    d = _dp4a(w[None, :, :, :], tl.load(qx[:, :, None] + idx[None, :, :])[:, None, :, :], EMULATE)
    return tl.sum(d, axis=3)


@triton.jit
def _quantize_x_kernel(x_ptr, q_ptr, d_ptr, s_ptr, K, stride_x, BLOCK: tl.constexpr):
    """One row, BLOCK values: int8 quants, a float32 scale per 32 and dx * sum(q) per 16."""
    row = tl.program_id(0).to(tl.int64)
    k0 = tl.program_id(1) * BLOCK
    x = tl.load(x_ptr + row * stride_x + k0 + tl.arange(0, BLOCK)).reshape(BLOCK // 32, 32)
    d = tl.max(tl.abs(x), axis=1) / 127.0
    v = x / tl.where(d == 0.0, 1.0, d)[:, None]
    q = tl.where(v >= 0, tl.floor(v + 0.5), -tl.floor(0.5 - v))  # round half away from zero
    tl.store(q_ptr + row * K + k0 + tl.arange(0, BLOCK), q.to(tl.int8).reshape(BLOCK))
    tl.store(d_ptr + row * (K // 32) + k0 // 32 + tl.arange(0, BLOCK // 32), d)
    s16 = tl.sum(q.reshape(BLOCK // 16, 16), axis=1) * tl.reshape(tl.broadcast_to(d[:, None], [BLOCK // 32, 2]), [BLOCK // 16])
    tl.store(s_ptr + row * (K // 16) + k0 // 16 + tl.arange(0, BLOCK // 16), s16)


@triton.jit
def _gemv_kernel(qx_ptr, dx_ptr, xs_ptr, y_ptr, M, N, K, stride_y, p0, p1, p2, p3, s0, s1, s2, s3,
                 QTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 EMULATE: tl.constexpr):  # fmt: skip
    """y[m, n] = sum_k x[m, k] W[n, k] for BLOCK_N weight rows and all M (<= BLOCK_M) rows of x.

    Planes of 4-bit and 8-bit quants are read as int32 words (4 bytes of the file each); x words qx as int32 too.
    Shapes below: weight words [BLOCK_N, groups, words per group], integer sums and scaling [BLOCK_M, BLOCK_N, groups]."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1).to(tl.int64)[:, None]  # clamped: rows past N compute garbage that is never stored
    rows3 = rows[:, :, None]
    rm = tl.arange(0, BLOCK_M)
    xrow = tl.minimum(rm, M - 1).to(tl.int64)[:, None]
    qx = qx_ptr + xrow * (K // 4)
    dx = dx_ptr + xrow * (K // 32)
    xs = xs_ptr + xrow * (K // 16)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if QTYPE == Q8_0:  # block of 32: 8 words of int8 quants
            NB: tl.constexpr = BLOCK_K // 32
            wi = tl.arange(0, NB)[:, None] * 8 + tl.arange(0, 8)[None, :]
            w = tl.load(p0 + rows3 * s0 + k0 // 4 + wi[None, :, :])
            isum = _dot_groups(w, qx, k0 // 4 + wi, EMULATE)
            blk = k0 // 32 + tl.arange(0, NB)
            d = tl.load(p1 + rows * s1 + blk[None, :]).to(tl.float32)
            part = d[None, :, :] * tl.load(dx + blk[None, :])[:, None, :] * isum.to(tl.float32)
        elif QTYPE == Q4_0 or QTYPE == Q4_1:  # block of 32: 4 words; word w holds values 4w.. (low nibbles), 16 + 4w.. (high)
            NB: tl.constexpr = BLOCK_K // 32
            nb, j = tl.arange(0, NB)[:, None], tl.arange(0, 4)[None, :]
            w = tl.load(p0 + rows3 * s0 + (k0 // 8 + nb * 4 + j)[None, :, :])
            xlo = k0 // 4 + nb * 8 + j
            isum = _dot_groups(w & 0x0F0F0F0F, qx, xlo, EMULATE) + _dot_groups((w >> 4) & 0x0F0F0F0F, qx, xlo + 4, EMULATE)
            isum = isum.to(tl.float32)
            blk = k0 // 32 + tl.arange(0, NB)
            d = tl.load(p1 + rows * s1 + blk[None, :]).to(tl.float32)[None, :, :]
            xsum = (tl.load(xs + 2 * blk[None, :]) + tl.load(xs + 2 * blk[None, :] + 1))[:, None, :]
            part = d * tl.load(dx + blk[None, :])[:, None, :] * isum
            if QTYPE == Q4_0:
                part -= 8.0 * d * xsum
            else:
                part += tl.load(p2 + rows * s2 + blk[None, :]).to(tl.float32)[None, :, :] * xsum
        elif QTYPE == Q4_K:
            # 256-block: 4 chunks of 32 bytes (8 words); chunk c's low nibbles are sub-block 2c, its high nibbles 2c + 1
            NS: tl.constexpr = BLOCK_K // 64  # (block, chunk) pairs in the tile
            ns, j = tl.arange(0, NS)[:, None], tl.arange(0, 8)[None, :]
            w = tl.load(p0 + rows3 * s0 + (k0 // 8 + ns * 8 + j)[None, :, :])
            xlo = k0 // 4 + ns * 16 + j
            lo = _dot_groups(w & 0x0F0F0F0F, qx, xlo, EMULATE)
            hi = _dot_groups((w >> 4) & 0x0F0F0F0F, qx, xlo + 8, EMULATE)
            pair = k0 // 64 + tl.arange(0, NS)  # (block, chunk) index over the row
            blk = (pair // 4)[None, :]
            sub = (pair % 4)[None, :] * 2
            base = p2 + rows * s2 + blk * 12
            sc_lo, mn_lo = _k4_scale_min(base, sub)
            sc_hi, mn_hi = _k4_scale_min(base, sub + 1)
            d = tl.load(p1 + rows * s1 + blk * 2).to(tl.float32)[None, :, :]
            dmin = tl.load(p1 + rows * s1 + blk * 2 + 1).to(tl.float32)[None, :, :]
            g32 = 2 * pair[None, :]  # 32-value group of the low sub-block
            dx_lo = tl.load(dx + g32)[:, None, :]
            dx_hi = tl.load(dx + g32 + 1)[:, None, :]
            xs_lo = (tl.load(xs + 2 * g32) + tl.load(xs + 2 * g32 + 1))[:, None, :]
            xs_hi = (tl.load(xs + 2 * g32 + 2) + tl.load(xs + 2 * g32 + 3))[:, None, :]
            part = d * (sc_lo[None, :, :] * dx_lo * lo.to(tl.float32) + sc_hi[None, :, :] * dx_hi * hi.to(tl.float32))
            part -= dmin * (mn_lo[None, :, :] * xs_lo + mn_hi[None, :, :] * xs_hi)
        else:
            tl.static_assert(QTYPE == Q6_K, "unsupported QTYPE")
            # 256-block: ql 32 words, qh 16 words. ql word u: half n = u // 16, l4 = u % 16, part = l4 // 8, w = l4 % 8;
            # its low nibbles are values 128n + 32 part + 4w.. (2 high bits at qh bits 2 part), high nibbles 64 further
            # (qh bits 4 + 2 part); qh word: 8n + w of the block.
            NG: tl.constexpr = BLOCK_K // 32  # groups of 4 ql words (16 values each, one scale), low half of each
            # indices as (a function of the group) + arange(4): Triton then sees 4 contiguous words and loads 16 bytes at once
            gi, j = tl.arange(0, NG)[:, None], tl.arange(0, 4)[None, :]
            gu = gi % 8  # group in its block: half n = gu // 4, part = (gu % 4) // 2, words (gu % 2) * 4 + j of the 8
            part_ = (gu % 4) // 2
            ql = tl.load(p0 + rows3 * s0 + (k0 // 8 + gi * 4 + j)[None, :, :])
            qh = tl.load(p1 + rows3 * s1 + (k0 // 16 + (gi // 8) * 16 + (gu // 4) * 8 + (gu % 2) * 4 + j)[None, :, :])
            shift = (2 * part_)[None, :, :]
            q_lo = (ql & 0x0F0F0F0F) | (((qh >> shift) & 0x03030303) << 4)
            q_hi = ((ql >> 4) & 0x0F0F0F0F) | (((qh >> (shift + 4)) & 0x03030303) << 4)
            xlo = k0 // 4 + (gi // 8) * 64 + (gu // 4) * 32 + part_ * 8 + (gu % 2) * 4 + j
            lo = _dot_groups(q_lo, qx, xlo, EMULATE)
            hi = _dot_groups(q_hi, qx, xlo + 16, EMULATE)
            gs = tl.arange(0, NG)  # group of 4 words -> 16-value group (g16) of its low nibbles in the row
            gsu = gs % 8
            g16 = k0 // 16 + (gs // 8) * 16 + (gsu // 4) * 8 + ((gsu % 4) // 2) * 2 + gsu % 2
            blk = k0 // 256 + gs // 8
            d = tl.load(p3 + rows * s3 + blk[None, :]).to(tl.float32)
            sc_lo = tl.load(p2 + rows * s2 + g16[None, :]).to(tl.float32) * d
            sc_hi = tl.load(p2 + rows * s2 + g16[None, :] + 4).to(tl.float32) * d
            # sum (q - 32) * x = dx * sum(q * qx) - 32 * xs
            dot_lo = tl.load(dx + g16[None, :] // 2)[:, None, :] * lo.to(tl.float32) - 32.0 * tl.load(xs + g16[None, :])[:, None, :]
            dot_hi = tl.load(dx + g16[None, :] // 2 + 2)[:, None, :] * hi.to(tl.float32) - 32.0 * tl.load(xs + g16[None, :] + 4)[:, None, :]
            part = sc_lo[None, :, :] * dot_lo + sc_hi[None, :, :] * dot_hi
        acc += tl.sum(part, axis=2)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * stride_y + rn[None, :], acc, mask=mask)


def quantize_x(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, K) float32, K a multiple of 256 -> (int8 quants (M, K), scales (M, K/32), dx * sum(q) per 16 (M, K/16))."""
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8, device=x.device)
    d = torch.empty(m, k // 32, dtype=torch.float32, device=x.device)
    s = torch.empty(m, k // 16, dtype=torch.float32, device=x.device)
    block = 256
    _quantize_x_kernel[(m, k // block)](x, q, d, s, k, x.stride(0), BLOCK=block, num_warps=2)
    return q, d, s


def supports(qtype: Q, cols: int) -> bool:
    return qtype in WORD_PLANES and cols % 256 == 0


def gemv(x: torch.Tensor, planes: tuple[torch.Tensor, ...], qtype: Q, n: int) -> torch.Tensor:
    """y (M, n) = x (M, K) @ W.T for W in qtype's planes (layout.PLANES), M <= MAX_M, `supports(qtype, K)`."""
    m, k = x.shape
    qx, dx, xs = quantize_x(x.float())
    n_words = WORD_PLANES[qtype]
    words = [p.view(torch.int32) for p in planes[:n_words]] + list(planes[n_words:])
    words += [words[0]] * (4 - len(words))  # unused slots: any valid pointer
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    block_n, block_k, warps = CONFIG
    while k % block_k:
        block_k //= 2
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        qx.view(torch.int32), dx, xs, y, m, n, k, y.stride(0), *words, *(p.stride(0) for p in words),
        QTYPE=int(qtype), BLOCK_M=max(1, triton.next_power_of_2(m)), BLOCK_N=block_n, BLOCK_K=block_k, EMULATE=EMULATE_DP4A,
        num_warps=warps,
    )  # fmt: skip
    return y
