"""The 32-value block formats Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: byte-identical with ggml's quantizers.

Without importance weights these are ggml's quantize_row_*_ref; with them, quantize_row_*_impl
(make_qx_quants for Q4_0/Q5_0, make_qkx3_quants for Q4_1/Q5_1; Q8_0 ignores them). ggml computes in
float32 with no fused multiply-add, so the same float32 operations in the same order give the same
bits; sums that ggml accumulates in a loop are accumulated here in the same index order.
All blocks of all rows are processed at once (blocks x 32 arrays), never one block at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.quants.floats import div, f32_to_f16_bits, f32_to_f16_bits_torch, sqrt
from kamado.quants.floats import f16_bytes_to_f32 as _f16_to_f32
from kamado.quants.floats import f16_bytes_to_f32_torch as _t_f16
from kamado.quants.kquants import make_qx_quants, seq_sum, t_make_qx_quants, t_seq_sum

QK = 32
GROUP_MAX_EPS = np.float32(1e-15)
F32 = np.float32


# ---------------------------------------------------------------- shared helpers


def _f16_bytes(d: np.ndarray) -> np.ndarray:
    return f32_to_f16_bits(d).view(np.uint8).reshape(-1, 2)


def _first_absmax(b: np.ndarray, axis: int) -> np.ndarray:
    """The first value of largest magnitude along axis (ggml keeps the first on ties: `if (amax < fabsf(v))`)."""
    idx = np.expand_dims(np.abs(b).argmax(axis=axis), axis)
    return np.take_along_axis(b, idx, axis=axis).squeeze(axis)


def _reciprocal_or_zero(d: np.ndarray) -> np.ndarray:
    """`d ? 1.0f/d : 0.0f`, elementwise."""
    out = np.zeros_like(d)
    np.divide(F32(1), d, out=out, where=d != 0)
    return out


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """Values 0..15 (blocks, 32): byte j holds value j in its low nibble and value j+16 in its high one."""
    return q[:, :16] | (q[:, 16:] << np.uint8(4))


def _pack_high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of the 32 values (blocks, 32) as a little-endian uint32 (the qh field), as 4 bytes."""
    return np.packbits((q >> np.uint8(4)) & np.uint8(1), axis=1, bitorder="little")


def _row_sigma2(x: np.ndarray) -> np.ndarray:
    """ggml's sigma2 = (sum over the row of x*x, in order) / n_per_row, one per row."""
    sum_x2 = np.add.accumulate(x * x, axis=1)[:, -1] + F32(0)
    return sum_x2 / F32(x.shape[1])


def _importance(x: np.ndarray, imatrix: np.ndarray) -> np.ndarray:
    """Per-value weights of the *_impl quantizers: qw[j] * sqrtf(sigma2 + x[j]*x[j])."""
    sigma2 = _row_sigma2(x)[:, None]
    return imatrix[None, :] * np.sqrt(sigma2 + x * x)


def _blocks_t(a: np.ndarray) -> np.ndarray:
    """(rows, n) -> (32, blocks): block-major values transposed so in-block loops run over contiguous rows."""
    return np.ascontiguousarray(a.reshape(-1, QK).T)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C roundf (halves away from zero) on float32, exactly: trunc(v) plus the sign when |fraction| >= 0.5."""
    t = np.trunc(v)
    return t + np.trunc((v - t) * F32(2))


# ---------------------------------------------------------------- ggml's search routines


def _make_qkx3_quants(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml make_qkx3_quants(n=32, nmax, x, w, rmin=-0.9, rdelta=0.05, nstep=36, use_mad=false) for every block.

    x, w: (32, blocks). Returns (scale, min, L): ggml's `the_min` is -min; L (32, blocks) uint8 in 0..nmax.
    L is recomputed at the end from the (iscale, min) pair it was tried with (as kquants.make_qx_quants does).
    """
    rmin, rdelta, nstep = F32(-0.9), F32(0.05), 36
    fmax = F32(nmax)
    lo = x.min(axis=0)
    hi = x.max(axis=0)
    sum_w = seq_sum(w)
    sum_x = seq_sum(w * x)
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi <= lo
    level, wl, term = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    def levels(iscale, minimum, out):
        # ggml: v = iscale*(x - min); l = v > 0 ? nearest_int(MIN(v, nmax)) : 0 (the first pass clamps to
        # 0..nmax instead, which gives the same levels because x - min >= 0 there).
        np.subtract(x, minimum, out=out)
        out *= iscale
        np.copyto(out, F32(0), where=~(out > 0))
        np.minimum(out, fmax, out=out)
        return np.rint(out, out=out)

    def weighted_error(scale, minimum):
        np.multiply(scale, level, out=term)
        np.add(term, minimum, out=term)
        np.subtract(term, x, out=term)
        np.multiply(term, term, out=term)
        return seq_sum(np.multiply(w, term, out=term))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = fmax / (hi - lo)
        scale = F32(1) / iscale
        best_iscale, best_lo = iscale, lo
        levels(iscale, lo, level)
        best_mad = weighted_error(scale, lo)
        for step in range(nstep + 1):
            iscale = (rmin + rdelta * F32(step) + fmax) / (hi - lo)
            levels(iscale, lo, level)
            np.multiply(w, level, out=wl)
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(np.multiply(wl, level, out=term))
            sum_xl = seq_sum(np.multiply(wl, x, out=term))
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            mad = weighted_error(this_scale, this_min)
            better = (det > 0) & (mad < best_mad) & ~flat
            best_iscale = np.where(better, iscale, best_iscale)
            best_lo = np.where(better, lo, best_lo)
            best_mad = np.where(better, mad, best_mad)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
    levels(best_iscale, best_lo, level)
    level[:, flat] = F32(0)
    scale = np.where(flat, F32(0), scale)
    return scale, lo, level.astype(np.uint8)


# ---------------------------------------------------------------- quantizers


def _assemble(*fields: np.ndarray) -> np.ndarray:
    return np.concatenate(fields, axis=1)


def _symmetric_ref(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0/Q5_0 reference: d = max/-nmax, q = min(2*nmax-1, (int8)(x*id + nmax + 0.5))."""
    b = x.reshape(-1, QK)
    d = _first_absmax(b, axis=1) / F32(-nmax)
    q = b * _reciprocal_or_zero(d)[:, None] + F32(nmax + 0.5)
    return d, np.minimum(q.astype(np.uint8), np.uint8(2 * nmax - 1))


def _affine_ref(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1/Q5_1 reference: d = (max-min)/nmax, q = (uint8)((x-min)*id + 0.5).

    Q4_1 then clamps to 15; Q5_1 stores q unclamped and its packing keeps the five low bits, as ggml's does.
    """
    b = x.reshape(-1, QK)
    lo = b.min(axis=1)
    d = (b.max(axis=1) - lo) / F32(nmax)
    q = ((b - lo[:, None]) * _reciprocal_or_zero(d)[:, None] + F32(0.5)).astype(np.uint8)
    return d, lo, np.minimum(q, np.uint8(15)) if nmax == 15 else q


def _symmetric_impl(x: np.ndarray, imatrix: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    d, level = make_qx_quants(_blocks_t(x), nmax, _blocks_t(_importance(x, imatrix)))
    return d, np.ascontiguousarray(level.T.astype(np.uint8))


def _affine_impl(x: np.ndarray, imatrix: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, lo, level = _make_qkx3_quants(_blocks_t(x), _blocks_t(_importance(x, imatrix)), nmax)
    return d, lo, np.ascontiguousarray(level.T)


def _quantize_q4_0(x, imatrix):
    d, q = _symmetric_ref(x, 8) if imatrix is None else _symmetric_impl(x, imatrix, 8)
    return _assemble(_f16_bytes(d), _pack_nibbles(q)).reshape(x.shape[0], -1)


def _quantize_q5_0(x, imatrix):
    d, q = _symmetric_ref(x, 16) if imatrix is None else _symmetric_impl(x, imatrix, 16)
    return _assemble(_f16_bytes(d), _pack_high_bits(q), _pack_nibbles(q & np.uint8(15))).reshape(x.shape[0], -1)


def _quantize_q4_1(x, imatrix):
    d, lo, q = _affine_ref(x, 15) if imatrix is None else _affine_impl(x, imatrix, 15)
    return _assemble(_f16_bytes(d), _f16_bytes(lo), _pack_nibbles(q)).reshape(x.shape[0], -1)


def _quantize_q5_1(x, imatrix):
    d, lo, q = _affine_ref(x, 31) if imatrix is None else _affine_impl(x, imatrix, 31)
    return _assemble(_f16_bytes(d), _f16_bytes(lo), _pack_high_bits(q), _pack_nibbles(q & np.uint8(15))).reshape(x.shape[0], -1)


def _quantize_q8_0(x, imatrix):
    # ggml's quantize_q8_0 ignores importance weights.
    b = x.reshape(-1, QK)
    d = np.abs(b).max(axis=1) / F32(127)
    q = _round_half_away(b * _reciprocal_or_zero(d)[:, None]).astype(np.int8)
    return _assemble(_f16_bytes(d), q.view(np.uint8)).reshape(x.shape[0], -1)


# ---------------------------------------------------------------- quantizers (torch twins, any device)
# The same float32 operations in the same order as the numpy quantizers above; sums run in index order over
# the leading axis of (32, blocks) tensors, one elementwise add per term.


def _t_f16_bytes(d: torch.Tensor) -> torch.Tensor:
    return f32_to_f16_bits_torch(d).view(torch.uint8).reshape(-1, 2)


def _t_first_absmax(b: torch.Tensor, dim: int) -> torch.Tensor:
    idx = b.abs().argmax(dim=dim, keepdim=True)  # torch, like numpy, returns the first of equal maxima
    return torch.take_along_dim(b, idx, dim=dim).squeeze(dim)


def _t_reciprocal_or_zero(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d != 0, div(1, d), 0.0)


def _t_pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    return q[:, :16] | (q[:, 16:] << 4)


def _t_pack_high_bits(q: torch.Tensor) -> torch.Tensor:
    bits = ((q >> 4) & 1).to(torch.int32).reshape(len(q), 4, 8) << torch.arange(8, device=q.device, dtype=torch.int32)
    return bits.sum(dim=2).to(torch.uint8)


def _t_row_sigma2(x: torch.Tensor) -> torch.Tensor:
    return div(t_seq_sum((x * x).T), x.shape[1])


def _t_importance(x: torch.Tensor, imatrix: torch.Tensor) -> torch.Tensor:
    return imatrix[None, :] * sqrt(_t_row_sigma2(x)[:, None] + x * x)


def _t_blocks_t(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(-1, QK).T.contiguous()


def _t_round_half_away(v: torch.Tensor) -> torch.Tensor:
    t = torch.trunc(v)
    return t + torch.trunc((v - t) * 2.0)


def _t_make_qkx3_quants(x: torch.Tensor, w: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Torch twin of _make_qkx3_quants."""
    rmin, rdelta, nstep = F32(-0.9), F32(0.05), 36
    fmax = float(nmax)
    lo = x.amin(dim=0)
    hi = x.amax(dim=0)
    sum_w = t_seq_sum(w)
    sum_x = t_seq_sum(w * x)
    lo = torch.where(lo > 0, 0.0, lo)
    flat = hi <= lo

    def levels(iscale, minimum):
        v = (x - minimum) * iscale
        v = torch.where(v > 0, v, 0.0)
        return torch.round(torch.clamp_max(v, fmax))

    def weighted_error(scale, minimum, level):
        term = scale * level + minimum - x
        return t_seq_sum(w * (term * term))

    iscale = div(fmax, hi - lo)
    scale = div(1, iscale)
    best_iscale, best_lo = iscale, lo
    best_mad = weighted_error(scale, lo, levels(iscale, lo))
    for step in range(nstep + 1):
        iscale = div(rmin + rdelta * F32(step) + F32(fmax), hi - lo)
        level = levels(iscale, lo)
        wl = w * level
        sum_l = t_seq_sum(wl)
        sum_l2 = t_seq_sum(wl * level)
        sum_xl = t_seq_sum(wl * x)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = div(sum_w * sum_xl - sum_x * sum_l, det)
        this_min = div(sum_l2 * sum_x - sum_l * sum_xl, det)
        positive = this_min > 0
        this_min = torch.where(positive, 0.0, this_min)
        this_scale = torch.where(positive, div(sum_xl, sum_l2), this_scale)
        mad = weighted_error(this_scale, this_min, level)
        better = (det > 0) & (mad < best_mad) & ~flat
        best_iscale = torch.where(better, iscale, best_iscale)
        best_lo = torch.where(better, lo, best_lo)
        best_mad = torch.where(better, mad, best_mad)
        scale = torch.where(better, this_scale, scale)
        lo = torch.where(better, this_min, lo)
    level = levels(best_iscale, best_lo)
    level[:, flat] = 0.0
    scale = torch.where(flat, 0.0, scale)
    return scale, lo, level.to(torch.uint8)


def _t_symmetric_ref(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = x.reshape(-1, QK)
    d = div(_t_first_absmax(b, dim=1), F32(-nmax))
    q = b * _t_reciprocal_or_zero(d)[:, None] + float(nmax + 0.5)
    return d, torch.clamp_max(q.to(torch.int32), 2 * nmax - 1).to(torch.uint8)


def _t_affine_ref(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b = x.reshape(-1, QK)
    lo = b.amin(dim=1)
    d = div(b.amax(dim=1) - lo, F32(nmax))
    q = ((b - lo[:, None]) * _t_reciprocal_or_zero(d)[:, None] + 0.5).to(torch.int32)
    return d, lo, (torch.clamp_max(q, 15) if nmax == 15 else q & 0xFF).to(torch.uint8)


def _t_symmetric_impl(x, imatrix, nmax):
    d, level = t_make_qx_quants(_t_blocks_t(x), nmax, _t_blocks_t(_t_importance(x, imatrix)))
    level = level.to(torch.uint8)
    return d, level.T.contiguous()


def _t_affine_impl(x, imatrix, nmax):
    d, lo, level = _t_make_qkx3_quants(_t_blocks_t(x), _t_blocks_t(_t_importance(x, imatrix)), nmax)
    return d, lo, level.T.contiguous()


def _t_assemble(n_rows: int, *fields: torch.Tensor) -> torch.Tensor:
    return torch.cat(fields, dim=1).reshape(n_rows, -1)


def _t_quantize_q4_0(x, imatrix):
    d, q = _t_symmetric_ref(x, 8) if imatrix is None else _t_symmetric_impl(x, imatrix, 8)
    return _t_assemble(x.shape[0], _t_f16_bytes(d), _t_pack_nibbles(q))


def _t_quantize_q5_0(x, imatrix):
    d, q = _t_symmetric_ref(x, 16) if imatrix is None else _t_symmetric_impl(x, imatrix, 16)
    return _t_assemble(x.shape[0], _t_f16_bytes(d), _t_pack_high_bits(q), _t_pack_nibbles(q & 15))


def _t_quantize_q4_1(x, imatrix):
    d, lo, q = _t_affine_ref(x, 15) if imatrix is None else _t_affine_impl(x, imatrix, 15)
    return _t_assemble(x.shape[0], _t_f16_bytes(d), _t_f16_bytes(lo), _t_pack_nibbles(q))


def _t_quantize_q5_1(x, imatrix):
    d, lo, q = _t_affine_ref(x, 31) if imatrix is None else _t_affine_impl(x, imatrix, 31)
    return _t_assemble(x.shape[0], _t_f16_bytes(d), _t_f16_bytes(lo), _t_pack_high_bits(q), _t_pack_nibbles(q & 15))


def _t_quantize_q8_0(x, imatrix):
    b = x.reshape(-1, QK)
    d = div(b.abs().amax(dim=1), F32(127))
    q = _t_round_half_away(b * _t_reciprocal_or_zero(d)[:, None]).to(torch.int8)
    return _t_assemble(x.shape[0], _t_f16_bytes(d), q.view(torch.uint8))


# ---------------------------------------------------------------- dequantizers (numpy)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(blocks, 16) bytes -> (blocks, 32) values: low nibbles first, then high nibbles."""
    return np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """(blocks, 4) qh bytes -> (blocks, 32) values of bit 4 (0 or 16)."""
    return np.unpackbits(qh, axis=1, bitorder="little") << np.uint8(4)


def _blocks_of(raw: np.ndarray, type_size: int) -> np.ndarray:
    return np.ascontiguousarray(raw).reshape(-1, type_size)


def _dequantize_q4_0(raw):
    b = _blocks_of(raw, 18)
    q = _nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return (q.astype(np.float32) * _f16_to_f32(b[:, :2])).reshape(raw.shape[0], -1)


def _dequantize_q4_1(raw):
    b = _blocks_of(raw, 20)
    q = _nibbles(b[:, 4:]).astype(np.float32)
    return (q * _f16_to_f32(b[:, :2]) + _f16_to_f32(b[:, 2:4])).reshape(raw.shape[0], -1)


def _dequantize_q5_0(raw):
    b = _blocks_of(raw, 22)
    q = (_nibbles(b[:, 6:]) | _high_bits(b[:, 2:6])).astype(np.int8) - np.int8(16)
    return (q.astype(np.float32) * _f16_to_f32(b[:, :2])).reshape(raw.shape[0], -1)


def _dequantize_q5_1(raw):
    b = _blocks_of(raw, 24)
    q = (_nibbles(b[:, 8:]) | _high_bits(b[:, 4:8])).astype(np.float32)
    return (q * _f16_to_f32(b[:, :2]) + _f16_to_f32(b[:, 2:4])).reshape(raw.shape[0], -1)


def _dequantize_q8_0(raw):
    b = _blocks_of(raw, 34)
    q = b[:, 2:].view(np.int8).astype(np.float32)
    return (q * _f16_to_f32(b[:, :2])).reshape(raw.shape[0], -1)


# ---------------------------------------------------------------- dequantizers (torch, any device)


def _t_blocks(raw: torch.Tensor, type_size: int) -> torch.Tensor:
    return raw.contiguous().reshape(-1, type_size)


def _t_nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 15, qs >> 4], dim=1)


def _t_high_bits(qh: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, device=qh.device, dtype=torch.uint8)
    bits = (qh.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(qh.shape[0], 32) << 4


def _t_dequantize_q4_0(raw):
    b = _t_blocks(raw, 18)
    q = _t_nibbles(b[:, 2:]).to(torch.float32) - 8
    return (q * _t_f16(b[:, :2])).reshape(raw.shape[0], -1)


def _t_dequantize_q4_1(raw):
    b = _t_blocks(raw, 20)
    q = _t_nibbles(b[:, 4:]).to(torch.float32)
    return (q * _t_f16(b[:, :2]) + _t_f16(b[:, 2:4])).reshape(raw.shape[0], -1)


def _t_dequantize_q5_0(raw):
    b = _t_blocks(raw, 22)
    q = (_t_nibbles(b[:, 6:]) | _t_high_bits(b[:, 2:6])).to(torch.float32) - 16
    return (q * _t_f16(b[:, :2])).reshape(raw.shape[0], -1)


def _t_dequantize_q5_1(raw):
    b = _t_blocks(raw, 24)
    q = (_t_nibbles(b[:, 8:]) | _t_high_bits(b[:, 4:8])).to(torch.float32)
    return (q * _t_f16(b[:, :2]) + _t_f16(b[:, 2:4])).reshape(raw.shape[0], -1)


def _t_dequantize_q8_0(raw):
    b = _t_blocks(raw, 34)
    q = b[:, 2:].contiguous().view(torch.int8).to(torch.float32)
    return (q * _t_f16(b[:, :2])).reshape(raw.shape[0], -1)


QUANTIZE = {Q.Q4_0: _quantize_q4_0, Q.Q4_1: _quantize_q4_1, Q.Q5_0: _quantize_q5_0, Q.Q5_1: _quantize_q5_1, Q.Q8_0: _quantize_q8_0}
QUANTIZE_TORCH = {
    Q.Q4_0: _t_quantize_q4_0,
    Q.Q4_1: _t_quantize_q4_1,
    Q.Q5_0: _t_quantize_q5_0,
    Q.Q5_1: _t_quantize_q5_1,
    Q.Q8_0: _t_quantize_q8_0,
}
DEQUANTIZE = {
    Q.Q4_0: _dequantize_q4_0,
    Q.Q4_1: _dequantize_q4_1,
    Q.Q5_0: _dequantize_q5_0,
    Q.Q5_1: _dequantize_q5_1,
    Q.Q8_0: _dequantize_q8_0,
}
DEQUANTIZE_TORCH = {
    Q.Q4_0: _t_dequantize_q4_0,
    Q.Q4_1: _t_dequantize_q4_1,
    Q.Q5_0: _t_dequantize_q5_0,
    Q.Q5_1: _t_dequantize_q5_1,
    Q.Q8_0: _t_dequantize_q8_0,
}
