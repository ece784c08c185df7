"""k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K; Q8_K dequantize): numpy and torch, bit-exact with ggml.

Quantizers follow ggml-quants.c operation by operation: the reference is compiled without FMA contraction
or fast-math, so float32 numpy arithmetic in the same order gives the same bits. Without importance
weights ggml uses `quantize_row_qX_K_ref`; with them `quantize_row_qX_K_impl` (a different search).

Vectorisation: a group of n values (a 16- or 32-value sub-block) is laid out as a column of an (n, S)
array, so element i of every group is one contiguous row. ggml's sequential float sums then become
`seq_sum` (numpy reduces along axis 0 element by element, in order), and its per-group searches over
candidate scales become masked updates of whole rows. Per-group early exits are replaced by running
every group through every step: a group that stopped changing stays at its fixed point.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.quants import kquants_triton
from kamado.quants.floats import div, sqrt

F32 = np.float32
QK_K = 256
GROUP_MAX_EPS = F32(1e-15)
CHUNK_SUPERBLOCKS = 1024  # superblocks per numpy pass: keeps the working set in cache


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5*2^23 in float32 and read the mantissa (round half to even, same bits for inf/NaN)."""
    return ((v.astype(F32, copy=False) + F32(12582912.0)).view(np.int32) & 0x7FFFFF) - 0x400000


def seq_sum(a: np.ndarray) -> np.ndarray:
    """float32 sum over axis 0 in index order starting from 0.0f, as a C loop `s += a[i]` does (not pairwise)."""
    return np.add.reduce(a, axis=0, initial=F32(0), dtype=F32)


def to_f16_bytes(v: np.ndarray) -> np.ndarray:
    """(S,) float32 -> (S, 2) uint8 little-endian IEEE half (round to nearest even, like GGML_FP32_TO_FP16)."""
    return np.ascontiguousarray(v.astype(np.float16)).view(np.uint8).reshape(-1, 2)


def f16_round(v: np.ndarray) -> np.ndarray:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(v))."""
    return v.astype(np.float16).astype(F32)


def first_absmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(amax, signed value) of the first largest |x| along axis 0 (ggml's strict `if (ax > amax)` scan)."""
    idx = np.argmax(np.abs(x), axis=0)
    value = np.take_along_axis(x, idx[None], axis=0)[0]
    value = np.where(value != 0, value, F32(0))  # the scan starts from +0.0 and never picks a zero
    return np.abs(value), value


def positive_max(x: np.ndarray, axis: int) -> np.ndarray:
    """ggml's `m = 0; if (v > m) m = v` scan: the largest value, or +0.0 when none is positive."""
    m = x.max(axis=axis)
    return np.where(m > 0, m, F32(0))


def _columns(x: np.ndarray, n: int) -> np.ndarray:
    """(..., k*n) -> (n, S): every group of n consecutive values becomes one column."""
    return np.ascontiguousarray(x.reshape(-1, n).T)


def _rows(xt: np.ndarray, nb: int) -> np.ndarray:
    """Inverse of _columns: (n, S) -> (nb, S*n/nb)."""
    return xt.T.reshape(nb, -1)


# ---------------------------------------------------------------- ggml's scale searches, vectorised


def rounded_levels(v: np.ndarray, lo: int, hi: int, bound: np.ndarray) -> np.ndarray:
    """clamp(nearest_int(v), lo, hi) as float32.

    `bound` (per column) bounds |v|; where it is below 2^22 for every column (the usual case) nearest_int equals
    np.rint and the work stays in float32; otherwise the exact bit-level emulation runs."""
    if np.all(bound < F32(4194303)):
        out = np.rint(v)
        np.maximum(out, F32(lo), out=out)
        return np.minimum(out, F32(hi), out=out)
    return np.clip(nearest_int(v), lo, hi).astype(F32)


def make_qx_quants(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, w) over columns: returns (scale (S,), L (n, S) in [0, 2*nmax))."""
    amax, vmax = first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):

        def levels(iscale):  # all-zero columns are discarded: they must not force the slow exact path
            return rounded_levels(iscale * x, -nmax, nmax - 1, np.where(zero, F32(0), np.abs(iscale) * amax))

        def try_scale(iscale):
            lf = levels(iscale)
            wl = w * lf
            return seq_sum(wx * lf), seq_sum(np.multiply(wl, lf, out=wl))

        best_iscale = F32(-nmax) / vmax
        sumlx, suml2 = try_scale(best_iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / vmax
            sumlx, suml2 = try_scale(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_iscale = np.where(better, iscale, best_iscale)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
        L = levels(best_iscale).astype(np.int32) + nmax  # the levels of the winning candidate, recomputed once
    return np.where(zero, F32(0), scale), np.where(zero, 0, L)


def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) over columns: (scale (S,), L (n, S) in [0, 2*nmax))."""
    amax, vmax = first_absmax(x)
    w = x * x
    wx = w * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        L = np.clip(nearest_int((F32(-nmax) / vmax) * x), -nmax, nmax - 1)
        lf = L.astype(F32)
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum(w * lf * lf)
        for _ in range(5):
            any_changed = False
            for i in range(x.shape[0]):
                li = L[i].astype(F32)
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                new_l = np.clip(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
                nf = new_l.astype(F32)
                accept = (slx > 0) & (new_l != L[i])
                slx = slx + wx[i] * nf
                sl2 = sl2 + w[i] * nf * nf
                accept &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
                if accept.any():
                    any_changed = True
                    L[i] = np.where(accept, new_l, L[i])
                    sumlx = np.where(accept, slx, sumlx)
                    suml2 = np.where(accept, sl2, suml2)
            if not any_changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    zero = amax < GROUP_MAX_EPS
    return np.where(zero, F32(0), scale), np.where(zero, 0, L + nmax)


def make_qkx_quants(x, w, nmax, rmin, rdelta, nstep, use_mad, clamp_v):
    """make_qkx2_quants (clamp_v=False) / make_qkx3_quants (clamp_v=True) over columns.

    Returns (scale (S,), L (n, S) in [0, nmax], the_min (S,) = -min)."""
    xmin = x.min(axis=0)
    mx = x.max(axis=0)
    sum_w = seq_sum(w)
    sum_x = seq_sum(w * x)
    mn = np.where(xmin > 0, F32(0), xmin)
    flat = mx <= mn
    mx = np.where(flat, mn + F32(1), mx)  # flat columns return early in ggml; keep their arithmetic finite here
    v = np.empty_like(x)
    tmp = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):

        def levels(iscale, mn, qkx3_rule):
            np.subtract(x, mn, out=v)
            np.multiply(v, iscale, out=v)
            if qkx3_rule:  # l = v > 0 ? nearest_int(MIN(v, nmax)) : 0, exact for every v including inf/NaN
                np.fmax(v, F32(0), out=v)
                np.minimum(v, F32(nmax), out=v)
                return np.rint(v, out=v)
            return rounded_levels(v, 0, nmax, np.abs(iscale) * np.maximum(mx - mn, mn - xmin))

        def error(scale, lf, mn):
            np.multiply(lf, scale, out=tmp)
            np.add(tmp, mn, out=tmp)
            np.subtract(tmp, x, out=tmp)
            np.abs(tmp, out=tmp) if use_mad else np.square(tmp, out=tmp)
            return seq_sum(np.multiply(w, tmp, out=tmp))

        L_iscale = F32(nmax) / (mx - mn)
        L_mn = mn
        L_searched = np.zeros(mn.shape, bool)  # whether a candidate (rather than the first guess) set L
        scale = F32(1) / L_iscale
        best_error = error(scale, levels(L_iscale, mn, False), mn)
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
            lf = levels(iscale, mn, clamp_v)
            wl = w * lf
            sum_l = seq_sum(wl)
            sum_xl = seq_sum(np.multiply(wl, x, out=tmp))
            sum_l2 = seq_sum(np.multiply(wl, lf, out=wl))
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            cur_error = error(this_scale, lf, this_min)
            better = (D > 0) & (cur_error < best_error)
            L_iscale = np.where(better, iscale, L_iscale)
            L_mn = np.where(better, mn, L_mn)
            L_searched |= better
            best_error = np.where(better, cur_error, best_error)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
        # recompute the winning candidate's levels once instead of keeping a copy per candidate
        L = levels(L_iscale, L_mn, False).astype(np.int32)
        if clamp_v:
            L = np.where(L_searched, levels(L_iscale, L_mn, True).astype(np.int32), L)
    first_min = np.where(xmin > 0, F32(0), xmin)
    return np.where(flat, F32(0), scale), np.where(flat, 0, L), -np.where(flat, first_min, mn)


def make_qp_quants(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qp_quants(n, nmax, x, L, w) over columns (x >= 0): (scale (S,), L (n, S) as uint8 values)."""
    mx = positive_max(x, axis=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / mx
        L = nearest_int(iscale * x) & 0xFF  # stored in uint8_t
        diff = x - (F32(1) / iscale) * L.astype(F32)
        best_mse = seq_sum(w * diff * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
            l = np.minimum(nmax, nearest_int(iscale_is * x))
            diff = x - (F32(1) / iscale_is) * l.astype(F32)
            mse = seq_sum(w * diff * diff)
            better = mse < best_mse
            best_mse = np.where(better, mse, best_mse)
            iscale = np.where(better, iscale_is, iscale)
        l = np.minimum(nmax, nearest_int(iscale * x))
        L = l & 0xFF
        lf = l.astype(F32)
        wx = w * x
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum(w * lf * lf)
        for _ in range(5):
            any_changed = False
            for i in range(x.shape[0]):
                li = L[i].astype(F32)
                slx = sumlx - wx[i] * li
                sl2 = suml2 - w[i] * li * li
                new_l = np.minimum(nmax, nearest_int(x[i] * sl2 / slx))
                nf = new_l.astype(F32)
                accept = (slx > 0) & (sl2 > 0) & (new_l != L[i])
                slx = slx + wx[i] * nf
                sl2 = sl2 + w[i] * nf * nf
                accept &= slx * slx * suml2 > sumlx * sumlx * sl2
                if accept.any():
                    any_changed = True
                    L[i] = np.where(accept, new_l & 0xFF, L[i])
                    sumlx = np.where(accept, slx, sumlx)
                    suml2 = np.where(accept, sl2, suml2)
            if not any_changed:
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    zero = mx < GROUP_MAX_EPS
    return np.where(zero, F32(0), scale), np.where(zero, 0, L)


# ---------------------------------------------------------------- block layouts


def _f16_field(b: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(b[:, at : at + 2]).view(np.float16)[:, 0].astype(F32)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(nb, 256) values 0..3 -> (nb, 64): byte l of each 128-half holds values l, l+32, l+64, l+96."""
    q = L.reshape(len(L), 2, 4, 32).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(len(L), 64)


def _pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and mins (nb, 8) -> the 12-byte Q4_K/Q5_K layout (inverse of get_scale_min_k4)."""
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    return np.concatenate(
        [ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6), (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)],
        axis=1,
    )


def unpack_scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The eight 6-bit scales and mins (nb, 8) of Q4_K/Q5_K's 12-byte layout (nb, 12) (ggml's get_scale_min_k4)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, mn


def _pack_q3_scales(codes: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit scale codes (nb, 16) -> the 12-byte Q3_K layout."""
    c = codes.astype(np.uint8)
    low = (c[:, :8] & 0xF) | ((c[:, 8:] & 0xF) << 4)
    high = c.reshape(len(c), 4, 4) >> 4  # [quarter q, k] = code 4q + k
    high = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    return np.concatenate([low, high], axis=1)


def _unpack_q3_scales(s: np.ndarray) -> np.ndarray:
    low = np.concatenate([s[:, :8] & 0xF, s[:, :8] >> 4], axis=1)
    high = (s[:, None, 8:12] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3  # [q, k]
    return (low | (high.reshape(len(s), 16) << 4)).astype(np.int8) - np.int8(32)


def _int8(v: np.ndarray) -> np.ndarray:
    """C's conversion of an int to int8_t (wraps)."""
    return ((v + 128) & 0xFF) - 128


def _requantize(xt, L, d, offset, lo, hi, dm=None):
    """The final pass of every k-quant: l = clamp(nearest_int((x + dm)/d)) where d != 0, else keep L."""
    with np.errstate(divide="ignore", invalid="ignore"):
        num = xt if dm is None else xt + dm
        l = np.clip(nearest_int(num / d), lo, hi) + offset
    return np.where(d != 0, l, L)


def _sigma2(xb: np.ndarray, factor: float) -> np.ndarray:
    """factor*sum(x^2)/QK_K per superblock, summed in order as ggml does."""
    xs = np.ascontiguousarray(xb.T)
    return F32(factor) * seq_sum(xs * xs) / F32(QK_K)


# ---------------------------------------------------------------- Q2_K


def _quantize_q2_k(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = len(xb)
    xt = _columns(xb, 16)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if qw is None:  # quantize_row_q2_K_ref
            scales, L, mins = make_qkx_quants(xt, np.abs(xt), 3, -0.5, 0.1, 15, True, False)
            scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
            max_scale, max_min = positive_max(scales, 1), positive_max(mins, 1)
            lo = np.where(max_scale[:, None] > 0, nearest_int((F32(15) / max_scale)[:, None] * scales), 0)
            hi = np.where(max_min[:, None] > 0, nearest_int((F32(15) / max_min)[:, None] * mins), 0)
            d, dmin = max_scale / F32(15), max_min / F32(15)
        else:  # quantize_row_q2_K_impl
            sigma2 = np.repeat(_sigma2(xb, 1), 16)
            weight = _columns(qw, 16) * np.sqrt(sigma2 + xt * xt)
            sw = seq_sum(weight).reshape(nb, 16).T
            scales, L, mins = make_qkx_quants(xt, weight, 3, -0.9, 0.05, 36, False, True)
            d, lo = make_qp_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 15, sw)
            dmin, hi = make_qp_quants(np.ascontiguousarray(mins.reshape(nb, 16).T), 15, sw)
            lo, hi = lo.T, hi.T
    sc = ((lo | (hi << 4)) & 0xFF).astype(np.uint8)
    dl = (f16_round(d)[:, None] * (sc & 0xF).astype(F32)).reshape(-1)
    ml = (f16_round(dmin)[:, None] * (sc >> 4).astype(F32)).reshape(-1)
    L = _rows(_requantize(xt, L, dl, 0, 0, 3, ml), nb)
    return np.concatenate([sc, _pack_2bit(L), to_f16_bytes(d), to_f16_bytes(dmin)], axis=1)


def _dequantize_q2_k(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 84)
    nb = len(b)
    sc, qs = b[:, :16], b[:, 16:80]
    dl = (_f16_field(b, 80)[:, None] * (sc & 0xF).astype(F32))[:, :, None]
    ml = (_f16_field(b, 82)[:, None] * (sc >> 4).astype(F32))[:, :, None]
    q = (qs.reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3
    return (dl * q.reshape(nb, 16, 16).astype(F32) - ml).reshape(nb, QK_K)


# ---------------------------------------------------------------- Q3_K


def _quantize_q3_k(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = len(xb)
    xt = _columns(xb, 16)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if qw is None:  # quantize_row_q3_K_ref
            scales, L = make_q3_quants(xt, 4)
            _, max_scale = first_absmax(scales.reshape(nb, 16).T)
            iscale = F32(-32) / max_scale
            codes = np.clip(_int8(nearest_int(iscale[:, None] * scales.reshape(nb, 16))), -32, 31) + 32
            codes = np.where(max_scale[:, None] != 0, codes, 0)
            d = np.where(max_scale != 0, F32(1) / iscale, F32(0))
        else:  # quantize_row_q3_K_impl
            sigma2 = np.repeat(_sigma2(xb, 2), 16)
            weight = _columns(qw, 16) * np.sqrt(sigma2 + xt * xt)
            sw = seq_sum(weight).reshape(nb, 16).T
            scales, L = make_qx_quants(xt, 4, weight)
            d, codes = make_qx_quants(np.ascontiguousarray(scales.reshape(nb, 16).T), 32, np.ascontiguousarray(sw))
            codes = codes.T
    packed_scales = _pack_q3_scales(codes)
    dl = (f16_round(d)[:, None] * _unpack_q3_scales(packed_scales).astype(F32)).reshape(-1)
    L = _rows(_requantize(xt, L, dl, 4, -4, 3), nb)
    high = (L > 3).reshape(nb, 8, 32).astype(np.uint8)
    hmask = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return np.concatenate([hmask, _pack_2bit(L & 3), packed_scales, to_f16_bytes(d)], axis=1)


def _dequantize_q3_k(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 110)
    nb = len(b)
    hmask, qs = b[:, :32], b[:, 32:96]
    dl = (_f16_field(b, 108)[:, None] * _unpack_q3_scales(b[:, 96:108]).astype(F32))[:, :, None]
    shifts = np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]
    low = (qs.reshape(nb, 2, 1, 32) >> shifts) & 3
    bits = (hmask[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # [bit 4h+j, l]
    q = low.reshape(nb, 8, 32).astype(np.int8) - ((1 - bits) << 2).astype(np.int8)
    return (dl * q.reshape(nb, 16, 16).astype(F32)).reshape(nb, QK_K)


# ---------------------------------------------------------------- Q4_K and Q5_K


def _scales_mins_k(xb: np.ndarray, qw: np.ndarray | None, nmax: int, rmin: float, nstep: int):
    """The shared first half of Q4_K/Q5_K: (xt, L, d, dmin, ls, lm) before the final requantization."""
    nb = len(xb)
    xt = _columns(xb, 32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if qw is None:  # quantize_row_q{4,5}_K_ref
            av_x = np.sqrt(seq_sum(xt * xt) / F32(32))
            scales, L, mins = make_qkx_quants(xt, av_x + np.abs(xt), nmax, rmin, 0.1, nstep, False, False)
            scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
            max_scale, max_min = positive_max(scales, 1), positive_max(mins, 1)
            inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
            inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
            ls = np.minimum(63, nearest_int(inv_scale[:, None] * scales) & 0xFF)
            lm = np.minimum(63, nearest_int(inv_min[:, None] * mins) & 0xFF)
            d, dmin = max_scale / F32(63), max_min / F32(63)
        else:  # quantize_row_q{4,5}_K_impl
            sigma2 = np.repeat(_sigma2(xb, 2), 8)
            weights = _columns(qw, 32) * np.sqrt(sigma2 + xt * xt)
            sw = np.ascontiguousarray(seq_sum(weights).reshape(nb, 8).T)
            scales, L, mins = make_qkx_quants(xt, weights, nmax, -0.9, 0.05, 36, False, True)
            d, ls = make_qp_quants(np.ascontiguousarray(scales.reshape(nb, 8).T), 63, sw)
            dmin, lm = make_qp_quants(np.ascontiguousarray(mins.reshape(nb, 8).T), 63, sw)
            ls, lm = np.minimum(63, ls.T), np.minimum(63, lm.T)
    dl = (f16_round(d)[:, None] * ls.astype(F32)).reshape(-1)
    ml = (f16_round(dmin)[:, None] * lm.astype(F32)).reshape(-1)
    L = _rows(_requantize(xt, L, dl, 0, 0, nmax, ml), nb)
    return L, np.concatenate([to_f16_bytes(d), to_f16_bytes(dmin), _pack_scale_min_k4(ls, lm)], axis=1)


def _quantize_q4_k(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    L, head = _scales_mins_k(xb, qw, 15, -1.0, 20)
    q = L.reshape(len(L), 4, 2, 32).astype(np.uint8)
    return np.concatenate([head, (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(L), 128)], axis=1)


def _quantize_q5_k(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    L, head = _scales_mins_k(xb, qw, 31, -0.5, 15)
    q = L.reshape(len(L), 4, 2, 32).astype(np.uint8)
    ql = ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(len(L), 128)
    high = (q >> 4).reshape(len(L), 8, 32)  # [bit 2c+half, l]
    qh = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return np.concatenate([head, qh, ql], axis=1)


def _dequantize_q45_k(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """q: (nb, 8, 32) quant values of the eight 32-value sub-blocks."""
    sc, mn = unpack_scale_min_k4(b[:, 4:16])
    d = (_f16_field(b, 0)[:, None] * sc.astype(F32))[:, :, None]
    m = (_f16_field(b, 2)[:, None] * mn.astype(F32))[:, :, None]
    return (d * q.astype(F32) - m).reshape(len(b), QK_K)


def _nibbles(qs: np.ndarray, width: int) -> np.ndarray:
    """(nb, k*width) bytes -> (nb, 2k, width): low nibbles of each `width` bytes, then their high nibbles."""
    q = qs.reshape(len(qs), -1, 1, width) >> np.array([0, 4], np.uint8)[None, None, :, None]
    return (q & 0xF).reshape(len(qs), -1, width)


def _dequantize_q4_k(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 144)
    return _dequantize_q45_k(b, _nibbles(b[:, 16:], 32))


def _dequantize_q5_k(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 176)
    high = (b[:, None, 16:48] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    return _dequantize_q45_k(b, _nibbles(b[:, 48:], 32) | (high << 4))


# ---------------------------------------------------------------- Q6_K


def _quantize_q6_k(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = len(xb)
    xt = _columns(xb, 16)
    # quantize_row_q6_K_ref weighs by x^2; quantize_row_q6_K_impl passes the importance weights unchanged
    scales, L = make_qx_quants(xt, 32, xt * xt if qw is None else _columns(qw, 16))
    amax, max_scale = first_absmax(scales.reshape(nb, 16).T)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-128) / max_scale
        d = F32(1) / iscale
        sc = _int8(np.minimum(127, nearest_int(iscale[:, None] * scales.reshape(nb, 16))))
    dl = (f16_round(d)[:, None] * sc.astype(F32)).reshape(-1)
    L = _rows(_requantize(xt, L, dl, 32, -32, 31), nb).astype(np.uint8)
    q = L.reshape(nb, 2, 4, 32)
    ql = np.concatenate([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4), (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], axis=2)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    out = np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.astype(np.uint8), to_f16_bytes(d)], axis=1)
    out[amax < GROUP_MAX_EPS] = 0
    return out


def _dequantize_q6_k(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 210)
    nb = len(b)
    low = _nibbles(b[:, :128], 32).reshape(nb, 2, 2, 2, 32)  # [half, 32-byte group, nibble, l]
    low = low.transpose(0, 1, 3, 2, 4).reshape(nb, 2, 4, 32)  # quarter k = 2*nibble + group
    high = (b[:, 128:192].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[None, None, :, None]) & 3
    q = (low | (high << 4)).astype(np.int8) - np.int8(32)
    d = (_f16_field(b, 208)[:, None] * b[:, 192:208].view(np.int8).astype(F32))[:, :, None]
    return (d * q.reshape(nb, 16, 16).astype(F32)).reshape(nb, QK_K)


def _dequantize_q8_k(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 292)
    d = np.ascontiguousarray(b[:, :4]).view(F32)
    return (d * b[:, 4:260].view(np.int8).astype(F32)).reshape(len(b), QK_K)


# ---------------------------------------------------------------- quantizers (torch twins, any device)
# Operation-by-operation ports of the numpy quantizers above, on (n, S) tensors laid out the same way. Torch's eager
# float32 kernels round every operation (no contraction across ops), divisions go through floats.div, and sums run
# element by element in index order (t_seq_sum), so CPU and CUDA give the numpy bytes. nearest_int replaces the
# numpy code's rint shortcut everywhere (they agree wherever the shortcut is taken), which also avoids a host sync.


def t_nearest_int(v: torch.Tensor) -> torch.Tensor:
    """Torch twin of nearest_int (int32)."""
    return ((v + 12582912.0).view(torch.int32) & 0x7FFFFF) - 0x400000


def t_seq_sum(a: torch.Tensor) -> torch.Tensor:
    """Torch twin of seq_sum: float32 sum over dim 0 in index order, starting from +0.0."""
    total = a[0] + 0.0
    for row in a[1:]:
        total += row
    return total


def t_to_f16_bytes(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def t_f16_round(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16).to(torch.float32)


def t_first_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    idx = x.abs().argmax(dim=0, keepdim=True)  # the first of equal maxima, as numpy's argmax
    value = torch.take_along_dim(x, idx, dim=0)[0]
    value = torch.where(value != 0, value, 0.0)
    return value.abs(), value


def t_positive_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    m = x.amax(dim=dim)
    return torch.where(m > 0, m, 0.0)


def t_columns(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.reshape(-1, n).T.contiguous()


def t_rows(xt: torch.Tensor, nb: int) -> torch.Tensor:
    return xt.T.reshape(nb, -1)


def _t_levels(v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """clamp(nearest_int(v), lo, hi) as float32 (rounded_levels' exact branch)."""
    return t_nearest_int(v).clamp_(lo, hi).to(torch.float32)


def t_make_qx_quants(x: torch.Tensor, nmax: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if kquants_triton.usable(x):
        return kquants_triton.make_qx_quants(x, nmax, w)
    amax, vmax = t_first_absmax(x)
    zero = amax < float(GROUP_MAX_EPS)
    wx = w * x

    def levels(iscale):
        return _t_levels(iscale * x, -nmax, nmax - 1)

    def try_scale(iscale):
        lf = levels(iscale)
        wl = w * lf
        return t_seq_sum(wx * lf), t_seq_sum(wl.mul_(lf))

    best_iscale = div(F32(-nmax), vmax)
    sumlx, suml2 = try_scale(best_iscale)
    scale = torch.where(suml2 != 0, div(sumlx, suml2), 0.0)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = div(-(F32(nmax) + F32(0.1) * F32(step)), vmax)
        sumlx, suml2 = try_scale(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        best_iscale = torch.where(better, iscale, best_iscale)
        scale = torch.where(better, div(sumlx, suml2), scale)
        best = torch.where(better, scale * sumlx, best)
    L = levels(best_iscale).to(torch.int32) + nmax
    return torch.where(zero, 0.0, scale), torch.where(zero, 0, L)


def t_make_q3_quants(x: torch.Tensor, nmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    amax, vmax = t_first_absmax(x)
    w = x * x
    wx = w * x
    L = t_nearest_int(div(F32(-nmax), vmax) * x).clamp_(-nmax, nmax - 1)
    lf = L.to(torch.float32)
    sumlx = t_seq_sum(wx * lf)
    suml2 = t_seq_sum(w * lf * lf)
    # numpy stops early once a pass changes nothing; such a pass leaves the state as it was, so running all 5 is the same
    for _ in range(5):
        for i in range(x.shape[0]):
            li = L[i].to(torch.float32)
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new_l = t_nearest_int(div(x[i] * sl2, slx)).clamp_(-nmax, nmax - 1)
            nf = new_l.to(torch.float32)
            accept = (slx > 0) & (new_l != L[i])
            slx = slx + wx[i] * nf
            sl2 = sl2 + w[i] * nf * nf
            accept &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            L[i] = torch.where(accept, new_l, L[i])
            sumlx = torch.where(accept, slx, sumlx)
            suml2 = torch.where(accept, sl2, suml2)
    scale = torch.where(suml2 > 0, div(sumlx, suml2), 0.0)
    zero = amax < float(GROUP_MAX_EPS)
    return torch.where(zero, 0.0, scale), torch.where(zero, 0, L + nmax)


def t_make_qkx_quants(x, w, nmax, rmin, rdelta, nstep, use_mad, clamp_v):
    """Torch twin of make_qkx_quants (the reference rule runs as one fused Triton kernel where it can)."""
    if not clamp_v and kquants_triton.usable(x):
        return kquants_triton.make_qkx_quants(x, w, nmax, rmin, rdelta, nstep, use_mad)
    xmin = x.amin(dim=0)
    mx = x.amax(dim=0)
    sum_w = t_seq_sum(w)
    sum_x = t_seq_sum(w * x)
    mn = torch.where(xmin > 0, 0.0, xmin)
    flat = mx <= mn
    mx = torch.where(flat, mn + 1.0, mx)

    def levels(iscale, mn, qkx3_rule):
        v = (x - mn) * iscale
        if qkx3_rule:
            return torch.round(torch.clamp_max(torch.fmax(v, torch.zeros((), device=v.device)), float(nmax)))
        return _t_levels(v, 0, nmax)

    def error(scale, lf, mn):
        tmp = lf * scale + mn - x
        tmp = tmp.abs() if use_mad else tmp * tmp
        return t_seq_sum(w * tmp)

    L_iscale = div(F32(nmax), mx - mn)
    L_mn = mn
    L_searched = torch.zeros(mn.shape, dtype=torch.bool, device=x.device)
    scale = div(1, L_iscale)
    best_error = error(scale, levels(L_iscale, mn, False), mn)
    for step in range(nstep + 1):
        iscale = div(F32(rmin) + F32(rdelta) * F32(step) + F32(nmax), mx - mn)
        lf = levels(iscale, mn, clamp_v)
        wl = w * lf
        sum_l = t_seq_sum(wl)
        sum_xl = t_seq_sum(wl * x)
        sum_l2 = t_seq_sum(wl.mul_(lf))
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = div(sum_l2 * sum_x - sum_l * sum_xl, D)
        positive = this_min > 0
        this_min = torch.where(positive, 0.0, this_min)
        this_scale = torch.where(positive, div(sum_xl, sum_l2), this_scale)
        cur_error = error(this_scale, lf, this_min)
        better = (D > 0) & (cur_error < best_error)
        L_iscale = torch.where(better, iscale, L_iscale)
        L_mn = torch.where(better, mn, L_mn)
        L_searched |= better
        best_error = torch.where(better, cur_error, best_error)
        scale = torch.where(better, this_scale, scale)
        mn = torch.where(better, this_min, mn)
    L = levels(L_iscale, L_mn, False).to(torch.int32)
    if clamp_v:
        L = torch.where(L_searched, levels(L_iscale, L_mn, True).to(torch.int32), L)
    first_min = torch.where(xmin > 0, 0.0, xmin)
    return torch.where(flat, 0.0, scale), torch.where(flat, 0, L), -torch.where(flat, first_min, mn)


def t_make_qp_quants(x: torch.Tensor, nmax: int, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mx = t_positive_max(x, dim=0)
    iscale = div(F32(nmax), mx)
    L = t_nearest_int(iscale * x) & 0xFF
    diff = x - div(1, iscale) * L.to(torch.float32)
    best_mse = t_seq_sum(w * diff * diff)
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = div(F32(0.1) * F32(step) + F32(nmax), mx)
        l = torch.clamp_max(t_nearest_int(iscale_is * x), nmax)
        diff = x - div(1, iscale_is) * l.to(torch.float32)
        mse = t_seq_sum(w * diff * diff)
        better = mse < best_mse
        best_mse = torch.where(better, mse, best_mse)
        iscale = torch.where(better, iscale_is, iscale)
    l = torch.clamp_max(t_nearest_int(iscale * x), nmax)
    L = l & 0xFF
    lf = l.to(torch.float32)
    wx = w * x
    sumlx = t_seq_sum(wx * lf)
    suml2 = t_seq_sum(w * lf * lf)
    for _ in range(5):  # all passes run: see t_make_q3_quants
        for i in range(x.shape[0]):
            li = L[i].to(torch.float32)
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new_l = torch.clamp_max(t_nearest_int(div(x[i] * sl2, slx)), nmax)
            nf = new_l.to(torch.float32)
            accept = (slx > 0) & (sl2 > 0) & (new_l != L[i])
            slx = slx + wx[i] * nf
            sl2 = sl2 + w[i] * nf * nf
            accept &= slx * slx * suml2 > sumlx * sumlx * sl2
            L[i] = torch.where(accept, new_l & 0xFF, L[i])
            sumlx = torch.where(accept, slx, sumlx)
            suml2 = torch.where(accept, sl2, suml2)
    scale = torch.where(suml2 > 0, div(sumlx, suml2), 0.0)
    zero = mx < float(GROUP_MAX_EPS)
    return torch.where(zero, 0.0, scale), torch.where(zero, 0, L)


def _t_pack_2bit(L: torch.Tensor) -> torch.Tensor:
    q = L.reshape(len(L), 2, 4, 32).to(torch.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(len(L), 64)


def _t_pack_scale_min_k4(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    ls = ls.to(torch.uint8)
    lm = lm.to(torch.uint8)
    return torch.cat(
        [ls[:, :4] | ((ls[:, 4:] >> 4) << 6), lm[:, :4] | ((lm[:, 4:] >> 4) << 6), (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)], dim=1
    )


def _t_pack_q3_scales(codes: torch.Tensor) -> torch.Tensor:
    c = codes.to(torch.uint8)
    low = (c[:, :8] & 0xF) | ((c[:, 8:] & 0xF) << 4)
    high = c.reshape(len(c), 4, 4) >> 4
    high = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    return torch.cat([low, high], dim=1)


def _t_or_bits(high: torch.Tensor) -> torch.Tensor:
    """(nb, 8, k) values 0/1 -> (nb, k) bytes with bit i from high[:, i] (the hmask/qh fields)."""
    shifts = torch.arange(8, device=high.device, dtype=torch.int32)[None, :, None]
    return (high.to(torch.int32) << shifts).sum(dim=1).to(torch.uint8)


def _t_int8(v: torch.Tensor) -> torch.Tensor:
    return ((v + 128) & 0xFF) - 128


def _t_requantize(xt, L, d, offset, lo, hi, dm=None):
    num = xt if dm is None else xt + dm
    l = t_nearest_int(div(num, d)).clamp_(lo, hi) + offset
    return torch.where(d != 0, l, L)


def _t_sigma2(xb: torch.Tensor, factor: float) -> torch.Tensor:
    xs = xb.T
    return div(F32(factor) * t_seq_sum(xs * xs), F32(QK_K))


def _t_quantize_q2_k(xb: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    nb = len(xb)
    xt = t_columns(xb, 16)
    if qw is None:
        scales, L, mins = t_make_qkx_quants(xt, xt.abs(), 3, -0.5, 0.1, 15, True, False)
        scales, mins = scales.reshape(nb, 16), mins.reshape(nb, 16)
        max_scale, max_min = t_positive_max(scales, 1), t_positive_max(mins, 1)
        lo = torch.where(max_scale[:, None] > 0, t_nearest_int(div(F32(15), max_scale)[:, None] * scales), 0)
        hi = torch.where(max_min[:, None] > 0, t_nearest_int(div(F32(15), max_min)[:, None] * mins), 0)
        d, dmin = div(max_scale, F32(15)), div(max_min, F32(15))
    else:
        sigma2 = torch.repeat_interleave(_t_sigma2(xb, 1), 16)
        weight = t_columns(qw, 16) * sqrt(sigma2 + xt * xt)
        sw = t_seq_sum(weight).reshape(nb, 16).T.contiguous()
        scales, L, mins = t_make_qkx_quants(xt, weight, 3, -0.9, 0.05, 36, False, True)
        d, lo = t_make_qp_quants(scales.reshape(nb, 16).T.contiguous(), 15, sw)
        dmin, hi = t_make_qp_quants(mins.reshape(nb, 16).T.contiguous(), 15, sw)
        lo, hi = lo.T, hi.T
    sc = ((lo | (hi << 4)) & 0xFF).to(torch.uint8)
    dl = (t_f16_round(d)[:, None] * (sc & 0xF).to(torch.float32)).reshape(-1)
    ml = (t_f16_round(dmin)[:, None] * (sc >> 4).to(torch.float32)).reshape(-1)
    L = t_rows(_t_requantize(xt, L, dl, 0, 0, 3, ml), nb)
    return torch.cat([sc, _t_pack_2bit(L), t_to_f16_bytes(d), t_to_f16_bytes(dmin)], dim=1)


def _t_quantize_q3_k(xb: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    nb = len(xb)
    xt = t_columns(xb, 16)
    if qw is None:
        scales, L = t_make_q3_quants(xt, 4)
        _, max_scale = t_first_absmax(scales.reshape(nb, 16).T)
        iscale = div(F32(-32), max_scale)
        codes = _t_int8(t_nearest_int(iscale[:, None] * scales.reshape(nb, 16))).clamp_(-32, 31) + 32
        codes = torch.where(max_scale[:, None] != 0, codes, 0)
        d = torch.where(max_scale != 0, div(1, iscale), 0.0)
    else:
        sigma2 = torch.repeat_interleave(_t_sigma2(xb, 2), 16)
        weight = t_columns(qw, 16) * sqrt(sigma2 + xt * xt)
        sw = t_seq_sum(weight).reshape(nb, 16).T.contiguous()
        scales, L = t_make_qx_quants(xt, 4, weight)
        d, codes = t_make_qx_quants(scales.reshape(nb, 16).T.contiguous(), 32, sw)
        codes = codes.T
    packed_scales = _t_pack_q3_scales(codes)
    dl = (t_f16_round(d)[:, None] * _t_unpack_q3_scales(packed_scales).to(torch.float32)).reshape(-1)
    L = t_rows(_t_requantize(xt, L, dl, 4, -4, 3), nb)
    hmask = _t_or_bits((L > 3).reshape(nb, 8, 32))
    return torch.cat([hmask, _t_pack_2bit(L & 3), packed_scales, t_to_f16_bytes(d)], dim=1)


def _t_scales_mins_k(xb: torch.Tensor, qw: torch.Tensor | None, nmax: int, rmin: float, nstep: int):
    nb = len(xb)
    xt = t_columns(xb, 32)
    if qw is None:
        av_x = sqrt(div(t_seq_sum(xt * xt), F32(32)))
        scales, L, mins = t_make_qkx_quants(xt, av_x + xt.abs(), nmax, rmin, 0.1, nstep, False, False)
        scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
        max_scale, max_min = t_positive_max(scales, 1), t_positive_max(mins, 1)
        inv_scale = torch.where(max_scale > 0, div(F32(63), max_scale), 0.0)
        inv_min = torch.where(max_min > 0, div(F32(63), max_min), 0.0)
        ls = torch.clamp_max(t_nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)
        lm = torch.clamp_max(t_nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
        d, dmin = div(max_scale, F32(63)), div(max_min, F32(63))
    else:
        sigma2 = torch.repeat_interleave(_t_sigma2(xb, 2), 8)
        weights = t_columns(qw, 32) * sqrt(sigma2 + xt * xt)
        sw = t_seq_sum(weights).reshape(nb, 8).T.contiguous()
        scales, L, mins = t_make_qkx_quants(xt, weights, nmax, -0.9, 0.05, 36, False, True)
        d, ls = t_make_qp_quants(scales.reshape(nb, 8).T.contiguous(), 63, sw)
        dmin, lm = t_make_qp_quants(mins.reshape(nb, 8).T.contiguous(), 63, sw)
        ls, lm = torch.clamp_max(ls.T, 63), torch.clamp_max(lm.T, 63)
    dl = (t_f16_round(d)[:, None] * ls.to(torch.float32)).reshape(-1)
    ml = (t_f16_round(dmin)[:, None] * lm.to(torch.float32)).reshape(-1)
    L = t_rows(_t_requantize(xt, L, dl, 0, 0, nmax, ml), nb)
    return L, torch.cat([t_to_f16_bytes(d), t_to_f16_bytes(dmin), _t_pack_scale_min_k4(ls, lm)], dim=1)


def _t_quantize_q4_k(xb: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    L, head = _t_scales_mins_k(xb, qw, 15, -1.0, 20)
    q = L.reshape(len(L), 4, 2, 32).to(torch.uint8)
    return torch.cat([head, (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(L), 128)], dim=1)


def _t_quantize_q5_k(xb: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    L, head = _t_scales_mins_k(xb, qw, 31, -0.5, 15)
    q = L.reshape(len(L), 4, 2, 32).to(torch.uint8)
    ql = ((q[:, :, 0] & 0xF) | ((q[:, :, 1] & 0xF) << 4)).reshape(len(L), 128)
    qh = _t_or_bits((q >> 4).reshape(len(L), 8, 32))
    return torch.cat([head, qh, ql], dim=1)


def _t_quantize_q6_k(xb: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    nb = len(xb)
    xt = t_columns(xb, 16)
    scales, L = t_make_qx_quants(xt, 32, xt * xt if qw is None else t_columns(qw, 16))
    amax, max_scale = t_first_absmax(scales.reshape(nb, 16).T)
    iscale = div(F32(-128), max_scale)
    d = div(1, iscale)
    sc = _t_int8(torch.clamp_max(t_nearest_int(iscale[:, None] * scales.reshape(nb, 16)), 127))
    dl = (t_f16_round(d)[:, None] * sc.to(torch.float32)).reshape(-1)
    L = t_rows(_t_requantize(xt, L, dl, 32, -32, 31), nb).to(torch.uint8)
    q = L.reshape(nb, 2, 4, 32)
    ql = torch.cat([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4), (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], dim=2)
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    out = torch.cat([ql.reshape(nb, 128), qh.reshape(nb, 64), sc.to(torch.uint8), t_to_f16_bytes(d)], dim=1)
    out[amax < float(GROUP_MAX_EPS)] = 0
    return out


def t_quantize_blocks(block_fn, x: torch.Tensor, imatrix: torch.Tensor | None, block: int = QK_K) -> torch.Tensor:
    """Torch twin of quantize_superblocks without its chunking (kamado.quants.quantize_torch chunks by rows)."""
    n_rows = x.shape[0]
    qw = None if imatrix is None else imatrix.reshape(1, -1).expand(n_rows, -1).reshape(-1, block)
    return block_fn(x.reshape(-1, block), qw).reshape(n_rows, -1)


def _t_row_quantizer(block_fn):
    def quantize_rows(x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        return t_quantize_blocks(block_fn, x, imatrix)

    return quantize_rows


# ---------------------------------------------------------------- row-level entry points


def quantize_superblocks(block_fn, x: np.ndarray, imatrix: np.ndarray | None, block: int = QK_K) -> np.ndarray:
    """Run block_fn over (n_rows, n_per_row) in cache-sized chunks of `block`-value blocks.

    block_fn(xb (nb, block), qw (nb, block) | None) -> (nb, block_bytes); the imatrix row repeats per row.
    (kamado.quants.quantize already hands over cache-sized groups of rows on several threads; this only
    splits rows longer than that.)"""
    n_rows = x.shape[0]
    xb = x.reshape(-1, block)
    qw_row = None if imatrix is None else imatrix.reshape(-1, block)
    chunk = CHUNK_SUPERBLOCKS * QK_K // block
    parts = []
    for a in range(0, len(xb), chunk):
        b = min(a + chunk, len(xb))
        qw = None if qw_row is None else qw_row[np.arange(a, b) % len(qw_row)]
        parts.append(block_fn(np.ascontiguousarray(xb[a:b]), qw))
    return np.concatenate(parts).reshape(n_rows, -1)


def _row_quantizer(block_fn):
    def quantize_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return quantize_superblocks(block_fn, x, imatrix)

    return quantize_rows


def _row_dequantizer(block_fn, type_size: int):
    def dequantize_rows(raw: np.ndarray) -> np.ndarray:
        n_rows = raw.shape[0]
        return block_fn(raw.reshape(-1, type_size)).reshape(n_rows, -1)

    return dequantize_rows


# ---------------------------------------------------------------- torch twins (same float32 operations, any device)


def _t_f16(b, at: int):
    return b[:, at : at + 2].contiguous().view(torch.float16)[:, 0].float()


def _t_shifts(values, like):
    return t_constant(tuple(values), torch.uint8, like.device)


@functools.cache
def t_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant tensor, made once per device (never written to): made per call, it was copied from the host,
    and that copy waits for the work queued on the device (DecodeGraphs.next_logits dequantizes embedding rows on the
    GPU while the previous decode step still runs there)."""
    return torch.tensor(values, dtype=dtype, device=device)


def _t_unpack_q3_scales(s):
    low = torch.cat([s[:, :8] & 0xF, s[:, :8] >> 4], dim=1)
    high = (s[:, None, 8:12] >> _t_shifts([0, 2, 4, 6], s)[None, :, None]) & 3
    return (low | (high.reshape(len(s), 16) << 4)).to(torch.int16) - 32


def _t_unpack_scale_min_k4(s):
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    return sc, mn


def _t_nibbles(qs, width: int):
    q = qs.reshape(len(qs), -1, 1, width) >> _t_shifts([0, 4], qs)[None, None, :, None]
    return (q & 0xF).reshape(len(qs), -1, width)


def _t_dequantize_q2_k(raw):
    b = raw.reshape(-1, 84)
    nb = len(b)
    sc, qs = b[:, :16], b[:, 16:80]
    dl = (_t_f16(b, 80)[:, None] * (sc & 0xF).float())[:, :, None]
    ml = (_t_f16(b, 82)[:, None] * (sc >> 4).float())[:, :, None]
    q = (qs.reshape(nb, 2, 1, 32) >> _t_shifts([0, 2, 4, 6], b)[None, None, :, None]) & 3
    return (dl * q.reshape(nb, 16, 16).float() - ml).reshape(nb, QK_K)


def _t_dequantize_q3_k(raw):
    b = raw.reshape(-1, 110)
    nb = len(b)
    hmask, qs = b[:, :32], b[:, 32:96]
    dl = (_t_f16(b, 108)[:, None] * _t_unpack_q3_scales(b[:, 96:108]).float())[:, :, None]
    low = (qs.reshape(nb, 2, 1, 32) >> _t_shifts([0, 2, 4, 6], b)[None, None, :, None]) & 3
    bits = (hmask[:, None, :] >> _t_shifts(list(range(8)), b)[None, :, None]) & 1
    q = low.reshape(nb, 8, 32).to(torch.int16) - ((1 - bits.to(torch.int16)) << 2)
    return (dl * q.reshape(nb, 16, 16).float()).reshape(nb, QK_K)


def _t_scales_mins_k4(b):
    """Q4_K/Q5_K blocks (nb, bytes) -> float32 scale and min of each 32-value sub-block (nb, 8): value = scale * q - min."""
    sc, mn = _t_unpack_scale_min_k4(b[:, 4:16])
    return _t_f16(b, 0)[:, None] * sc.float(), _t_f16(b, 2)[:, None] * mn.float()


def _t_dequantize_q45_k(b, q):
    d, m = _t_scales_mins_k4(b)
    return (d[:, :, None] * q.float() - m[:, :, None]).reshape(len(b), QK_K)


def q4_k_parts(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K blocks (uint8, ... x 144 bytes each) -> 4-bit codes (nb, 256) uint8 and each 32 codes' float32 scale and
    min (nb, 8): the dequantized value is scale * code - min, as _t_dequantize_q4_k computes it."""
    b = raw.reshape(-1, 144)
    return (_t_nibbles(b[:, 16:], 32).reshape(len(b), QK_K), *_t_scales_mins_k4(b))


def _t_dequantize_q4_k(raw):
    b = raw.reshape(-1, 144)
    return _t_dequantize_q45_k(b, _t_nibbles(b[:, 16:], 32))


def _t_dequantize_q5_k(raw):
    b = raw.reshape(-1, 176)
    high = (b[:, None, 16:48] >> _t_shifts(list(range(8)), b)[None, :, None]) & 1
    return _t_dequantize_q45_k(b, _t_nibbles(b[:, 48:], 32) | (high << 4))


def _t_dequantize_q6_k(raw):
    b = raw.reshape(-1, 210)
    nb = len(b)
    low = _t_nibbles(b[:, :128], 32).reshape(nb, 2, 2, 2, 32).transpose(2, 3).reshape(nb, 2, 4, 32)
    high = (b[:, 128:192].reshape(nb, 2, 1, 32) >> _t_shifts([0, 2, 4, 6], b)[None, None, :, None]) & 3
    q = (low | (high << 4)).to(torch.int16) - 32
    d = (_t_f16(b, 208)[:, None] * b[:, 192:208].contiguous().view(torch.int8).float())[:, :, None]
    return (d * q.reshape(nb, 16, 16).float()).reshape(nb, QK_K)


def _t_dequantize_q8_k(raw):
    b = raw.reshape(-1, 292)
    d = b[:, :4].contiguous().view(torch.float32)
    return (d * b[:, 4:260].contiguous().view(torch.int8).float()).reshape(len(b), QK_K)


_TYPES = {  # qtype: (block bytes, quantize blocks, dequantize blocks, torch dequantize blocks)
    T.Q2_K: (84, _quantize_q2_k, _dequantize_q2_k, _t_dequantize_q2_k),
    T.Q3_K: (110, _quantize_q3_k, _dequantize_q3_k, _t_dequantize_q3_k),
    T.Q4_K: (144, _quantize_q4_k, _dequantize_q4_k, _t_dequantize_q4_k),
    T.Q5_K: (176, _quantize_q5_k, _dequantize_q5_k, _t_dequantize_q5_k),
    T.Q6_K: (210, _quantize_q6_k, _dequantize_q6_k, _t_dequantize_q6_k),
    T.Q8_K: (292, None, _dequantize_q8_k, _t_dequantize_q8_k),
}

QUANTIZE = {q: _row_quantizer(f) for q, (_, f, _, _) in _TYPES.items() if f is not None}
DEQUANTIZE = {q: _row_dequantizer(f, size) for q, (size, _, f, _) in _TYPES.items()}
DEQUANTIZE_TORCH = {q: _row_dequantizer(f, size) for q, (size, _, _, f) in _TYPES.items()}
QUANTIZE_TORCH = {
    T.Q2_K: _t_row_quantizer(_t_quantize_q2_k),
    T.Q3_K: _t_row_quantizer(_t_quantize_q3_k),
    T.Q4_K: _t_row_quantizer(_t_quantize_q4_k),
    T.Q5_K: _t_row_quantizer(_t_quantize_q5_k),
    T.Q6_K: _t_row_quantizer(_t_quantize_q6_k),
}
