"""kamado/kernels/ggml_order.py against scalar transcriptions of ggml-cpu's loops (benchmarks/parity/kquants.c),
written here block byte by block byte, on small random blocks."""

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels.ggml_order import OrderedProduct

F = np.float32


def fmaf(a, b, c):
    return F(np.float64(a) * np.float64(b) + np.float64(c))


def f16(raw, at):
    return F(raw[at : at + 2].view(np.float16)[0])


def hsum8(a):
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))


def q8_0(x):
    """quantize_row_q8_0 (AVX): per 32, d = fp16(amax / 127), q = round-half-even(x * (127 / amax))."""
    q, d = [], []
    for b in range(len(x) // 32):
        blk = x[32 * b : 32 * b + 32]
        amax = F(np.abs(blk).max())
        d.append(F(np.float16(amax / F(127))))
        inv = F(127) / amax if amax else F(0)
        q += [int(np.rint(F(v * inv))) for v in blk]
    return q, d


def q8_k(x):
    """quantize_row_q8_K_ref: per 256, iscale = -127 / (signed value of largest magnitude), q = min(127, round), d = 1 / iscale."""
    q, d = [], []
    for b in range(len(x) // 256):
        blk = x[256 * b : 256 * b + 256]
        peak = blk[int(np.argmax(np.abs(blk)))]
        iscale = F(-127) / peak
        q += [min(127, int(np.rint(F(iscale * v)))) for v in blk]
        d.append(F(1) / iscale)
    return q, d


def legacy_weight(raw, qtype):
    """(d, 32 signed quants) of one Q4_0 / Q5_0 / Q8_0 block."""
    d = f16(raw, 0)
    if qtype == T.Q8_0:
        return d, [int(v) for v in raw[2:34].view(np.int8)]
    if qtype == T.Q4_0:
        return d, [int(raw[2 + j % 16] >> (4 * (j >= 16)) & 0xF) - 8 for j in range(32)]
    qh = int(raw[2:6].view(np.uint32)[0])
    return d, [(int(raw[6 + j % 16] >> (4 * (j >= 16)) & 0xF) | ((qh >> j) & 1) << 4) - 16 for j in range(32)]


def legacy_dot(x, row, qtype, size):
    """8 lanes: lane l = int dot of elements 4l..4l+3 of each block; acc[l] = fma(d_w * d_x, dot, acc[l])."""
    xq, xd = q8_0(x)
    acc = [F(0)] * 8
    for b in range(len(xd)):
        d, w = legacy_weight(row[b * size : (b + 1) * size], qtype)
        for lane in range(8):
            dot = sum(w[e] * xq[32 * b + e] for e in range(4 * lane, 4 * lane + 4))
            acc[lane] = fmaf(F(d * xd[b]), dot, acc[lane])
    return hsum8(acc)


def scale_min_k4(s):
    sc = [s[j] & 63 if j < 4 else (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4) for j in range(8)]
    mn = [s[j + 4] & 63 if j < 4 else (s[j + 4] >> 4) | ((s[j] >> 6) << 4) for j in range(8)]
    return [int(v) for v in sc], [int(v) for v in mn]


def q4k_dot(x, row, gemm):
    """GEMM: acc = fma(pair sum of sc * dot, d_w * d_x, acc) per pair of sub-blocks, mins alike into acc_min;
    GEMV: the same per super-block."""
    xq, xd = q8_k(x)
    acc = acc_min = F(0)
    for i in range(len(xd)):
        blk = row[144 * i : 144 * (i + 1)]
        sc, mn = scale_min_k4(blk[4:16])
        dots, sums = [], []
        for s in range(8):
            qs = [int(blk[16 + 32 * (s // 2) + e]) >> (4 * (s % 2)) & 0xF for e in range(32)]
            a = xq[256 * i + 32 * s : 256 * i + 32 * s + 32]
            dots.append(sum(q * v for q, v in zip(qs, a)))
            sums.append(sum(a))
        groups = [(2 * p, 2 * p + 2) for p in range(4)] if gemm else [(0, 8)]
        for lo, hi in groups:
            acc = fmaf(F(sum(sc[s] * dots[s] for s in range(lo, hi))), F(f16(blk, 0) * xd[i]), acc)
            acc_min = fmaf(F(sum(mn[s] * sums[s] for s in range(lo, hi))), F(f16(blk, 2) * xd[i]), acc_min)
    return F(acc - acc_min)


def q6k_dot(x, row):
    """AVX2: unsigned quants; lane k = elements 4k..4k+3 of every 32, minus 32 * (bsums[2k] sc[2k] + bsums[2k+1] sc[2k+1])."""
    xq, xd = q8_k(x)
    acc = [F(0)] * 8
    for i in range(len(xd)):
        blk = row[210 * i : 210 * (i + 1)]
        scales = [int(v) for v in blk[192:208].view(np.int8)]
        a = xq[256 * i : 256 * (i + 1)]
        sumi = [0] * 8
        for e in range(256):
            j, c, t = e // 128, (e % 128) // 32, e % 32
            low = int(blk[64 * j + 32 * (c % 2) + t]) >> (4 * (c // 2)) & 0xF
            high = int(blk[128 + 32 * j + t]) >> (2 * c) & 3
            sumi[(e % 32) // 4] += scales[e // 16] * (low | high << 4) * a[e]
        for k in range(8):
            bsum = [sum(a[16 * g : 16 * g + 16]) for g in (2 * k, 2 * k + 1)]
            sumi[k] -= 32 * (bsum[0] * scales[2 * k] + bsum[1] * scales[2 * k + 1])
            acc[k] = fmaf(F(xd[i] * f16(blk, 208)), F(sumi[k]), acc[k])
    return hsum8(acc)


def random_rows(rng, n, n_blocks, size, f16_at):
    """Random block bytes with finite, moderate fp16 fields at the given offsets."""
    raw = rng.integers(0, 256, (n, n_blocks, size), dtype=np.uint8)
    for at in f16_at:
        raw[:, :, at : at + 2] = rng.uniform(0.001, 0.02, (n, n_blocks, 1)).astype(np.float16).view(np.uint8)
    return raw.reshape(n, -1)


def heavy_tailed(rng, m, k):
    x = (rng.standard_normal((m, k)) * rng.uniform(0, 3, (m, k)) ** 3).astype(F)
    x[0, :40] = 0  # a zero q8_0 block and a partly zero q8_K block
    return x


@pytest.mark.parametrize("qtype,size", [(T.Q4_0, 18), (T.Q5_0, 22), (T.Q8_0, 34)])
def test_legacy_products_follow_the_8_lane_order(qtype, size):
    rng = np.random.default_rng(int(qtype))
    raw, x = random_rows(rng, 3, 4, size, [0]), heavy_tailed(rng, 5, 128)
    got = OrderedProduct(torch.from_numpy(raw), qtype)(torch.from_numpy(x)).numpy()
    want = [[legacy_dot(xr, wr, qtype, size) for wr in raw] for xr in x]
    np.testing.assert_array_equal(got, np.array(want, F))


def test_q4_k_takes_the_gemm_order_on_groups_of_4_rows_and_the_gemv_order_on_the_rest():
    rng = np.random.default_rng(12)
    raw, x = random_rows(rng, 6, 4, 144, [0, 2]), heavy_tailed(rng, 7, 1024)
    got = OrderedProduct(torch.from_numpy(raw), T.Q4_K)(torch.from_numpy(x)).numpy()
    want = [[q4k_dot(xr, wr, gemm=m < 4) for wr in raw] for m, xr in enumerate(x)]
    np.testing.assert_array_equal(got, np.array(want, F))
    one = OrderedProduct(torch.from_numpy(raw), T.Q4_K)(torch.from_numpy(x[:1])).numpy()
    np.testing.assert_array_equal(one[0], np.array([q4k_dot(x[0], wr, gemm=False) for wr in raw], F))


def test_q6_k_follows_the_avx2_unsigned_lane_order():
    rng = np.random.default_rng(14)
    raw, x = random_rows(rng, 3, 2, 210, [208]), heavy_tailed(rng, 3, 512)
    got = OrderedProduct(torch.from_numpy(raw), T.Q6_K)(torch.from_numpy(x)).numpy()
    want = [[q6k_dot(xr, wr) for wr in raw] for xr in x]
    np.testing.assert_array_equal(got, np.array(want, F))


def test_the_ggml_heads_best_outputs_come_in_the_8_lane_order_the_rest_as_the_plain_product():
    from kamado.kernels.activations import round_q8_0
    from kamado.kernels.linear import QuantTensor, ReferenceLinear, make_linear

    rng = np.random.default_rng(16)
    raw = random_rows(rng, 300, 4, 34, [0])
    raw[7] = raw[3]  # two equal rows: a tie for the best logit that only the order can break alike
    x = torch.from_numpy(heavy_tailed(rng, 3, 128))
    tensor = QuantTensor("output.weight", T.Q8_0, (300, 128), torch.from_numpy(raw))
    got = make_linear(tensor, "ggml", logits=True)(x)
    ordered = OrderedProduct(tensor.raw, T.Q8_0)(x)
    plain = ReferenceLinear(tensor)(round_q8_0(x))  # ggml's rounding of x, then the float32 product
    near = got >= got.max(-1, keepdim=True).values - 0.01
    assert near.sum() >= 3
    np.testing.assert_array_equal(got[near].numpy(), ordered[near].numpy())
    np.testing.assert_array_equal(got[~near].numpy(), plain[~near].numpy())
