"""Triton kernels over planed GGUF weights (see layout.py): fused dequantize-GEMV, fused dequantize-GEMM, dequantize.

Every kernel walks K in "groups" of GS values that share one scale (32, or 16 for Q2_K/Q3_K/Q6_K).
`_dequant` returns, for a tile of rows and groups, the small integers q (as exact float32), the
per-group scale and offset, so that weight = q * scale + offset. The GEMV multiplies q by x and
applies scale and offset once per group; the GEMM and the dequantize kernel build fp16 weights.
"""

from __future__ import annotations

import triton
import triton.language as tl

# GGMLQuantizationType values (globals read by jitted code must be tl.constexpr).
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = (tl.constexpr(v) for v in (2, 3, 6, 7, 8))
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K = (tl.constexpr(v) for v in (10, 11, 12, 13, 14))
IQ4_NL, IQ4_XS = tl.constexpr(20), tl.constexpr(23)


@triton.jit
def _exact_float(q, zero: tl.constexpr):
    """q - zero as float32 for 0 <= q < 2**23 without an int-to-float conversion instruction
    (those run at a quarter of the FP32 rate on sm_90): the bits of 2**23 + q read as a float."""
    return (q | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + zero)


@triton.jit
def _k4_unpack(low, mid, high, first):
    """6-bit scale and min of a Q4_K/Q5_K sub-block from its bytes `low` (byte sub % 4 of the 12 packed scale bytes),
    `mid` (sub % 4 + 4) and `high` (sub % 4 + 8); first: sub < 4."""
    sc = tl.where(first, low & 63, (high & 0xF) | ((low >> 6) << 4))
    mn = tl.where(first, mid & 63, (high >> 4) | ((mid >> 6) << 4))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _k4_scale_min(base, sub):
    """6-bit scale and min of sub-block `sub` (0..7) from Q4_K/Q5_K's 12 packed scale bytes at `base`."""
    low = tl.load(base + sub % 4).to(tl.int32)
    mid = tl.load(base + sub % 4 + 4).to(tl.int32)
    high = tl.load(base + sub % 4 + 8).to(tl.int32)
    return _k4_unpack(low, mid, high, sub < 4)


@triton.jit
def _k4_scale_min_words(w0, w1, w2, sub):
    """_k4_scale_min from the 12 scale bytes read as 3 int32 words (byte i is byte i % 4 of word i // 4)."""
    shift = (sub % 4) * 8
    return _k4_unpack((w0 >> shift) & 0xFF, (w1 >> shift) & 0xFF, (w2 >> shift) & 0xFF, sub < 4)


@triton.jit
def _dequant(p0, p1, p2, p3, s0, s1, s2, s3, table, rows, g0, G: tl.constexpr, QTYPE: tl.constexpr, GS: tl.constexpr):
    """(q [R, G, GS], scale [R, G], offset [R, G]) for row indices `rows` [R] and the G groups from group g0 on."""
    groups = g0 + tl.arange(0, G)
    r2 = rows.to(tl.int64)[:, None]
    r3 = r2[:, :, None]
    g2 = groups[None, :]
    g3 = g2[:, :, None]
    j = tl.arange(0, GS)[None, None, :]
    if QTYPE == Q8_0:
        q = _exact_float(tl.load(p0 + r3 * s0 + g3 * 32 + j).to(tl.int32) + 128, 128)
        scale = tl.load(p1 + r2 * s1 + g2).to(tl.float32)
        offset = tl.zeros_like(scale)
    elif QTYPE == Q4_0 or QTYPE == Q4_1 or QTYPE == Q5_0 or QTYPE == Q5_1 or QTYPE == IQ4_NL:
        # byte i of a 32-value block holds values i (low nibble) and i + 16 (high nibble)
        nib = (tl.load(p0 + r3 * s0 + g3 * 16 + j % 16).to(tl.int32) >> ((j // 16) * 4)) & 0xF
        if QTYPE == Q4_0 or QTYPE == Q4_1:
            q = _exact_float(nib, 8 if QTYPE == Q4_0 else 0)
            scale = tl.load(p1 + r2 * s1 + g2).to(tl.float32)
            offset = tl.zeros_like(scale) if QTYPE == Q4_0 else tl.load(p2 + r2 * s2 + g2).to(tl.float32)
        elif QTYPE == IQ4_NL:
            q = tl.load(table + nib)
            scale = tl.load(p1 + r2 * s1 + g2).to(tl.float32)
            offset = tl.zeros_like(scale)
        else:
            high = tl.load(p1 + r2 * s1 + g2)[:, :, None]  # int32: bit i is the fifth bit of value i
            q5 = nib | (((high >> j) & 1) << 4)
            scale = tl.load(p2 + r2 * s2 + g2).to(tl.float32)
            if QTYPE == Q5_0:
                q = _exact_float(q5, 16)
                offset = tl.zeros_like(scale)
            else:
                q = _exact_float(q5, 0)
                offset = tl.load(p3 + r2 * s3 + g2).to(tl.float32)
    elif QTYPE == Q4_K or QTYPE == Q5_K:
        # 8 sub-blocks of 32 per 256-block; 32 bytes of qs hold sub-blocks 2c (low nibbles) and 2c+1 (high)
        sub3 = g3 % 8
        nib = (tl.load(p0 + r3 * s0 + (g3 // 8) * 128 + (sub3 // 2) * 32 + j).to(tl.int32) >> ((sub3 % 2) * 4)) & 0xF
        if QTYPE == Q4_K:
            dm, sc_plane, s_dm, s_sc = p1, p2, s1, s2
        else:
            nib = nib | (((tl.load(p1 + r3 * s1 + (g3 // 8) * 32 + j).to(tl.int32) >> sub3) & 1) << 4)
            dm, sc_plane, s_dm, s_sc = p2, p3, s2, s3
        q = _exact_float(nib, 0)
        blk = g2 // 8
        sc, mn = _k4_scale_min(sc_plane + r2 * s_sc + blk * 12, g2 % 8)
        d = tl.load(dm + r2 * s_dm + blk * 2).to(tl.float32)
        dmin = tl.load(dm + r2 * s_dm + blk * 2 + 1).to(tl.float32)
        scale = d * sc
        offset = -dmin * mn
    elif QTYPE == Q6_K or QTYPE == Q2_K or QTYPE == Q3_K:
        # 16 groups of 16 per 256-block; group g of a block: half g // 8, quarter (g % 8) // 2, l = (g % 2) * 16 + j
        g16 = g3 % 16
        half = g16 // 8
        quarter = (g16 % 8) // 2
        lane = (g16 % 2) * 16 + j
        blk3 = g3 // 16
        blk = g2 // 16
        if QTYPE == Q6_K:
            low = tl.load(p0 + r3 * s0 + blk3 * 128 + half * 64 + (quarter % 2) * 32 + lane).to(tl.int32)
            high = tl.load(p1 + r3 * s1 + blk3 * 64 + half * 32 + lane).to(tl.int32)
            q = _exact_float(((low >> ((quarter // 2) * 4)) & 0xF) | (((high >> (quarter * 2)) & 3) << 4), 32)
            scale = tl.load(p2 + r2 * s2 + g2).to(tl.float32) * tl.load(p3 + r2 * s3 + blk).to(tl.float32)
            offset = tl.zeros_like(scale)
        else:
            two = (tl.load(p0 + r3 * s0 + blk3 * 64 + half * 32 + lane).to(tl.int32) >> (quarter * 2)) & 3
            if QTYPE == Q2_K:
                q = _exact_float(two, 0)
                sc = tl.load(p1 + r2 * s1 + g2).to(tl.int32)
                d = tl.load(p2 + r2 * s2 + blk * 2).to(tl.float32)
                dmin = tl.load(p2 + r2 * s2 + blk * 2 + 1).to(tl.float32)
                scale = d * (sc & 0xF).to(tl.float32)
                offset = -dmin * (sc >> 4).to(tl.float32)
            else:
                # value = two - 4 unless the hmask bit (half * 4 + quarter) is set
                hbit = (tl.load(p1 + r3 * s1 + blk3 * 32 + lane).to(tl.int32) >> (half * 4 + quarter)) & 1
                q = _exact_float(two + 4 * hbit, 4)
                i = g2 % 16
                base = p2 + r2 * s2 + blk * 12
                low4 = tl.load(base + i % 8).to(tl.int32)
                low4 = tl.where(i < 8, low4 & 0xF, low4 >> 4)
                high2 = (tl.load(base + 8 + i % 4).to(tl.int32) >> (2 * (i // 4))) & 3
                scale = tl.load(p3 + r2 * s3 + blk).to(tl.float32) * ((low4 | (high2 << 4)) - 32).to(tl.float32)
                offset = tl.zeros_like(scale)
    else:
        tl.static_assert(QTYPE == IQ4_XS, "unsupported QTYPE")
        blk3 = g3 // 8
        nib = (tl.load(p0 + r3 * s0 + blk3 * 128 + (g3 % 8) * 16 + j % 16).to(tl.int32) >> ((j // 16) * 4)) & 0xF
        q = tl.load(table + nib)
        blk = g2 // 8
        ib = g2 % 8
        low = (tl.load(p1 + r2 * s1 + blk * 4 + ib // 2).to(tl.int32) >> (4 * (ib % 2))) & 0xF
        high = (tl.load(p2 + r2 * s2 + blk).to(tl.int32) >> (2 * ib)) & 3
        scale = tl.load(p3 + r2 * s3 + blk).to(tl.float32) * ((low | (high << 4)) - 32).to(tl.float32)
        offset = tl.zeros_like(scale)
    return q, scale, offset


@triton.jit
def _store_split(y_ptrs, out, mask, partial_ptr, offs, n_partial, count_ptr, slot, split, SPLIT_K: tl.constexpr):
    """Store `out`, one of SPLIT_K partial sums of a tile, into y. Without a split, directly. Otherwise each program
    stores its partial (at offs of its split's n_partial floats); the last of the tile's programs to finish (counted in
    count_ptr[slot], which it resets to 0 for the next launch) adds the partials in split order, so the result does
    not depend on which program ran first (reproducible, unlike atomic float adds)."""
    if SPLIT_K == 1:
        tl.store(y_ptrs, out, mask=mask)
    else:
        tl.store(partial_ptr + split * n_partial + offs, out)
        tl.debug_barrier()  # every thread's partial is written before the count says so
        if tl.atomic_add(count_ptr + slot, 1, sem="acq_rel") == SPLIT_K - 1:
            total = tl.zeros_like(out)
            for s in range(SPLIT_K):
                total += tl.load(partial_ptr + s * n_partial + offs, cache_modifier=".cg")
            tl.store(y_ptrs, total, mask=mask)
            tl.atomic_xchg(count_ptr + slot, 0)


@triton.jit
def gemv_kernel(
    x_ptr, y_ptr, N, K, partial_ptr, count_ptr,
    p0, p1, p2, p3, s0, s1, s2, s3, table,
    QTYPE: tl.constexpr, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """y[n] = sum_k x[k] * W[n, k] for one float32 row x (decode). Programs: (row tiles, SPLIT_K ranges of K).
    The K loop is not software-pipelined: Triton does that for loads feeding no tl.dot only when the loop carries
    num_stages (tl.range), and 2-8 stages measured slower on the H200 (docs/GPU.md, session 4)."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1)  # clamped: out-of-range rows compute garbage that is never stored
    G: tl.constexpr = BLOCK_K // GS
    acc = tl.zeros([BLOCK_N, G], dtype=tl.float32)
    k_len = K // SPLIT_K  # a multiple of BLOCK_K (linear.py chooses SPLIT_K so)
    for k0 in range(split * k_len, split * k_len + k_len, BLOCK_K):
        x = tl.load(x_ptr + k0 + tl.arange(0, G)[:, None] * GS + tl.arange(0, GS)[None, :])
        q, scale, offset = _dequant(p0, p1, p2, p3, s0, s1, s2, s3, table, rows, k0 // GS, G, QTYPE, GS)
        acc += scale * tl.sum(q * x[None, :, :], axis=2) + offset * tl.sum(x, axis=1)[None, :]
    _store_split(y_ptr + rn, tl.sum(acc, axis=1), rn < N, partial_ptr, rn, tl.num_programs(0) * BLOCK_N,
                 count_ptr, pid_n, split, SPLIT_K)  # fmt: skip


@triton.jit
def _move_bits(v, FROM: tl.constexpr, TO: tl.constexpr):
    """v shifted so that its bit FROM lands on bit TO (the caller masks off what else moves in, sign bits included)."""
    if FROM <= TO:
        moved = v << (TO - FROM)
    else:
        moved = v >> (FROM - TO)
    return moved


@triton.jit
def _mantissa_product(
    low, high, x_at, lane_rows, SHIFT: tl.constexpr, HIGH_BITS: tl.constexpr, scale, mins, ZERO: tl.constexpr,
):  # fmt: skip
    """scale * sum((q - ZERO) x) - mins * sum(x) for each int32 word of packed quants (Q4_K: ZERO = 0; Q6_K: ZERO = 32
    and no mins, `mins` unused), its 4 values q having B = 4 + HIGH_BITS bits: the low 4 at bits SHIFT + 8 b of `low`
    (b = 0..3), the others (if any) at the same bits of `high`. x_at: x in nibble order for b = 0 (b's values 4 b
    further on). x_at is broadcast against lane_rows (the rows the lanes hold) before loading: so Triton gives the x
    loads the words' layout (a [1, ...] x tile got a layout of its own, and every product tile was converted through
    shared memory each step).
    q + 2**B as a float is (q << (23 - B)) | 0x3F800000 read as a float, i.e. 1 + q / 2**B: shifts and a LOP3 per value,
    no float subtraction (_exact_float needs one more); sum(q x) = 2**B (sum((1 + q / 2**B) x) - sum(x)) is folded into
    the two coefficients. The result differs from the exact decode's by float rounding only (relative ~2e-7)."""
    x_at, _ = tl.broadcast(x_at, lane_rows)
    xsum = tl.zeros(low.shape, dtype=tl.float32)
    dot = tl.zeros(low.shape, dtype=tl.float32)
    LOW_AT: tl.constexpr = 19 - HIGH_BITS  # the value's bit 0 in the mantissa
    for b in tl.static_range(4):
        xv = tl.load(x_at + 4 * b)
        mantissa = _move_bits(low, SHIFT + 8 * b, LOW_AT) & (0xF << LOW_AT)
        if HIGH_BITS > 0:
            mantissa |= _move_bits(high, SHIFT + 8 * b, LOW_AT + 4) & (((1 << HIGH_BITS) - 1) << (LOW_AT + 4))
        dot += (mantissa | 0x3F800000).to(tl.float32, bitcast=True) * xv
        xsum += xv
    unit: tl.constexpr = 1 << (4 + HIGH_BITS)
    if ZERO == 0:
        x_coef = unit * scale + mins
    else:
        x_coef = (unit + ZERO) * scale  # a constant times scale: no add of a zero mins
    return (unit * scale) * dot - x_coef * xsum


@triton.jit
def q4k_gemv_kernel(
    xp, y_ptr, N, K, qs, dm, sc, s_qs, s_dm, s_sc, partial_ptr, count_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """y[n] = sum_k x[k] * W[n, k] for one float32 row x and a Q4_K weight (decode), over its planes read as int32
    words: qs 32 words per 256-block, sc (the 12 packed scale bytes) 3, dm (d, dmin) 1. xp is x in nibble order: per
    16 values, the 4 x 4 transpose (xp[16 h + 4 b + u] = x[16 h + 4 u + b]), so that the b-th nibbles of the 4 words a
    thread holds meet 4 consecutive x values (one vector load). Tile [BLOCK_N rows, NB blocks, 4 chunks, 8 words]; Triton
    puts 2 lanes on a chunk's 8 words (16 bytes each) and the rest on rows. Chunk c's low nibbles are sub-block 2c, its
    high nibbles 2c + 1. Nothing is reduced inside the K loop. Programs: (row tiles, SPLIT_K ranges of K).
    Why this shape: one 16-byte load gives 32 weights decoded in place (no reshape, which Triton routes through shared
    memory), scales come as words instead of byte gathers, and the short programs keep many loads in flight
    (H200: 14336x4096 25.8 µs against 35.5 for gemv_kernel, docs/GPU.md session 5)."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r4 = tl.minimum(rn, N - 1).to(tl.int64)[:, None, None, None]  # clamped: rows past N are never stored
    NB: tl.constexpr = BLOCK_K // 256
    nb = tl.arange(0, NB)[None, :, None, None]
    cc = tl.arange(0, 4)[None, None, :, None]
    w = tl.arange(0, 8)[None, None, None, :]
    acc = tl.zeros([BLOCK_N, NB, 4, 8], dtype=tl.float32)
    k_len = K // SPLIT_K  # a multiple of BLOCK_K (linear.py chooses SPLIT_K so)
    for k0 in range(split * k_len, split * k_len + k_len, BLOCK_K):
        blk = k0 // 256 + nb
        words = tl.load(qs + r4 * s_qs + blk * 32 + cc * 8 + w)
        scales = sc + r4 * s_sc + blk * 3
        w0, w1, w2 = tl.load(scales), tl.load(scales + 1), tl.load(scales + 2)
        dmw = tl.load(dm + r4 * s_dm + blk)  # d in the low half, dmin in the high half
        d = (dmw & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        dmin = (dmw >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        sc_lo, mn_lo = _k4_scale_min_words(w0, w1, w2, 2 * cc)
        sc_hi, mn_hi = _k4_scale_min_words(w0, w1, w2, 2 * cc + 1)
        x_at = xp + (blk * 8 + cc * 2) * 32 + (w // 4) * 16 + w % 4
        acc += _mantissa_product(words, words, x_at, r4, 0, 0, d * sc_lo, dmin * mn_lo, 0)
        acc += _mantissa_product(words, words, x_at + 32, r4, 4, 0, d * sc_hi, dmin * mn_hi, 0)
    out = tl.sum(tl.sum(tl.sum(acc, axis=3), axis=2), axis=1)
    _store_split(y_ptr + rn, out, rn < N, partial_ptr, rn, tl.num_programs(0) * BLOCK_N, count_ptr, pid_n, split, SPLIT_K)


@triton.jit
def q6k_gemv_kernel(
    xp, y_ptr, N, K, ql, qh, sc, d_ptr, s_ql, s_qh, s_sc, s_d, partial_ptr, count_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """q4k_gemv_kernel's design for Q6_K (same x order, same programs): ql as 32 int32 words per 256-block, qh as 16,
    the 16 int8 scales as 4, d fp16. Tile [BLOCK_N rows, NB blocks, 2 halves, 2 ql runs, 8 words]: byte l (0..31) of
    run p of half h holds value h 128 + 32 p + l in its low nibble and h 128 + 32 (p + 2) + l in its high one; byte l of
    the half's qh run has their high bits at 2 p and 2 p + 4; the scale of 16 values is int8 number 8 h + 2 quarter +
    l // 16. H200: 14336x4096 30.8 µs against 61.2 for gemv_kernel (docs/GPU.md session 5)."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r5 = tl.minimum(rn, N - 1).to(tl.int64)[:, None, None, None, None]  # clamped: rows past N are never stored
    NB: tl.constexpr = BLOCK_K // 256
    nb = tl.arange(0, NB)[None, :, None, None, None]
    h = tl.arange(0, 2)[None, None, :, None, None]
    p = tl.arange(0, 2)[None, None, None, :, None]
    w = tl.arange(0, 8)[None, None, None, None, :]
    byte = (2 * p + w // 4) * 8  # the scale's byte in its word: quarter p (low nibbles) or p + 2 (high), l // 16
    acc = tl.zeros([BLOCK_N, NB, 2, 2, 8], dtype=tl.float32)
    k_len = K // SPLIT_K  # a multiple of BLOCK_K (linear.py chooses SPLIT_K so)
    for k0 in range(split * k_len, split * k_len + k_len, BLOCK_K):
        blk = k0 // 256 + nb
        low_words = tl.load(ql + r5 * s_ql + blk * 32 + h * 16 + p * 8 + w)
        qh_at, _ = tl.broadcast(qh + r5 * s_qh + blk * 16 + h * 8 + w, low_words)  # the words' layout (see x_at)
        high_words = tl.load(qh_at) >> (2 * p)
        scales = sc + r5 * s_sc + blk * 4 + h * 2
        sc_lo = _exact_float(((tl.load(scales) >> byte) & 0xFF) ^ 0x80, 128)  # int8 s: (s & 0xFF) ^ 0x80 = s + 128
        sc_hi = _exact_float(((tl.load(scales + 1) >> byte) & 0xFF) ^ 0x80, 128)
        d = tl.load(d_ptr + r5 * s_d + blk).to(tl.float32)
        x_at = xp + blk * 256 + h * 128 + p * 32 + (w // 4) * 16 + w % 4
        acc += _mantissa_product(low_words, high_words, x_at, r5, 0, 2, d * sc_lo, d, 32)
        acc += _mantissa_product(low_words, high_words, x_at + 64, r5, 4, 2, d * sc_hi, d, 32)
    out = tl.sum(tl.sum(tl.sum(tl.sum(acc, axis=4), axis=3), axis=2), axis=1)
    _store_split(y_ptr + rn, out, rn < N, partial_ptr, rn, tl.num_programs(0) * BLOCK_N, count_ptr, pid_n, split, SPLIT_K)


@triton.jit
def gemm_kernel(
    x_ptr, y_ptr, M, N, K, stride_xm, stride_ym, partial_ptr, count_ptr,
    p0, p1, p2, p3, s0, s1, s2, s3, table,
    QTYPE: tl.constexpr, GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):  # fmt: skip
    """y = x @ W.T with fp16 x (M >= 2), weights dequantized to fp16 tile by tile, fp32 accumulation on tensor cores.
    Programs: (row tiles of W, tiles of x's rows, SPLIT_K ranges of K)."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    split = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.minimum(rn, N - 1)
    G: tl.constexpr = BLOCK_K // GS
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_len = K // SPLIT_K
    for k0 in range(split * k_len, split * k_len + k_len, BLOCK_K):
        x = tl.load(x_rows + k0 + tl.arange(0, BLOCK_K)[None, :], mask=rm[:, None] < M, other=0.0)
        q, scale, offset = _dequant(p0, p1, p2, p3, s0, s1, s2, s3, table, rows, k0 // GS, G, QTYPE, GS)
        w = tl.reshape(q * scale[:, :, None] + offset[:, :, None], [BLOCK_N, BLOCK_K]).to(tl.float16)
        acc = tl.dot(x, tl.trans(w), acc)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    slot = pid_m * tl.num_programs(0) + pid_n
    local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    _store_split(y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :], acc, mask, partial_ptr,
                 slot * (BLOCK_M * BLOCK_N) + local, tl.num_programs(0) * tl.num_programs(1) * (BLOCK_M * BLOCK_N),
                 count_ptr, slot, split, SPLIT_K)  # fmt: skip


@triton.jit
def dequant_kernel(
    w_ptr, N, K,
    p0, p1, p2, p3, s0, s1, s2, s3, table,
    QTYPE: tl.constexpr, GS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """W[n, k] as fp16 (N, K), for prefill through a library matmul."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
    G: tl.constexpr = BLOCK_K // GS
    q, scale, offset = _dequant(p0, p1, p2, p3, s0, s1, s2, s3, table, tl.minimum(rn, N - 1), k0 // GS, G, QTYPE, GS)
    w = tl.reshape(q * scale[:, :, None] + offset[:, :, None], [BLOCK_N, BLOCK_K]).to(tl.float16)
    cols = k0 + tl.arange(0, BLOCK_K)
    tl.store(w_ptr + rn.to(tl.int64)[:, None] * K + cols[None, :], w, mask=rn[:, None] < N)
