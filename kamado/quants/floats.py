"""Plain float and integer tensor types: F32, F16, BF16 (quantize and dequantize) and F64/I8/I16/I32/I64 (dequantize).

F16 and BF16 are written exactly as ggml writes them: F16 rounds to nearest even like ggml's
ggml_compute_fp32_to_fp16 (every NaN becomes sign|0x7E00), BF16 like ggml_compute_fp32_to_bf16
(round to nearest even; NaN keeps its top bits and is forced quiet).
"""

from __future__ import annotations

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q

_F16_QUIET_NAN = np.uint16(0x7E00)


def f32_to_f16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> float16 bit patterns (uint16), as ggml's fp32->fp16 conversion."""
    x = np.asarray(x, dtype=np.float32)
    half = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        # IEEE conversion keeps NaN payload bits; ggml replaces every NaN with the canonical quiet NaN.
        sign = (x.view(np.uint32) >> np.uint32(16)).astype(np.uint16) & np.uint16(0x8000)
        half = np.where(nan, sign | _F16_QUIET_NAN, half)
    return half


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), as ggml_compute_fp32_to_bf16."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    # uint32 cannot overflow here: only NaN bit patterns come near 2^32, and those are replaced below.
    rounded = ((u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    if nan.any():
        quiet = ((u >> np.uint32(16)) | np.uint32(64)).astype(np.uint16)
        rounded = np.where(nan, quiet, rounded)
    return rounded


def f16_bytes_to_f32(two_bytes: np.ndarray) -> np.ndarray:
    """(..., 2) uint8 little-endian halves -> (..., 1) float32 (exact)."""
    return np.ascontiguousarray(two_bytes).view(np.float16).astype(np.float32)


def f16_bytes_to_f32_torch(two_bytes: torch.Tensor) -> torch.Tensor:
    """Torch twin of f16_bytes_to_f32, on the tensor's device."""
    return two_bytes.contiguous().view(torch.float16).to(torch.float32)


def _quantize_f32(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint8)


def _quantize_f16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return f32_to_f16_bits(x).view(np.uint8)


def _quantize_bf16(x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    return f32_to_bf16_bits(x).view(np.uint8)


# ---------------------------------------------------------------- torch twins (any device)


def scalar_like(value, like: torch.Tensor) -> torch.Tensor:
    """A float32 0-d tensor on like's device. Divisions take their scalar operands in this form: CUDA's `t / python_float`
    multiplies by the reciprocal and `python_float / t` is `t.reciprocal() * value`, neither of which rounds like C's `/`."""
    return torch.full((), float(np.float32(value)), dtype=torch.float32, device=like.device)


def div(a, b) -> torch.Tensor:
    """IEEE float32 a / b where either side may be a Python/numpy scalar (see scalar_like)."""
    if not isinstance(a, torch.Tensor):
        a = scalar_like(a, b)
    if not isinstance(b, torch.Tensor):
        b = scalar_like(b, a)
    return torch.div(a, b)


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt, as C's sqrtf. Torch's vectorised CPU float32 sqrt is not (about 1 in 150 results
    is one ulp off); a float64 sqrt rounded to float32 is exact for every float32 input (53 >= 2*24 + 2 bits)."""
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def f32_to_f16_bits_torch(x: torch.Tensor) -> torch.Tensor:
    """Torch twin of f32_to_f16_bits: float32 -> int16 tensor holding the ggml fp16 bit patterns."""
    half = x.to(torch.float16).view(torch.int16)
    nan = torch.isnan(x)
    sign = (x.view(torch.int32) >> 16) & 0x8000
    return torch.where(nan, (sign | int(_F16_QUIET_NAN)).to(torch.int16), half)


def f32_to_bf16_bits_torch(x: torch.Tensor) -> torch.Tensor:
    """Torch twin of f32_to_bf16_bits (int64 arithmetic stands in for numpy's uint32)."""
    u = x.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    return torch.where(nan, (u >> 16) | 64, rounded).to(torch.int16)


def _quantize_f32_torch(x: torch.Tensor, imatrix) -> torch.Tensor:
    return x.contiguous().view(torch.uint8)


def _quantize_f16_torch(x: torch.Tensor, imatrix) -> torch.Tensor:
    return f32_to_f16_bits_torch(x.contiguous()).view(torch.uint8)


def _quantize_bf16_torch(x: torch.Tensor, imatrix) -> torch.Tensor:
    return f32_to_bf16_bits_torch(x).view(torch.uint8)


def _cast(dtype):
    def dequantize(raw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(raw).view(dtype).astype(np.float32)

    return dequantize


def _dequantize_bf16(raw: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(raw).view(np.uint16).astype(np.uint32) << np.uint32(16)
    return bits.view(np.float32)


def _torch_cast(dtype):
    def dequantize(raw: torch.Tensor) -> torch.Tensor:
        return raw.contiguous().view(dtype).to(torch.float32)

    return dequantize


_NUMPY_DTYPES = {Q.F32: np.float32, Q.F16: np.float16, Q.F64: np.float64, Q.I8: np.int8, Q.I16: np.int16, Q.I32: np.int32, Q.I64: np.int64}
_TORCH_DTYPES = {
    Q.F32: torch.float32,
    Q.F16: torch.float16,
    Q.BF16: torch.bfloat16,
    Q.F64: torch.float64,
    Q.I8: torch.int8,
    Q.I16: torch.int16,
    Q.I32: torch.int32,
    Q.I64: torch.int64,
}

DEQUANTIZE = {q: _cast(dt) for q, dt in _NUMPY_DTYPES.items()} | {Q.BF16: _dequantize_bf16}
QUANTIZE = {Q.F32: _quantize_f32, Q.F16: _quantize_f16, Q.BF16: _quantize_bf16}
DEQUANTIZE_TORCH = {q: _torch_cast(dt) for q, dt in _TORCH_DTYPES.items()}
QUANTIZE_TORCH = {Q.F32: _quantize_f32_torch, Q.F16: _quantize_f16_torch, Q.BF16: _quantize_bf16_torch}
