"""GGUF/GGML constants, taken from the `gguf` package maintained with llama.cpp so both stay in step."""

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.constants import GGUF_DEFAULT_ALIGNMENT

GGUF_MAGIC = b"GGUF"
# (elements per block, bytes per block) for every tensor type, keyed by GGMLQuantizationType.
GGML_BLOCK_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = dict(GGML_QUANT_SIZES)
SPLIT_COUNT_KEY = "split.count"
SPLIT_INDEX_KEY = "split.no"
SPLIT_TENSORS_KEY = "split.tensors.count"

__all__ = [
    "GGML_BLOCK_SIZES",
    "GGMLQuantizationType",
    "GGUFValueType",
    "GGUF_DEFAULT_ALIGNMENT",
    "GGUF_MAGIC",
    "SPLIT_COUNT_KEY",
    "SPLIT_INDEX_KEY",
    "SPLIT_TENSORS_KEY",
]
