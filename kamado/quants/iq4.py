"""IQ4_NL and IQ4_XS (4-bit non-linear quants): numpy and torch, bit-exact with ggml.

Both go through ggml's quantize_row_iq4_nl_impl with ntry = 7 (what llama-quantize calls, with or
without importance weights): a per-32-value scale search over 16 candidate scales, then (IQ4_XS only)
6-bit block scales under one fp16 superblock scale. Layout and vectorisation as in kquants.py.
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.quants.floats import div, sqrt
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
    t_columns,
    t_constant,
    t_first_absmax,
    t_nearest_int,
    t_quantize_blocks,
    t_rows,
    t_seq_sum,
    t_to_f16_bytes,
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
    return t_constant(tuple(_VALUES.tolist()), torch.float32, like.device)


# ---------------------------------------------------------------- quantizers (torch twins, any device; see kquants.py)


def _t_best_index(x: torch.Tensor) -> torch.Tensor:
    """Torch twin of best_index (int64 level indices)."""
    x2 = torch.floor(x + x)
    x2 = torch.fmax(x2, torch.full((), float(_LO), device=x.device)).clamp_max_(float(_HI))
    table = torch.from_numpy(_LEVEL_OF_FLOOR.astype(np.int64)).to(x.device)
    return table[(x2 - float(_LO)).to(torch.int64)]


def _t_block_scales(xt: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    amax, vmax = t_first_absmax(xt)
    values = _t_values(xt)

    def try_scale(iscale):
        q = values[_t_best_index(iscale * xt)]
        wq = w * q
        return t_seq_sum(wq * xt), t_seq_sum(wq.mul_(q))

    sumqx, sumq2 = try_scale(div(1, div(-vmax, _VALUES[0])))
    d = torch.where(sumq2 > 0, div(sumqx, sumq2), 0.0)
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        sumqx, sumq2 = try_scale(div(F32(itry + int(KVALUES[0])), vmax))
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = torch.where(better, div(sumqx, sumq2), d)
        best = torch.where(better, d * sumqx, best)
    return torch.where(amax < float(GROUP_MAX_EPS), 0.0, d)


def _t_weights(xb: torch.Tensor, xt: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    if qw is None:
        return xt * xt
    xs = xb.T
    sigma2 = t_seq_sum(xs * xs) * float(F32(2) / F32(xb.shape[1]))
    return t_columns(qw, 32) * sqrt(torch.repeat_interleave(sigma2, xb.shape[1] // 32) + xt * xt)


def _t_pack_nibbles(L: torch.Tensor) -> torch.Tensor:
    q = L.reshape(len(L), -1, 2, 16).to(torch.uint8)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(L), -1)


def _t_quantize_iq4_nl(xb: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    xt = t_columns(xb, 32)
    d = _t_block_scales(xt, _t_weights(xb, xt, qw))
    idl = torch.where(d != 0, div(1, d), 0.0)
    L = t_rows(_t_best_index(idl * xt), len(xb))
    return torch.cat([t_to_f16_bytes(d), _t_pack_nibbles(L)], dim=1)


def _t_quantize_iq4_xs(xb: torch.Tensor, qw: torch.Tensor | None) -> torch.Tensor:
    nb = len(xb)
    xt = t_columns(xb, 32)
    scales = _t_block_scales(xt, _t_weights(xb, xt, qw)).reshape(nb, 8)
    _, max_scale = t_first_absmax(scales.T)
    d = div(-max_scale, F32(32))
    inv_d = torch.where(d != 0, div(1, d), 0.0)
    l = t_nearest_int(inv_d[:, None] * scales).clamp_(-32, 31)
    dl = d[:, None] * l.to(torch.float32)
    idl = torch.where(dl != 0, div(1, dl), 0.0).reshape(-1)
    L = t_rows(_t_best_index(idl * xt), nb)
    codes = l + 32
    scales_l = ((codes[:, 0::2] & 0xF) | ((codes[:, 1::2] & 0xF) << 4)).to(torch.uint8)
    scales_h = ((codes >> 4) << (2 * torch.arange(8, device=xb.device, dtype=torch.int32))).sum(dim=1)
    scales_h = torch.stack([scales_h & 0xFF, scales_h >> 8], dim=1).to(torch.uint8)
    return torch.cat([t_to_f16_bytes(d), scales_h, scales_l, _t_pack_nibbles(L)], dim=1)


def _t_dequantize_iq4_nl(raw):
    b = raw.reshape(-1, 18)
    q = _t_nibbles(b[:, 2:], 16).reshape(len(b), 32)
    return _t_f16(b, 0)[:, None] * _t_values(b)[q.long()]


def _t_dequantize_iq4_xs(raw):
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


def _t_row_quantizer(block_fn, block: int):
    def quantize_rows(x: torch.Tensor, imatrix: torch.Tensor | None) -> torch.Tensor:
        return t_quantize_blocks(block_fn, x, imatrix, block)

    return quantize_rows


QUANTIZE = {T.IQ4_NL: _row_quantizer(_quantize_iq4_nl, 32), T.IQ4_XS: _row_quantizer(_quantize_iq4_xs, QK_K)}
QUANTIZE_TORCH = {T.IQ4_NL: _t_row_quantizer(_t_quantize_iq4_nl, 32), T.IQ4_XS: _t_row_quantizer(_t_quantize_iq4_xs, QK_K)}
DEQUANTIZE = {T.IQ4_NL: _row_dequantizer(_dequantize_iq4_nl, 18), T.IQ4_XS: _row_dequantizer(_dequantize_iq4_xs, 136)}
DEQUANTIZE_TORCH = {T.IQ4_NL: _row_dequantizer(_t_dequantize_iq4_nl, 18), T.IQ4_XS: _row_dequantizer(_t_dequantize_iq4_xs, 136)}
