"""Reading a Hugging Face checkpoint folder: config.json and the weights, one tensor at a time.

Weights come from model*.safetensors (sharded ones listed by model.safetensors.index.json) or, failing
that, pytorch_model*.bin, in the order llama.cpp's converter visits them (parts sorted by file name,
tensors in each file's own order). Nothing is read until a tensor's `load()` is called, so converting
needs memory for about one tensor at a time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kamado.convert.errors import ConvertError

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass(frozen=True)
class SourceTensor:
    """One tensor of the checkpoint: its name, dtype and shape, and how to read it."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]

    def meta(self) -> torch.Tensor:
        """A data-less stand-in with the same dtype and shape, for planning shapes without reading."""
        return torch.empty(self.shape, dtype=self.dtype, device="meta")


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConvertError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def read_optional_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _safetensors_tensors(path: Path) -> list[SourceTensor]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConvertError(f"{path}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise ConvertError(f"{path}: safetensors header length {header_len} runs past the end of the file")
            header = json.loads(f.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: corrupt safetensors header ({e})") from None
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror})") from None
    data_start = 8 + header_len
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{path}: tensor {name!r} has a malformed or unsupported header entry {info!r}") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or data_start + end > size:
            raise ConvertError(f"{path}: tensor {name!r} data range [{begin}, {end}) does not fit its shape {list(shape)} or the file")
        tensors.append(SourceTensor(name, dtype, shape, _file_reader(path, data_start + begin, nbytes, dtype, shape)))
    return tensors


def _file_reader(path: Path, offset: int, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...]) -> Callable[[], torch.Tensor]:
    # Read into a private buffer rather than mmap: resident memory then holds only the tensor being converted.
    def load() -> torch.Tensor:
        buffer = np.empty(nbytes, dtype=np.uint8)
        with open(path, "rb") as f:
            f.seek(offset)
            if f.readinto(buffer) != nbytes:
                raise ConvertError(f"{path}: file is shorter than its header says")
        return torch.from_numpy(buffer).view(dtype).reshape(shape)

    return load


def _pytorch_tensors(path: Path) -> list[SourceTensor]:
    try:
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe pickles
        raise ConvertError(f"{path}: cannot load as a PyTorch checkpoint with weights_only=True ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ConvertError(f"{path}: expected a state dict of tensors")
    tensors = []
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConvertError(f"{path}: entry {name!r} is not a tensor")
        tensors.append(SourceTensor(name, value.dtype, tuple(value.shape), lambda value=value: value))
    return tensors


def _part_names(model_dir: Path, prefix: str, suffix: str) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix))


def list_tensors(model_dir: Path) -> list[SourceTensor]:
    """Every weight tensor of the checkpoint, in llama.cpp's visiting order, checked against the shard index."""
    parts = _part_names(model_dir, "model", ".safetensors")
    is_safetensors = bool(parts)
    if not is_safetensors:
        parts = _part_names(model_dir, "pytorch_model", ".bin")
    index_path = model_dir / ("model.safetensors.index.json" if is_safetensors else "pytorch_model.bin.index.json")
    weight_map: dict[str, str] = {}
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConvertError(f"{index_path}: no 'weight_map' object")
        parts = sorted(set(weight_map.values()))
        missing = [p for p in parts if not (model_dir / p).is_file()]
        if missing:
            raise ConvertError(f"{index_path} lists weight files that are missing: {', '.join(missing)}")
    if not parts:
        raise ConvertError(f"{model_dir}: no weights found (expected model*.safetensors or pytorch_model*.bin)")

    tensors: list[SourceTensor] = []
    for part in parts:
        read = _safetensors_tensors if is_safetensors else _pytorch_tensors
        tensors.extend(read(model_dir / part))
    if weight_map:
        found = {t.name for t in tensors}
        missing = sorted(set(weight_map) - found)
        extra = sorted(found - set(weight_map))
        if missing or extra:
            raise ConvertError(f"{index_path} does not match the weight files: missing tensors {missing[:5]}, unlisted tensors {extra[:5]}")
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ConvertError(f"{model_dir}: a tensor name occurs in more than one weight file")
    return tensors
