"""The GGUF file format: validated mmap reader, atomic writer, split shards."""

from kamado.gguf.constants import GGML_BLOCK_SIZES, GGMLQuantizationType, GGUFValueType
from kamado.gguf.reader import Field, GGUFError, GGUFReader, NestedArray, TensorInfo, shard_path, split_paths
from kamado.gguf.writer import GGUFWriter

__all__ = [
    "GGML_BLOCK_SIZES",
    "Field",
    "GGMLQuantizationType",
    "GGUFError",
    "GGUFReader",
    "GGUFValueType",
    "GGUFWriter",
    "NestedArray",
    "TensorInfo",
    "shard_path",
    "split_paths",
]
