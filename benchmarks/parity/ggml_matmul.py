"""llama.cpp's CPU matrix products with a quantized weight, reproduced operation by operation.

Why: with 8-bit activation rounding in every product, a difference in the last bit of one float32 partial sum
flips a rounding downstream; the flips compound over the layers until the logits differ by 0.1-2 (docs/NUMERICS.md).
Rounding the activations as ggml does (kamado.kernels.activations) is therefore not enough: the float32 operations
that combine the exact integer block dot products must also happen in ggml's order. Which kernel runs, on an x86 CPU
with AVX-512 VNNI and AMX-INT8 (a native build, ggml-cpu/amx and ggml-cpu/arch/x86):

  AMX extra buffer (Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS weights with out_features % 32 == 0 and in_features a
  multiple of the block): one float32 accumulator per output, over the blocks in order:
      Q8_0 / Q4_0:  C = fma(float(int dot of block b), d_w[b] * d_x[b], C)
      Q4_K / Q5_K:  per 256-block, Sumi = sum_g scale_g * (int dot of group g) (exact int32),
                    mins = sum_g min_g * (sum of the 32 activation quants of group g);
                    C = fma(float(Sumi), d_x * d_w, C); C = fma(float(mins), -(d_x * dmin_w), C)
      Q6_K:         Sumi = sum over 16 groups of 16 of scale_g * (int dot with q - 32); C = fma(float(Sumi), d_x * d_w, C)
    (tinygemm_kernel_amx for several rows, tinygemm_kernel_vnni for one row: the same arithmetic.)
  Everything else with Q8_0 activations (Q5_0 here; also Q4_0/Q8_0 outside AMX's conditions): ggml_vec_dot_*_q8_0
  and llamafile's tinyBLAS_Q0_AVX both keep 8 float32 lanes, lane j holding the int dot of elements 4j..4j+3 of
  each block: acc[j] = fma(d_w[b] * d_x[b], float(P[b, j]), acc[j]), then the horizontal sum
  ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)).
fma is emulated in float64 (the product of two float32 is exact there; the sum is rounded twice, first to 53 bits,
which differs from one rounding only when the exact sum falls within 2^-29 of a float32 tie).
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels.activations import quantize_q8_0, quantize_q8_k
from kamado.quants import kquants

AMX_TYPES = {T.Q4_0, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K}  # Q4_1 and IQ4_XS also run on AMX but are not emulated here
LANE_TYPES = {T.Q4_0, T.Q5_0, T.Q8_0}
K_TYPES = {T.Q4_K, T.Q5_K, T.Q6_K}
# Output rows computed at once: bounds the (blocks, rows, outputs) integer-dot scratch to a few hundred MiB.
OUTPUT_CHUNK_ELEMENTS = 1 << 25


def runs_on_amx(qtype: T, out_features: int, in_features: int) -> bool:
    """ggml-cpu/amx/amx.cpp supports_op: AMX kernel, 32-aligned outputs, whole blocks along the input."""
    block = 256 if qtype in K_TYPES else 32
    return qtype in AMX_TYPES and out_features % 32 == 0 and in_features % block == 0


def emulated(qtype: T, out_features: int, in_features: int) -> bool:
    return runs_on_amx(qtype, out_features, in_features) or qtype in LANE_TYPES


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add (see the module note on its one double rounding)."""
    return (a.double() * b.double() + c.double()).float()


# ---------------------------------------------------------------- weights, as ints and scales


def _f16(b: np.ndarray, at: int) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(b[..., at : at + 2]).view(np.float16)[..., 0].astype(np.float32))


def _legacy_parts(raw: np.ndarray, qtype: T) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0/Q5_0/Q8_0 rows (N, row_bytes) -> signed quants int8 (N, B, 32), d float32 (N, B)."""
    n = raw.shape[0]
    if qtype == T.Q8_0:
        b = raw.reshape(n, -1, 34)
        q = b[..., 2:].view(np.int8)
    elif qtype == T.Q4_0:
        b = raw.reshape(n, -1, 18)
        q = np.concatenate([b[..., 2:] & 0xF, b[..., 2:] >> 4], axis=-1).astype(np.int8) - 8
    else:  # Q5_0: d, qh (32 high bits), 16 bytes of nibbles
        b = raw.reshape(n, -1, 22)
        qh = b[..., 2:6].copy().view("<u4")[..., 0]
        high = (qh[..., None] >> np.arange(32, dtype=np.uint32)) & 1
        low = np.concatenate([b[..., 6:] & 0xF, b[..., 6:] >> 4], axis=-1)
        q = (low | (high.astype(np.uint8) << 4)).astype(np.int8) - 16
    return torch.from_numpy(np.ascontiguousarray(q)), _f16(b, 0)


def _q45k_parts(raw: np.ndarray, qtype: T):
    """Q4_K/Q5_K -> quants uint8 (N, S, 8, 32), scales and mins int (N, S, 8), d and dmin (N, S)."""
    n = raw.shape[0]
    size = 144 if qtype == T.Q4_K else 176
    b = raw.reshape(-1, size)
    if qtype == T.Q4_K:
        q = kquants._nibbles(b[:, 16:], 32)
    else:
        high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
        q = kquants._nibbles(b[:, 48:], 32) | (high << 4)
    sc, mn = kquants.unpack_scale_min_k4(b[:, 4:16])
    s = b.shape[0] // n
    parts = (q.reshape(n, s, 8, 32), sc.reshape(n, s, 8), mn.reshape(n, s, 8))
    q, sc, mn = (torch.from_numpy(np.ascontiguousarray(p)) for p in parts)
    return q, sc.to(torch.int32), mn.to(torch.int32), _f16(b, 0).reshape(n, s), _f16(b, 2).reshape(n, s)


def _q6k_parts(raw: np.ndarray):
    """Q6_K -> signed quants int8 (N, S, 16, 16) (q - 32), scales int (N, S, 16), d (N, S)."""
    n = raw.shape[0]
    b = raw.reshape(-1, 210)
    nb = len(b)
    low = kquants._nibbles(b[:, :128], 32).reshape(nb, 2, 2, 2, 32).transpose(0, 1, 3, 2, 4).reshape(nb, 2, 4, 32)
    high = (b[:, 128:192].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(n, nb // n, 16, 16)
    sc = b[:, 192:208].view(np.int8).reshape(n, nb // n, 16)
    return torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(sc.astype(np.int32)), _f16(b, 208).reshape(n, nb // n)


# ---------------------------------------------------------------- the products


def _lane_product(xq, xd, wq, wd):
    """8-lane order (vec_dot_*_q8_0, tinyBLAS_Q0_AVX). xq (M, B, 32), wq (N, B, 32) -> (M, N)."""
    m, nblk = xq.shape[0], xq.shape[1]
    # P[b*8+j, m, n]: int dot of elements 4j..4j+3 of block b (|P| < 2^17: exact in float32)
    a = xq.reshape(m, nblk * 8, 4).transpose(0, 1)
    w = wq.float().reshape(wq.shape[0], nblk * 8, 4).permute(1, 2, 0)
    p = torch.bmm(a, w).reshape(nblk, 8, m, -1)
    scale = xd.t()[:, :, None] * wd.t()[:, None, :]  # (B, M, N): fp16 * fp16 is exact in float32
    acc = torch.zeros(8, m, wq.shape[0])
    for b in range(nblk):
        acc = fma(scale[b][None], p[b], acc)
    r = acc[:4] + acc[4:]
    return (r[0] + r[2]) + (r[1] + r[3])


def _serial_product(xq, xd, wq, wd):
    """AMX/VNNI order for Q8_0/Q4_0: one accumulator, blocks in order."""
    dots = torch.bmm(xq.transpose(0, 1), wq.float().permute(1, 2, 0))  # (B, M, N), exact ints
    scale = xd.t()[:, :, None] * wd.t()[:, None, :]
    c = torch.zeros(dots.shape[1:])
    for b in range(dots.shape[0]):
        c = fma(dots[b], scale[b], c)
    return c


def _q45k_product(xq, xd, parts):
    """AMX/VNNI order for Q4_K/Q5_K. xq (M, S, 256), xd (M, S)."""
    q, sc, mn, d, dmin = parts
    m, s = xq.shape[0], xq.shape[1]
    xg = xq.reshape(m, s, 8, 32).double()
    dots = torch.einsum("msgk,nsgk->smng", xg, q.double())  # exact in float64
    sumi = (dots * sc.permute(1, 0, 2).double()[:, None]).sum(-1)  # (S, M, N), exact
    bsum = xg.sum(-1)  # (M, S, 8)
    mins = torch.einsum("msg,nsg->smn", bsum, mn.double())
    c = torch.zeros(m, q.shape[0])
    for i in range(s):
        c = fma(sumi[i].float(), (xd[:, i, None] * d[None, :, i]), c)
        c = fma(mins[i].float(), -(xd[:, i, None] * dmin[None, :, i]), c)
    return c


def _q6k_product(xq, xd, parts):
    q, sc, d = parts
    m, s = xq.shape[0], xq.shape[1]
    xg = xq.reshape(m, s, 16, 16).double()
    dots = torch.einsum("msgk,nsgk->smng", xg, q.double())
    sumi = (dots * sc.permute(1, 0, 2).double()[:, None]).sum(-1)
    c = torch.zeros(m, q.shape[0])
    for i in range(s):
        c = fma(sumi[i].float(), (xd[:, i, None] * d[None, :, i]), c)
    return c


class GgmlProduct:
    """y = x @ W.T for a 2-D GGUF weight as llama.cpp's CPU backend computes it (types where `emulated` is true)."""

    def __init__(self, qtype: T, raw: torch.Tensor, shape: tuple[int, int]):
        self.qtype, (self.out_features, self.in_features) = qtype, shape
        self.amx = runs_on_amx(qtype, *shape)
        rows = np.asarray(raw.numpy()).reshape(shape[0], -1)
        if qtype in (T.Q4_K, T.Q5_K):
            self.parts = _q45k_parts(rows, qtype)
        elif qtype == T.Q6_K:
            self.parts = _q6k_parts(rows)
        else:
            self.parts = _legacy_parts(rows, qtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float()
        if self.qtype in K_TYPES:
            xq, xd = quantize_q8_k(x2)
            product = _q6k_product if self.qtype == T.Q6_K else _q45k_product
        else:
            xq, xd = quantize_q8_0(x2)
            product = _serial_product if self.amx else _lane_product
        step = max(16, OUTPUT_CHUNK_ELEMENTS // max(1, x2.shape[0] * self.in_features // 4))
        outs = []
        for a in range(0, self.out_features, step):
            if self.qtype in K_TYPES:
                outs.append(product(xq, xd, tuple(p[a : a + step] for p in self.parts)))
            else:
                wq, wd = self.parts
                outs.append(product(xq, xd, wq[a : a + step], wd[a : a + step]))
        return torch.cat(outs, dim=-1).reshape(*lead, self.out_features)
