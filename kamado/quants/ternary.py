"""Dequantize the ternary formats TQ1_0 and TQ2_0 (BitNet b1.58 / TriLM weights: -1, 0, +1 times a scale).

TQ1_0 packs 5 trits per byte as a fixed-point fraction (byte = ceil(value * 256 / 243)); trit n of a byte
is recovered by multiplying by 3^n modulo 256 and taking the top bits of 3 times that, exactly as
ggml's dequantize_row_tq1_0. TQ2_0 stores 2 bits per value. Both end with an fp16 scale d; value = (q - 1) * d.
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.quants.floats import f16_bytes_to_f32, f16_bytes_to_f32_torch

_POW3_5 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _trits(packed: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """(nb, k) bytes -> (nb, len(powers), k) trits 0..2, trit n of byte m at [:, n, m]."""
    shifted = packed[:, None, :] * powers[None, :, None]  # uint8: wraps modulo 256 like ggml's uint8_t product
    return ((shifted.astype(np.uint16) * np.uint16(3)) >> np.uint16(8)).astype(np.int8)


def _dequantize_tq1_0(raw):
    b = np.ascontiguousarray(raw).reshape(-1, 54)
    nb = len(b)
    trits = np.concatenate([
        _trits(b[:, :32], _POW3_5).reshape(nb, 160),
        _trits(b[:, 32:48], _POW3_5).reshape(nb, 80),
        _trits(b[:, 48:52], _POW3_5[:4]).reshape(nb, 16),
    ], axis=1)
    return ((trits - np.int8(1)).astype(np.float32) * f16_bytes_to_f32(b[:, 52:54])).reshape(raw.shape[0], -1)


def _dequantize_tq2_0(raw):
    b = np.ascontiguousarray(raw).reshape(-1, 66)
    nb = len(b)
    q = (b[:, :64].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8)[None, None, :, None]) & np.uint8(3)
    return ((q.reshape(nb, 256).astype(np.int8) - np.int8(1)).astype(np.float32) * f16_bytes_to_f32(b[:, 64:66])).reshape(raw.shape[0], -1)


def _t_trits(packed: torch.Tensor, n: int) -> torch.Tensor:
    powers = torch.tensor([1, 3, 9, 27, 81][:n], device=packed.device, dtype=torch.int32)
    shifted = (packed.to(torch.int32)[:, None, :] * powers[None, :, None]) & 0xFF
    return (shifted * 3) >> 8


def _t_dequantize_tq1_0(raw):
    b = raw.contiguous().reshape(-1, 54)
    nb = len(b)
    trits = torch.cat([
        _t_trits(b[:, :32], 5).reshape(nb, 160),
        _t_trits(b[:, 32:48], 5).reshape(nb, 80),
        _t_trits(b[:, 48:52], 4).reshape(nb, 16),
    ], dim=1)
    return ((trits - 1).to(torch.float32) * f16_bytes_to_f32_torch(b[:, 52:54])).reshape(raw.shape[0], -1)


def _t_dequantize_tq2_0(raw):
    b = raw.contiguous().reshape(-1, 66)
    nb = len(b)
    shifts = torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.int32)[None, None, :, None]
    q = (b[:, :64].to(torch.int32).reshape(nb, 2, 1, 32) >> shifts) & 3
    return ((q.reshape(nb, 256) - 1).to(torch.float32) * f16_bytes_to_f32_torch(b[:, 64:66])).reshape(raw.shape[0], -1)


DEQUANTIZE = {Q.TQ1_0: _dequantize_tq1_0, Q.TQ2_0: _dequantize_tq2_0}
QUANTIZE: dict = {}
DEQUANTIZE_TORCH = {Q.TQ1_0: _t_dequantize_tq1_0, Q.TQ2_0: _t_dequantize_tq2_0}
