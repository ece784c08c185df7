"""Dequantize MXFP4 (OCP microscaling FP4): 32 E2M1 values sharing one E8M0 power-of-two scale.

ggml stores the E2M1 values doubled as int8 (kvalues_mxfp4) and halves the scale instead
(ggml_e8m0_to_fp32_half), so value = kvalues[nibble] * 2^(e - 128); low nibbles hold values 0..15,
high nibbles 16..31.
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q

KVALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def e8m0_to_f32_half(e: np.ndarray) -> np.ndarray:
    """2^(e - 128) as float32, exactly as ggml_e8m0_to_fp32_half (e = 0, 1 give subnormals)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _dequantize_mxfp4(raw):
    b = np.ascontiguousarray(raw).reshape(-1, 17)
    q = np.concatenate([b[:, 1:] & np.uint8(15), b[:, 1:] >> np.uint8(4)], axis=1)
    return (KVALUES[q] * e8m0_to_f32_half(b[:, :1])).reshape(raw.shape[0], -1)


def _t_dequantize_mxfp4(raw):
    b = raw.contiguous().reshape(-1, 17)
    q = torch.cat([b[:, 1:] & 15, b[:, 1:] >> 4], dim=1).to(torch.int64)
    e = b[:, :1].to(torch.int32)
    bits = torch.where(e < 2, 0x00200000 << e, (e - 1) << 23)
    return (torch.from_numpy(KVALUES).to(b.device)[q] * bits.view(torch.float32)).reshape(raw.shape[0], -1)


DEQUANTIZE = {Q.MXFP4: _dequantize_mxfp4}
QUANTIZE: dict = {}
DEQUANTIZE_TORCH = {Q.MXFP4: _t_dequantize_mxfp4}
