"""ggml-cpu's quantized products in its own float order (x86, AVX2/AVX-512 without AMX), in torch.

The integer part of each product is exact in any order; the result depends on how the per-block float steps are
chained. ggml-cpu accumulates them with fused multiply-adds in a fixed lane structure, and this module chains them
the same way, vectorised over rows and outputs (only the chain over blocks is sequential). The orders were found
and checked against a local llama.cpp build (docs/NUMERICS.md, 2026-12-03; benchmarks/parity/kquants.c is their
scalar transcription): with them, kamado's 256-row forward pass of Gemma 3 270M reproduces llama-imatrix's sums.

  Q4_0 / Q5_0 / Q8_0 (tinyBLAS_Q0_AVX, vec_dot_*_q8_0): 8 float lanes; lane l holds the integer dot of elements
    4l..4l+3 of every 32-element block; acc[l] = fma(d_w * d_x, dot, acc[l]) block by block; then hsum8.
  Q4_K (CPU_REPACK q4_K_8x8_q8_K): groups of 4 rows take the GEMM order, one accumulator per output and one fma per
    pair of 32-element sub-blocks, mins in a second accumulator, acc - acc_min at the end; the remaining rows (and
    single rows) take the GEMV order, one fma per 256-element super-block.
  Q6_K (vec_dot_q6_K_q8_K, AVX2 branch): 6-bit quants taken unsigned (0..63); lane k sums elements 4k..4k+3 of
    every 32, minus 32 * the offset of elements 32k..32k+31 (q8_K block sums); acc[k] = fma(d, sumi[k], acc[k]).

fma(a, b, c) in float32 is computed as float32(float64(a) * float64(b) + float64(c)): every product here is exact in
float64, and the one double rounding of the sum can differ from a true fma only within 2^-29 of a float32 tie.
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels.activations import quantize_q8_0, quantize_q8_k
from kamado.quants import dequantize
from kamado.quants.kquants import unpack_scale_min_k4

LEGACY = {T.Q4_0: 18, T.Q5_0: 22, T.Q8_0: 34}  # block bytes; the fp16 d comes first
ORDERED = {*LEGACY, T.Q4_K, T.Q6_K}
_F16_ONE = np.array([1.0], np.float16).view(np.uint8)


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add (see the module docstring for the float64 emulation)."""
    return torch.addcmul(c.double(), a.double(), b.double()).float()


def hsum8(acc: torch.Tensor) -> torch.Tensor:
    """ggml's hsum_float_8 over the first axis (8 lanes): ((0+4)+(2+6)) + ((1+5)+(3+7))."""
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))


def _f16(blocks: np.ndarray, at: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0].astype(np.float32))


def _integer_values(raw: np.ndarray, qtype: T, unit: dict[int, np.ndarray]) -> torch.Tensor:
    """The quants of every block as float32 integers: the blocks dequantized with their scale fields set to 1."""
    blocks = raw.copy()
    for at, value in unit.items():
        blocks[..., at : at + len(value)] = value
    return torch.from_numpy(dequantize(blocks.reshape(raw.shape[0], -1), qtype))


class LegacyWeights:
    """Q4_0/Q5_0/Q8_0: signed quants (N, nb, 32) int8 and block scales d (N, nb)."""

    def __init__(self, raw: np.ndarray, qtype: T):
        n = raw.shape[0]
        blocks = raw.reshape(n, -1, LEGACY[qtype])
        self.d = _f16(blocks, 0)
        self.q = _integer_values(blocks, qtype, {0: _F16_ONE}).reshape(n, -1, 32).to(torch.int8)


# Lane dots held at once (float32 values): one product for all of a decode row's blocks, a few blocks at a time for
# many rows (kept in cache: taking all blocks of 256 rows at once was 6x slower than block by block)
DOTS = 1 << 19


def legacy_product(xq: torch.Tensor, xd: torch.Tensor, w: LegacyWeights) -> torch.Tensor:
    """x (M, nb, 32) int-valued q8_0 quants with scales xd (M, nb) times W -> (M, N) in the 8-lane order."""
    m, nb = xd.shape
    n = w.d.shape[0]
    xl, wl = xq.reshape(m, nb, 8, 4), w.q.reshape(n, nb, 8, 4).float()
    scale = xd.t()[:, :, None] * w.d.t()[:, None, :]  # d_x * d_w in float32, (nb, M, N)
    acc = torch.zeros(8, m, n, dtype=torch.float64)  # float32 values
    step = max(1, DOTS // (8 * m * n))  # blocks whose lane dots are taken in one product
    for b0 in range(0, nb, step):
        # every lane's integer dot, exact in float32 (4 products of at most 128 * 127), times d_x * d_w: exact in
        # float64; each block's fma(d, dot, acc) is then one float64 add rounded to float32 (module docstring)
        dots = torch.einsum("mbkj,nbkj->bkmn", xl[:, b0 : b0 + step], wl[:, b0 : b0 + step])
        for term in dots.double().mul_(scale[b0 : b0 + step, None].double()):
            acc = term.add_(acc).float().double()
    return hsum8(acc.float())


# 12 scale bytes that decode to sc = 1, min = 0 for all eight sub-blocks (get_scale_min_k4's layout)
_Q4K_UNIT_SCALES = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], np.uint8)


class Q4KWeights:
    """Q4_K: unsigned quants (N, nb, 8, 32), 6-bit scales and mins (N, nb, 8), d and dmin (N, nb)."""

    def __init__(self, raw: np.ndarray):
        n = raw.shape[0]
        blocks = raw.reshape(n, -1, 144)
        self.d, self.dmin = _f16(blocks, 0), _f16(blocks, 2)
        unit = {0: _F16_ONE, 2: np.zeros(2, np.uint8), 4: _Q4K_UNIT_SCALES}
        self.q = _integer_values(blocks, T.Q4_K, unit).reshape(n, -1, 8, 32).to(torch.int8)
        sc, mn = unpack_scale_min_k4(blocks[..., 4:16].reshape(-1, 12))
        self.sc = torch.from_numpy(sc.astype(np.float32)).reshape(n, -1, 8)
        self.mn = torch.from_numpy(mn.astype(np.float32)).reshape(n, -1, 8)


def q4k_product(xq: torch.Tensor, xd: torch.Tensor, w: Q4KWeights) -> torch.Tensor:
    """x (M, nb, 256) int-valued q8_K quants with scales xd (M, nb) times W -> (M, N): GEMM order on the first
    4 * (M // 4) rows, GEMV order on the rest."""
    m, nb = xd.shape
    n = w.d.shape[0]
    xs = xq.reshape(m, nb * 8, 32)
    # integer dots and block sums per 32-element sub-block: (nb * 8, M, N), exact in float32 (< 2^16 * 63)
    dots = torch.bmm(xs.transpose(0, 1), w.q.reshape(n, nb * 8, 32).permute(1, 2, 0).float()).reshape(nb, 8, m, n)
    sums = dots.double() * w.sc.permute(1, 2, 0)[:, :, None, :].double()
    mins = xs.sum(-1).transpose(0, 1).reshape(nb, 8, m, 1).double() * w.mn.permute(1, 2, 0)[:, :, None, :].double()
    scale, scale_min = xd.t()[:, :, None] * w.d.t()[:, None, :], xd.t()[:, :, None] * w.dmin.t()[:, None, :]
    g = m - m % 4
    out = torch.empty(m, n)
    if g:  # one fma per pair of sub-blocks (pair sums < 2^24: exact in float32)
        pairs = sums[:, :, :g].reshape(nb, 4, 2, g, n).sum(2).float()
        pair_mins = mins[:, :, :g].reshape(nb, 4, 2, g, n).sum(2).float()
        acc, acc_min = torch.zeros(g, n), torch.zeros(g, n)
        for i in range(nb):
            for p in range(4):
                acc = fma(pairs[i, p], scale[i, :g], acc)
                acc_min = fma(pair_mins[i, p], scale_min[i, :g], acc_min)
        out[:g] = acc - acc_min
    if g < m:  # one fma per super-block, its integer sum rounded to float32 once
        acc, acc_min = torch.zeros(m - g, n), torch.zeros(m - g, n)
        for i in range(nb):
            acc = fma(sums[i, :, g:].sum(0).float(), scale[i, g:], acc)
            acc_min = fma(mins[i, :, g:].sum(0).float(), scale_min[i, g:], acc_min)
        out[g:] = acc - acc_min
    return out


class Q6KWeights:
    """Q6_K: unsigned quants 0..63 times their sub-block scale, as (N, nb, 8 lanes, 32) in lane order; the int8
    scales (N, nb, 16) and d (N, nb)."""

    def __init__(self, raw: np.ndarray):
        n = raw.shape[0]
        blocks = raw.reshape(n, -1, 210)
        self.d = _f16(blocks, 208)
        unit = {192: np.ones(16, np.uint8), 208: _F16_ONE}
        unsigned = _integer_values(blocks, T.Q6_K, unit).reshape(n, -1, 16, 16) + 32
        self.scales = torch.from_numpy(blocks[..., 192:208].view(np.int8).astype(np.float32))
        scaled = (unsigned * self.scales[..., None]).reshape(n, -1, 8, 8, 4)  # [chunk c of 32][lane k][4 elements]
        self.lanes = scaled.transpose(2, 3).reshape(n, -1, 8, 32).to(torch.int16)  # |q * scale| <= 63 * 128


def q6k_product(xq: torch.Tensor, xd: torch.Tensor, w: Q6KWeights) -> torch.Tensor:
    """x (M, nb, 256) int-valued q8_K quants with scales xd (M, nb) times W -> (M, N) in the AVX2 lane order."""
    m, nb = xd.shape
    n = w.d.shape[0]
    xl = xq.reshape(m, nb, 8, 8, 4).transpose(2, 3).reshape(m, nb, 8, 32).double()
    bsums = xq.reshape(m, nb, 8, 2, 16).sum(-1).double()  # 16-element sums, paired as lane k's offset takes them
    acc = torch.zeros(8, m, n)
    for i in range(nb):
        dots = torch.bmm(xl[:, i].transpose(0, 1), w.lanes[:, i].permute(1, 2, 0).double())  # (8, M, N), exact in float64
        offset = torch.einsum("mkj,nkj->kmn", bsums[:, i], w.scales[:, i].reshape(n, 8, 2).double())
        acc = fma(xd[:, i, None] * w.d[None, :, i], (dots - 32 * offset).float(), acc)
    return hsum8(acc)


# Outputs computed at once for 64 rows or more: keeps each step's float64 lanes (8 x M x SLICE) in cache, 6x faster
# than whole tensors at 256 rows; fewer rows take proportionally more outputs at once (a decode row: 64 x SLICE), where
# the cost is the number of torch calls, not the cache.
SLICE = 128


def _rows(weights, a: int, b: int):
    """The same weights restricted to outputs a..b (every tensor field's first axis)."""
    part = object.__new__(type(weights))
    part.__dict__.update({k: v[a:b] for k, v in vars(weights).items()})
    return part


class OrderedProduct:
    """x (M, K) float32 -> x @ W.T (M, N) as ggml-cpu computes it, for a weight type in ORDERED."""

    def __init__(self, raw: torch.Tensor, qtype: T):
        self.qtype = qtype
        self._raw = raw
        self._weights = None

    def weights(self):
        """Unpacked on first use (quants as int8, Q6_K's scaled ones as int16: 1.5-2x the file size)."""
        if self._weights is None:
            raw = self._raw.numpy()
            q = self.qtype
            self._weights = LegacyWeights(raw, q) if q in LEGACY else Q4KWeights(raw) if q == T.Q4_K else Q6KWeights(raw)
        return self._weights

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        if self.qtype in LEGACY:
            (q, d), product = quantize_q8_0(x), legacy_product
        else:
            (q, d), product = quantize_q8_k(x), q4k_product if self.qtype == T.Q4_K else q6k_product
        n, step = w.d.shape[0], SLICE * max(1, 64 // max(1, len(x)))
        return torch.cat([product(q, d, _rows(w, a, min(n, a + step))) for a in range(0, n, step)], dim=-1)
