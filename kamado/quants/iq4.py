"""IQ4_NL and IQ4_XS (4-bit non-linear quants): numpy and torch, bit-exact with ggml.

Both go through ggml's quantize_row_iq4_nl_impl with ntry = 7 (what llama-quantize calls, with or
without importance weights): a per-32-value scale search over 16 candidate scales, then (IQ4_XS only)
6-bit block scales under one fp16 superblock scale. Layout and vectorisation as in kquants.py.
"""

from __future__ import annotations

import numpy as np

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.quants.kquants import (
    F32,
    GROUP_MAX_EPS,
    QK_K,
    _columns,
    _f16_field,
    _row_dequantizer,
    _rows,
    _t_f16,
    _t_nibbles,
    first_absmax,
    nearest_int,
    quantize_superblocks,
    seq_sum,
    to_f16_bytes,
)

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_VALUES = KVALUES.astype(F32)
_MIDPOINTS_X2 = (KVALUES[:-1].astype(np.int32) + KVALUES[1:]).astype(F32)  # level i once 2x >= val[i-1] + val[i]
# The midpoints are integers, so 2x >= m exactly when floor(2x) >= m: a table indexed by floor(2x) gives the level.
_LO, _HI = int(_MIDPOINTS_X2[0]) - 1, int(_MIDPOINTS_X2[-1])
_LEVEL_OF_FLOOR = np.searchsorted(_MIDPOINTS_X2, np.arange(_LO, _HI + 1, dtype=F32), side="right").astype(np.int8)
NTRY = 7


def best_index(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 over kvalues_iq4nl (the largest i with 2x >= val[i-1] + val[i]; NaN gives 0)."""
    x2 = np.floor(x + x)
    np.fmax(x2, F32(_LO), out=x2)  # fmax maps NaN to the bound: level 0, as ggml's comparisons with NaN give
    np.minimum(x2, F32(_HI), out=x2)
    return _LEVEL_OF_FLOOR[(x2 - F32(_LO)).astype(np.intp)]


def _block_scales(xt: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Best scale of each 32-value column (the first loop of quantize_row_iq4_nl_impl)."""
    amax, vmax = first_absmax(xt)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):

        def try_scale(iscale):
            q = _VALUES[best_index(iscale * xt)]
            wq = w * q
            return seq_sum(wq * xt), seq_sum(wq * q)

        sumqx, sumq2 = try_scale(F32(1) / (-vmax / _VALUES[0]))
        d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
        best = d * sumqx
        for itry in range(-NTRY, NTRY + 1):
            sumqx, sumq2 = try_scale(F32(itry + int(KVALUES[0])) / vmax)
            better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
            d = np.where(better, sumqx / sumq2, d)
            best = np.where(better, d * sumqx, best)
    return np.where(amax < GROUP_MAX_EPS, F32(0), d)


def _weights(xb: np.ndarray, xt: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    if qw is None:
        return xt * xt
    xs = np.ascontiguousarray(xb.T)
    sigma2 = seq_sum(xs * xs) * (F32(2) / F32(xb.shape[1]))
    return _columns(qw, 32) * np.sqrt(np.repeat(sigma2, xb.shape[1] // 32) + xt * xt)


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """(nb, 32k) indices -> (nb, 16k): byte j of each 32-value block holds values j and j+16."""
    q = L.reshape(len(L), -1, 2, 16).astype(np.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(L), -1)


def _quantize_iq4_nl(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    xt = _columns(xb, 32)
    d = _block_scales(xt, _weights(xb, xt, qw))
    with np.errstate(divide="ignore"):
        idl = np.where(d != 0, F32(1) / d, F32(0))
    L = _rows(best_index(idl * xt), len(xb))
    return np.concatenate([to_f16_bytes(d), _pack_nibbles(L)], axis=1)


def _quantize_iq4_xs(xb: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    nb = len(xb)
    xt = _columns(xb, 32)
    scales = _block_scales(xt, _weights(xb, xt, qw)).reshape(nb, 8)
    _, max_scale = first_absmax(np.ascontiguousarray(scales.T))
    d = -max_scale / F32(32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv_d = np.where(d != 0, F32(1) / d, F32(0))
        l = np.clip(nearest_int(inv_d[:, None] * scales), -32, 31)
        dl = d[:, None] * l.astype(F32)
        idl = np.where(dl != 0, F32(1) / dl, F32(0)).reshape(-1)
    L = _rows(best_index(idl * xt), nb)
    codes = (l + 32).astype(np.uint16)
    scales_l = ((codes[:, 0::2] & 0xF) | ((codes[:, 1::2] & 0xF) << 4)).astype(np.uint8)
    scales_h = np.bitwise_or.reduce((codes >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1).astype("<u2")
    scales_h = np.ascontiguousarray(scales_h).view(np.uint8).reshape(nb, 2)
    return np.concatenate([to_f16_bytes(d), scales_h, scales_l, _pack_nibbles(L)], axis=1)


def _dequantize_iq4_nl(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 18)
    q = (b[:, 2:, None] >> np.array([0, 4], np.uint8)) & 0xF  # [j, nibble]
    q = q.transpose(0, 2, 1).reshape(len(b), 32)
    return _f16_field(b, 0)[:, None] * _VALUES[q]


def _dequantize_iq4_xs(raw: np.ndarray) -> np.ndarray:
    b = raw.reshape(-1, 136)
    nb = len(b)
    scales_h = np.ascontiguousarray(b[:, 2:4]).view("<u2")
    low = ((b[:, 4:8, None] >> np.array([0, 4], np.uint8)) & 0xF).reshape(nb, 8)
    high = (scales_h >> (2 * np.arange(8, dtype=np.uint16))) & 3
    ls = (low | (high << 4)).astype(np.int16) - 32
    dl = (_f16_field(b, 0)[:, None] * ls.astype(F32))[:, :, None]
    q = ((b[:, 8:].reshape(nb, 8, 1, 16) >> np.array([0, 4], np.uint8)[:, None]) & 0xF).reshape(nb, 8, 32)
    return (dl * _VALUES[q]).reshape(nb, QK_K)


def _t_values(like):
    import torch

    return torch.tensor(_VALUES, device=like.device)


def _t_dequantize_iq4_nl(raw):
    b = raw.reshape(-1, 18)
    q = _t_nibbles(b[:, 2:], 16).reshape(len(b), 32)
    return _t_f16(b, 0)[:, None] * _t_values(b)[q.long()]


def _t_dequantize_iq4_xs(raw):
    import torch

    b = raw.reshape(-1, 136)
    nb = len(b)
    scales_h = b[:, 2:4].to(torch.int32)
    scales_h = scales_h[:, 0] | (scales_h[:, 1] << 8)
    low = _t_nibbles(b[:, 4:8], 1).reshape(nb, 4, 2).reshape(nb, 8)
    high = (scales_h[:, None] >> (2 * torch.arange(8, device=b.device))) & 3
    ls = (low.to(torch.int32) | (high << 4)) - 32
    dl = (_t_f16(b, 0)[:, None] * ls.float())[:, :, None]
    q = _t_nibbles(b[:, 8:], 16).reshape(nb, 8, 32)
    return (dl * _t_values(b)[q.long()]).reshape(nb, QK_K)


def _row_quantizer(block_fn, block: int):
    def quantize_rows(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return quantize_superblocks(block_fn, x, imatrix, block)

    return quantize_rows


QUANTIZE = {T.IQ4_NL: _row_quantizer(_quantize_iq4_nl, 32), T.IQ4_XS: _row_quantizer(_quantize_iq4_xs, QK_K)}
DEQUANTIZE = {T.IQ4_NL: _row_dequantizer(_dequantize_iq4_nl, 18), T.IQ4_XS: _row_dequantizer(_dequantize_iq4_xs, 136)}
DEQUANTIZE_TORCH = {T.IQ4_NL: _row_dequantizer(_t_dequantize_iq4_nl, 18), T.IQ4_XS: _row_dequantizer(_t_dequantize_iq4_xs, 136)}
