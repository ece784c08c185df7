"""GGUF/GGML constants, taken from the `gguf` package maintained with llama.cpp so both stay in step."""

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.constants import GGUF_DEFAULT_ALIGNMENT

GGUF_MAGIC = b"GGUF"
# (elements per block, bytes per block) for every tensor type, keyed by GGMLQuantizationType.
GGML_BLOCK_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = dict(GGML_QUANT_SIZES)
# Little-endian numpy dtype of each scalar metadata value type (BOOL is stored as one byte).
SCALAR_DTYPES: dict[GGUFValueType, np.dtype] = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
SPLIT_COUNT_KEY = "split.count"
SPLIT_INDEX_KEY = "split.no"
SPLIT_TENSORS_KEY = "split.tensors.count"

__all__ = [
    "GGML_BLOCK_SIZES",
    "GGMLQuantizationType",
    "GGUFValueType",
    "GGUF_DEFAULT_ALIGNMENT",
    "GGUF_MAGIC",
    "SCALAR_DTYPES",
    "SPLIT_COUNT_KEY",
    "SPLIT_INDEX_KEY",
    "SPLIT_TENSORS_KEY",
]
