"""Dequantize the lattice ("i-quant") formats IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S.

Each 256-value super-block stores indices into a fixed grid of 8- (IQ1/IQ2) or 4-value (IQ3) vectors,
sign bits, and small integer scales. The grids are ggml's tables, taken from gguf-py (maintained with
llama.cpp). Arithmetic follows ggml's dequantize_row_* in float32 and in the same order, so results are
bit-identical: e.g. IQ2 computes (d * (0.5 + s) * 0.25) * grid * sign, IQ1 computes dl * (grid + delta).
(ggml has no reference quantizers for these types that llama-quantize would reproduce without its
search tables, so only dequantization lives here.)
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from gguf import quants as gguf_quants

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.quants.floats import f16_bytes_to_f32, f16_bytes_to_f32_torch
from kamado.quants.kquants import t_constant

F32 = np.float32
IQ1S_DELTA = F32(0.125)


@cache
def grid(qtype: Q) -> np.ndarray:
    """ggml's grid for qtype as float32 (entries, 8 or 4)."""
    table = {Q.IQ1_S: gguf_quants.IQ1_S, Q.IQ1_M: gguf_quants.IQ1_S, Q.IQ2_XXS: gguf_quants.IQ2_XXS, Q.IQ2_XS: gguf_quants.IQ2_XS,
             Q.IQ2_S: gguf_quants.IQ2_S, Q.IQ3_XXS: gguf_quants.IQ3_XXS, Q.IQ3_S: gguf_quants.IQ3_S}[qtype]
    table.init_grid()
    return np.ascontiguousarray(table.grid.reshape(table.grid_shape), dtype=F32)


@cache
def _ksigns() -> np.ndarray:
    """ggml's ksigns_iq2xs: 7 stored sign bits plus an eighth that makes the count of negatives even."""
    i = np.arange(128, dtype=np.uint8)
    parity = np.unpackbits(i[:, None], axis=1).sum(axis=1) & 1
    return i | (parity.astype(np.uint8) << np.uint8(7))


def _sign_bits(sign_bytes: np.ndarray) -> np.ndarray:
    """(...,) sign bytes -> (..., 8) float32 factors: -1 where bit j is set, else +1."""
    bits = np.unpackbits(sign_bytes[..., None], axis=-1, bitorder="little")
    return F32(1) - F32(2) * bits.astype(F32)


def _blocks(raw: np.ndarray, type_size: int) -> np.ndarray:
    return np.ascontiguousarray(raw).reshape(-1, type_size)


def _u16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<u2")


def _u32(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<u4")


def _dequantize_iq2_xxs(raw):
    b = _blocks(raw, 66)
    nb = len(b)
    d = f16_bytes_to_f32(b[:, :2])  # (nb, 1)
    words = _u32(b[:, 2:]).reshape(nb, 8, 2)
    indices = b[:, 2:].reshape(nb, 8, 8)[:, :, :4]  # the 4 grid indices are the first word's bytes
    db = d[:, :, None] * (F32(0.5) + (words[:, :, 1] >> np.uint32(28)).astype(F32))[:, :, None] * F32(0.25)  # (nb, 8, 1)
    sign_idx = (words[:, :, 1:2] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & np.uint32(127)
    signs = _sign_bits(_ksigns()[sign_idx])  # (nb, 8, 4, 8)
    values = db[..., None] * grid(Q.IQ2_XXS)[indices] * signs
    return values.reshape(raw.shape[0], -1)


def _two_scales_per_32(d: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """IQ2_XS/IQ2_S: (nb, 1) d and (nb, 8) scale bytes -> (nb, 32) per-group-of-8 scales d*(0.5+s)*0.25."""
    nibbles = np.stack([scales & np.uint8(15), scales >> np.uint8(4)], axis=-1)  # (nb, 8, 2): groups 0-1, 2-3
    db = d[:, :, None] * (F32(0.5) + nibbles.astype(F32)) * F32(0.25)
    return np.repeat(db, 2, axis=-1).reshape(len(d), 32)


def _dequantize_iq2_xs(raw):
    b = _blocks(raw, 74)
    nb = len(b)
    d = f16_bytes_to_f32(b[:, :2])
    qs = _u16(b[:, 2:66])  # (nb, 32)
    db = _two_scales_per_32(d, b[:, 66:74])
    signs = _sign_bits(_ksigns()[qs >> np.uint16(9)])
    values = db[..., None] * grid(Q.IQ2_XS)[qs & np.uint16(511)] * signs
    return values.reshape(nb, -1).reshape(raw.shape[0], -1)


def _dequantize_iq2_s(raw):
    b = _blocks(raw, 82)
    nb = len(b)
    d = f16_bytes_to_f32(b[:, :2])
    low, sign_bytes, qh, scales = b[:, 2:34], b[:, 34:66], b[:, 66:74], b[:, 74:82]
    high = (qh[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & np.uint8(3)  # (nb, 8, 4)
    indices = low.astype(np.uint16) | (high.reshape(nb, 32).astype(np.uint16) << np.uint16(8))
    db = _two_scales_per_32(d, scales)
    values = db[..., None] * grid(Q.IQ2_S)[indices] * _sign_bits(sign_bytes)
    return values.reshape(raw.shape[0], -1)


def _dequantize_iq3_xxs(raw):
    b = _blocks(raw, 98)
    nb = len(b)
    d = f16_bytes_to_f32(b[:, :2])
    indices = b[:, 2:66].reshape(nb, 8, 8)  # 8 four-value grid entries per 32 values
    words = _u32(b[:, 66:98])  # (nb, 8): 4x7 sign bits + 4-bit scale
    db = d * (F32(0.5) + (words >> np.uint32(28)).astype(F32)) * F32(0.5)  # (nb, 8)
    sign_idx = (words[:, :, None] >> np.array([0, 7, 14, 21], dtype=np.uint32)) & np.uint32(127)
    signs = _sign_bits(_ksigns()[sign_idx]).reshape(nb, 8, 32)
    values = db[:, :, None] * grid(Q.IQ3_XXS)[indices].reshape(nb, 8, 32) * signs
    return values.reshape(raw.shape[0], -1)


def _dequantize_iq3_s(raw):
    b = _blocks(raw, 110)
    nb = len(b)
    d = f16_bytes_to_f32(b[:, :2])
    low, qh, sign_bytes, scales = b[:, 2:66], b[:, 66:74], b[:, 74:106], b[:, 106:110]
    high = np.unpackbits(qh[:, :, None], axis=-1, bitorder="little").reshape(nb, 64)
    indices = low.astype(np.uint16) | (high.astype(np.uint16) << np.uint16(8))
    nibbles = np.stack([scales & np.uint8(15), scales >> np.uint8(4)], axis=-1).reshape(nb, 8)
    db = d * (np.int32(1) + np.int32(2) * nibbles.astype(np.int32)).astype(F32)  # (nb, 8)
    signs = _sign_bits(sign_bytes).reshape(nb, 8, 32)
    values = db[:, :, None] * grid(Q.IQ3_S)[indices].reshape(nb, 8, 32) * signs
    return values.reshape(raw.shape[0], -1)


def _dequantize_iq1_s(raw):
    b = _blocks(raw, 50)
    nb = len(b)
    d = f16_bytes_to_f32(b[:, :2])
    qs = b[:, 2:34].reshape(nb, 8, 4)
    qh = _u16(b[:, 34:50])  # (nb, 8)
    dl = d * (np.uint16(2) * ((qh >> np.uint16(12)) & np.uint16(7)) + np.uint16(1)).astype(F32)  # (nb, 8)
    delta = np.where(qh & np.uint16(0x8000), -IQ1S_DELTA, IQ1S_DELTA)
    high = (qh[:, :, None] >> np.array([0, 3, 6, 9], dtype=np.uint16)) & np.uint16(7)
    indices = qs.astype(np.uint16) | (high << np.uint16(8))  # (nb, 8, 4)
    values = dl[:, :, None, None] * (grid(Q.IQ1_S)[indices] + delta[:, :, None, None])
    return values.reshape(raw.shape[0], -1)


def _iq1_m_scale(scales: np.ndarray) -> np.ndarray:
    """IQ1_M keeps its fp16 super-block scale in the top nibbles of four uint16 words."""
    sc = _u16(scales)  # (nb, 4)
    bits = (sc[:, 0] >> np.uint16(12)) | ((sc[:, 1] >> np.uint16(8)) & np.uint16(0x00F0)) | (
        (sc[:, 2] >> np.uint16(4)) & np.uint16(0x0F00)) | (sc[:, 3] & np.uint16(0xF000))
    return bits.view(np.float16).astype(F32)[:, None]


def _dequantize_iq1_m(raw):
    b = _blocks(raw, 56)
    nb = len(b)
    qs, qh, scales = b[:, :32].reshape(nb, 8, 4), b[:, 32:48].reshape(nb, 8, 2), b[:, 48:56]
    d = _iq1_m_scale(scales)  # (nb, 1)
    sc = np.repeat(_u16(scales), 2, axis=1)  # (nb, 8): word ib/2 for sub-block ib
    shift = np.tile(np.array([0, 6], dtype=np.uint16), 4)
    three_bits = (sc[:, :, None] >> (shift[:, None] + np.array([0, 3], dtype=np.uint16))) & np.uint16(7)  # (nb, 8, 2)
    dl = d[:, :, None] * (np.uint16(2) * three_bits + np.uint16(1)).astype(F32)  # (nb, 8, 2): groups 0-1, 2-3
    nibble = np.stack([qh & np.uint8(15), qh >> np.uint8(4)], axis=-1).reshape(nb, 8, 4)  # one per group of 8
    indices = qs.astype(np.uint16) | ((nibble & np.uint8(7)).astype(np.uint16) << np.uint16(8))
    delta = np.where(nibble & np.uint8(8), -IQ1S_DELTA, IQ1S_DELTA)
    group_dl = np.repeat(dl, 2, axis=-1)  # (nb, 8, 4)
    values = group_dl[..., None] * (grid(Q.IQ1_S)[indices] + delta[..., None])
    return values.reshape(raw.shape[0], -1)


# ---------------------------------------------------------------- torch twins (same operations, any device)


def _t_table(table: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """One of the cached numpy tables (grid, _ksigns) on like's device, copied there once (kquants.t_constant says why)."""
    key = (id(table), like.device)
    if key not in _DEVICE_TABLES:
        _DEVICE_TABLES[key] = (table, torch.from_numpy(table).to(like.device))  # the table kept: its id stays its own
    return _DEVICE_TABLES[key][1]


_DEVICE_TABLES: dict = {}


def _t_blocks(raw: torch.Tensor, type_size: int) -> torch.Tensor:
    return raw.contiguous().reshape(-1, type_size)


def _t_le(b: torch.Tensor) -> torch.Tensor:
    """(..., k) uint8 little-endian groups -> (...) int64 values."""
    shifts = torch.arange(b.shape[-1], device=b.device, dtype=torch.int64) * 8
    return (b.to(torch.int64) << shifts).sum(dim=-1)


def _t_sign_bits(sign_bytes: torch.Tensor) -> torch.Tensor:
    bits = (sign_bytes.to(torch.int64).unsqueeze(-1) >> torch.arange(8, device=sign_bytes.device)) & 1
    return 1.0 - 2.0 * bits.to(torch.float32)


def _t_ksigns(idx: torch.Tensor) -> torch.Tensor:
    return _t_table(_ksigns(), idx)[idx]


def _t_two_scales_per_32(d: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    nibbles = torch.stack([scales & 15, scales >> 4], dim=-1).to(torch.float32)
    db = d[:, :, None] * (0.5 + nibbles) * 0.25
    return db.repeat_interleave(2, dim=-1).reshape(len(d), 32)


def _t_dequantize_iq2_xxs(raw):
    b = _t_blocks(raw, 66)
    nb = len(b)
    d = f16_bytes_to_f32_torch(b[:, :2])
    words = _t_le(b[:, 2:].reshape(nb, 8, 2, 4))
    indices = b[:, 2:].reshape(nb, 8, 8)[:, :, :4].to(torch.int64)
    db = d[:, :, None] * (0.5 + (words[:, :, 1] >> 28).to(torch.float32))[:, :, None] * 0.25
    sign_idx = (words[:, :, 1:2] >> t_constant((0, 7, 14, 21), torch.int64, b.device)) & 127
    signs = _t_sign_bits(_t_ksigns(sign_idx))
    values = db[..., None] * _t_table(grid(Q.IQ2_XXS), b)[indices] * signs
    return values.reshape(raw.shape[0], -1)


def _t_dequantize_iq2_xs(raw):
    b = _t_blocks(raw, 74)
    d = f16_bytes_to_f32_torch(b[:, :2])
    qs = _t_le(b[:, 2:66].reshape(len(b), 32, 2))
    db = _t_two_scales_per_32(d, b[:, 66:74])
    signs = _t_sign_bits(_t_ksigns(qs >> 9))
    values = db[..., None] * _t_table(grid(Q.IQ2_XS), b)[qs & 511] * signs
    return values.reshape(raw.shape[0], -1)


def _t_dequantize_iq2_s(raw):
    b = _t_blocks(raw, 82)
    nb = len(b)
    d = f16_bytes_to_f32_torch(b[:, :2])
    low, sign_bytes, qh, scales = b[:, 2:34], b[:, 34:66], b[:, 66:74], b[:, 74:82]
    high = (qh.to(torch.int64)[:, :, None] >> t_constant((0, 2, 4, 6), torch.int64, b.device)) & 3
    indices = low.to(torch.int64) | (high.reshape(nb, 32) << 8)
    db = _t_two_scales_per_32(d, scales)
    values = db[..., None] * _t_table(grid(Q.IQ2_S), b)[indices] * _t_sign_bits(sign_bytes)
    return values.reshape(raw.shape[0], -1)


def _t_dequantize_iq3_xxs(raw):
    b = _t_blocks(raw, 98)
    nb = len(b)
    d = f16_bytes_to_f32_torch(b[:, :2])
    indices = b[:, 2:66].reshape(nb, 8, 8).to(torch.int64)
    words = _t_le(b[:, 66:98].reshape(nb, 8, 4))
    db = d * (0.5 + (words >> 28).to(torch.float32)) * 0.5
    sign_idx = (words[:, :, None] >> t_constant((0, 7, 14, 21), torch.int64, b.device)) & 127
    signs = _t_sign_bits(_t_ksigns(sign_idx)).reshape(nb, 8, 32)
    values = db[:, :, None] * _t_table(grid(Q.IQ3_XXS), b)[indices].reshape(nb, 8, 32) * signs
    return values.reshape(raw.shape[0], -1)


def _t_dequantize_iq3_s(raw):
    b = _t_blocks(raw, 110)
    nb = len(b)
    d = f16_bytes_to_f32_torch(b[:, :2])
    low, qh, sign_bytes, scales = b[:, 2:66], b[:, 66:74], b[:, 74:106], b[:, 106:110]
    high = (qh.to(torch.int64)[:, :, None] >> torch.arange(8, device=b.device)) & 1
    indices = low.to(torch.int64) | (high.reshape(nb, 64) << 8)
    nibbles = torch.stack([scales & 15, scales >> 4], dim=-1).reshape(nb, 8).to(torch.int64)
    db = d * (1 + 2 * nibbles).to(torch.float32)
    signs = _t_sign_bits(sign_bytes).reshape(nb, 8, 32)
    values = db[:, :, None] * _t_table(grid(Q.IQ3_S), b)[indices].reshape(nb, 8, 32) * signs
    return values.reshape(raw.shape[0], -1)


def _t_dequantize_iq1_s(raw):
    b = _t_blocks(raw, 50)
    nb = len(b)
    d = f16_bytes_to_f32_torch(b[:, :2])
    qs = b[:, 2:34].reshape(nb, 8, 4).to(torch.int64)
    qh = _t_le(b[:, 34:50].reshape(nb, 8, 2))
    dl = d * (2 * ((qh >> 12) & 7) + 1).to(torch.float32)
    delta = torch.where((qh & 0x8000) != 0, -0.125, 0.125).to(torch.float32)
    high = (qh[:, :, None] >> t_constant((0, 3, 6, 9), torch.int64, b.device)) & 7
    values = dl[:, :, None, None] * (_t_table(grid(Q.IQ1_S), b)[qs | (high << 8)] + delta[:, :, None, None])
    return values.reshape(raw.shape[0], -1)


def _t_dequantize_iq1_m(raw):
    b = _t_blocks(raw, 56)
    nb = len(b)
    qs, qh = b[:, :32].reshape(nb, 8, 4).to(torch.int64), b[:, 32:48].reshape(nb, 8, 2)
    sc = _t_le(b[:, 48:56].reshape(nb, 4, 2))  # (nb, 4)
    bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    halves = torch.stack([bits & 0xFF, bits >> 8], dim=-1).to(torch.uint8)
    d = f16_bytes_to_f32_torch(halves)  # (nb, 1)
    sc = sc.repeat_interleave(2, dim=1)  # (nb, 8)
    shift = t_constant((0, 6), torch.int64, b.device).repeat(4)
    three_bits = (sc[:, :, None] >> (shift[:, None] + t_constant((0, 3), torch.int64, b.device))) & 7
    dl = d[:, :, None] * (2 * three_bits + 1).to(torch.float32)
    nibble = torch.stack([qh & 15, qh >> 4], dim=-1).reshape(nb, 8, 4).to(torch.int64)
    delta = torch.where((nibble & 8) != 0, -0.125, 0.125).to(torch.float32)
    group_dl = dl.repeat_interleave(2, dim=-1)
    values = group_dl[..., None] * (_t_table(grid(Q.IQ1_S), b)[qs | ((nibble & 7) << 8)] + delta[..., None])
    return values.reshape(raw.shape[0], -1)


DEQUANTIZE = {
    Q.IQ1_S: _dequantize_iq1_s,
    Q.IQ1_M: _dequantize_iq1_m,
    Q.IQ2_XXS: _dequantize_iq2_xxs,
    Q.IQ2_XS: _dequantize_iq2_xs,
    Q.IQ2_S: _dequantize_iq2_s,
    Q.IQ3_XXS: _dequantize_iq3_xxs,
    Q.IQ3_S: _dequantize_iq3_s,
}
QUANTIZE: dict = {}
DEQUANTIZE_TORCH = {
    Q.IQ1_S: _t_dequantize_iq1_s,
    Q.IQ1_M: _t_dequantize_iq1_m,
    Q.IQ2_XXS: _t_dequantize_iq2_xxs,
    Q.IQ2_XS: _t_dequantize_iq2_xs,
    Q.IQ2_S: _t_dequantize_iq2_s,
    Q.IQ3_XXS: _t_dequantize_iq3_xxs,
    Q.IQ3_S: _t_dequantize_iq3_s,
}
