"""The GGUF file format: validated mmap reader, atomic writer, split shards."""

from kamado.gguf.constants import GGML_BLOCK_SIZES, GGMLQuantizationType, GGUFValueType
from kamado.gguf.reader import Field, GGUFError, GGUFReader, TensorInfo, split_paths

__all__ = [
    "GGML_BLOCK_SIZES",
    "Field",
    "GGMLQuantizationType",
    "GGUFError",
    "GGUFReader",
    "GGUFValueType",
    "TensorInfo",
    "split_paths",
]
