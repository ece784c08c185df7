"""Write GGUF v3 files: metadata in insertion order, aligned tensor data, atomic output, split shards.

    w = GGUFWriter("model.gguf")                       # alignment=32 by default
    w.add_fields_from(reader.fields)                   # copy fields with their exact types
    w.add_field("general.file_type", 15)               # int -> UINT32; a key set again moves to the end
    w.add_field("x.ids", [1, 2], item_type=GGUFValueType.INT32)
    w.add_tensor("tok.weight", GGMLQuantizationType.Q8_0, (rows, cols), uint8_bytes_or_typed_array)
    w.add_tensor("out.weight", qtype, shape, lambda: make_bytes())   # produced only when written
    paths = w.write()                                  # or write(split_max_size=2 * 10**9)

Semantics (those of llama.cpp's gguf writer and gguf-split, so its files can be reproduced byte for byte):
- `add_field` on a key already present replaces it and moves it to the end, as `gguf_set_val_*` does.
- `general.alignment` is written only when alignment != 32 (appended if the caller did not set it);
  a caller-supplied value must match the writer's alignment.
- `split.no` / `split.count` / `split.tensors.count` are managed here: any supplied copies are dropped, and
  when the output has several shards each shard gets split.no (uint16, 0-based), split.count (uint16) and
  split.tensors.count (int32, tensors over all shards) after its metadata; the other metadata goes in the
  first shard only. A split that yields a single shard writes the plain path (as gguf-py does).
- Shards are cut like `gguf-split`: by tensor count, or when the tensor data (each tensor padded to the
  alignment) would exceed split_max_size. Unlike gguf-split, a tensor larger than split_max_size gets a
  shard of its own instead of aborting.
- Every file is written to a temporary name in the target directory and renamed into place only once all
  shards are complete; on any exception (KeyboardInterrupt included) the temporaries are removed.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from kamado.gguf.constants import (
    GGML_BLOCK_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    SCALAR_DTYPES,
    SPLIT_COUNT_KEY,
    SPLIT_INDEX_KEY,
    SPLIT_TENSORS_KEY,
    GGMLQuantizationType,
    GGUFValueType,
)
from kamado.gguf.reader import MAX_DIMS, Field, GGUFError, NestedArray, shard_path

GGUF_VERSION = 3
ALIGNMENT_KEY = "general.alignment"
MAX_TENSOR_NAME_BYTES = 63  # ggml's GGML_MAX_NAME is 64 including the terminating NUL
_SPLIT_KEYS = (SPLIT_INDEX_KEY, SPLIT_COUNT_KEY, SPLIT_TENSORS_KEY)

_DTYPES = SCALAR_DTYPES
# numpy dtype kind+size -> value type, for typed inputs (numpy scalars and arrays)
_TYPE_OF_DTYPE = {(dt.kind, dt.itemsize): vt for vt, dt in _DTYPES.items() if vt != GGUFValueType.BOOL}
_TYPE_OF_DTYPE[("b", 1)] = GGUFValueType.BOOL
# Besides uint8 bytes, the typed arrays each tensor type accepts (block-quantized types take bytes only).
_TENSOR_DTYPES = {
    GGMLQuantizationType.BF16: np.dtype("<u2"),
    GGMLQuantizationType.F32: np.dtype("<f4"),
    GGMLQuantizationType.F16: np.dtype("<f2"),
    GGMLQuantizationType.F64: np.dtype("<f8"),
    GGMLQuantizationType.I8: np.dtype("i1"),
    GGMLQuantizationType.I16: np.dtype("<i2"),
    GGMLQuantizationType.I32: np.dtype("<i4"),
    GGMLQuantizationType.I64: np.dtype("<i8"),
}

# An array, or a callable returning one or an iterator of uint8 pieces that together make the tensor's bytes
# (a GPU streams its results back through small pinned buffers that way).
TensorData = Union[np.ndarray, Callable[[], Union[np.ndarray, Iterator[np.ndarray]]]]  # noqa: UP007 (a runtime alias: `|` needs Python 3.10 types)


@dataclass(frozen=True)
class _PendingTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order
    nbytes: int
    data: TensorData


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _encode_string(s: str) -> bytes:
    # surrogateescape gives back the exact bytes of vocabulary pieces the reader could not decode as UTF-8
    b = s.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(b)) + b


class GGUFWriter:
    def __init__(self, path: str | os.PathLike, alignment: int = GGUF_DEFAULT_ALIGNMENT):
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1) or alignment >= 1 << 32:
            raise GGUFError(f"{path}: alignment must be a power of two below 2^32, got {alignment!r}")
        self.path = Path(path)
        self.alignment = alignment
        self._fields: dict[str, bytes] = {}  # key -> encoded type + value
        self._tensors: dict[str, _PendingTensor] = {}

    # ---- metadata -------------------------------------------------------------------------------

    def add_field(self, name: str, value: Any, vtype: GGUFValueType | None = None, item_type: GGUFValueType | None = None) -> None:
        """Add (or replace, moving it to the end) a metadata key; the type is inferred when vtype is None."""
        if not isinstance(name, str) or not name:
            raise GGUFError(f"{self.path}: metadata key must be a non-empty string, got {name!r}")
        where = f"{self.path}: metadata {name!r}"
        if vtype is None:
            vtype = _infer_type(value, where)
        vtype = _value_type(vtype, where)
        if vtype == GGUFValueType.ARRAY and item_type is None:
            item_type = _infer_item_type(value, where)
        encoded = struct.pack("<I", vtype) + _encode_value(value, vtype, item_type, where, depth=0)
        if name == ALIGNMENT_KEY and (vtype != GGUFValueType.UINT32 or value != self.alignment):
            raise GGUFError(f"{where} is {value!r} ({vtype.name}) but this writer aligns to {self.alignment} (uint32)")
        self._fields.pop(name, None)
        self._fields[name] = encoded

    def add_fields_from(self, fields: Mapping[str, Field] | Iterable[Field]) -> None:
        """Copy fields (a reader's `.fields`, or Field objects) keeping their exact value and element types."""
        items = fields.values() if isinstance(fields, Mapping) else fields
        for f in items:
            self.add_field(f.name, f.value, f.type, f.item_type)

    # ---- tensors --------------------------------------------------------------------------------

    def add_tensor(self, name: str, qtype: GGMLQuantizationType | int, shape: Iterable[int], data: TensorData) -> None:
        """Add a tensor; shape is numpy order (last axis = row). data: an array of the exact byte size or a
        zero-argument callable returning one (or an iterator of uint8 pieces adding up to it) when the tensor is
        written, so tensors need not all be in memory."""
        if not isinstance(name, str) or not name:
            raise GGUFError(f"{self.path}: tensor name must be a non-empty string, got {name!r}")
        if len(name.encode("utf-8", errors="surrogateescape")) > MAX_TENSOR_NAME_BYTES:
            raise GGUFError(f"{self.path}: tensor name {name!r} is longer than {MAX_TENSOR_NAME_BYTES} bytes (ggml's limit)")
        if name in self._tensors:
            raise GGUFError(f"{self.path}: tensor {name!r} added twice")
        try:
            qtype = GGMLQuantizationType(qtype)
            block, type_size = GGML_BLOCK_SIZES[qtype]
        except (ValueError, KeyError):
            raise GGUFError(f"{self.path}: tensor {name!r}: unknown tensor type {qtype!r}") from None
        shape = tuple(shape)
        if not 1 <= len(shape) <= MAX_DIMS or not all(isinstance(d, (int, np.integer)) and 0 < d < 1 << 62 for d in shape):
            raise GGUFError(f"{self.path}: tensor {name!r}: shape {shape} must have 1..{MAX_DIMS} positive dimensions")
        shape = tuple(int(d) for d in shape)
        if shape[-1] % block:
            raise GGUFError(f"{self.path}: tensor {name!r}: row length {shape[-1]} is not a multiple of {qtype.name}'s block size {block}")
        nbytes = int(np.prod(shape[:-1], dtype=object)) * (shape[-1] // block) * type_size
        if not callable(data):
            self._check_data(name, qtype, nbytes, data)
        self._tensors[name] = _PendingTensor(name, qtype, shape, nbytes, data)

    def _check_data(self, name: str, qtype: GGMLQuantizationType, nbytes: int, data: Any) -> np.ndarray:
        if not isinstance(data, np.ndarray):
            raise GGUFError(f"{self.path}: tensor {name!r}: data must be a numpy array, got {type(data).__name__}")
        if data.dtype != np.uint8 and data.dtype != _TENSOR_DTYPES.get(qtype):
            accepted = "uint8 bytes" + (f" or {_TENSOR_DTYPES[qtype]}" if qtype in _TENSOR_DTYPES else "")
            raise GGUFError(f"{self.path}: tensor {name!r}: {qtype.name} data must be {accepted}, got {data.dtype}")
        if data.nbytes != nbytes:
            raise GGUFError(f"{self.path}: tensor {name!r}: data has {data.nbytes} bytes, {qtype.name} tensor needs {nbytes}")
        return data

    # ---- output ---------------------------------------------------------------------------------

    def write(self, split_max_size: int | None = None, split_max_tensors: int | None = None,
              shard_tensor_counts: list[int] | None = None) -> list[Path]:
        """Write the file (or shards NAME-0000i-of-0000N.gguf) atomically; returns the paths written.

        shard_tensor_counts cuts the shards explicitly (tensors in order), e.g. to keep an input's split."""
        if shard_tensor_counts is not None:
            if sum(shard_tensor_counts) != len(self._tensors) or min(shard_tensor_counts, default=0) < 1:
                raise GGUFError(f"{self.path}: shard_tensor_counts {shard_tensor_counts} do not cover the {len(self._tensors)} tensors")
            tensors = list(self._tensors.values())
            bounds = np.cumsum([0, *shard_tensor_counts])
            shards = [tensors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            shards = self._plan_shards(split_max_size, split_max_tensors)
        if len(shards) == 1:
            targets = [self.path]
        else:
            targets = [shard_path(self.path, i, len(shards)) for i in range(len(shards))]
        temporaries: list[Path] = []
        renamed: list[Path] = []
        current = targets[0]  # the file being produced, for error messages
        try:
            for i, (target, tensors) in enumerate(zip(targets, shards, strict=True)):
                current = target
                tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
                temporaries.append(tmp)
                self._write_file(tmp, self._shard_fields(i, len(shards)), tensors)
            for tmp, target in zip(temporaries, targets, strict=True):
                current = target
                os.replace(tmp, target)
                renamed.append(target)
        except BaseException as e:
            for p in temporaries + renamed:
                p.unlink(missing_ok=True)
            if isinstance(e, OSError):  # disk full, no such directory, permissions: name the file
                raise GGUFError(f"{current}: cannot write: {e}") from e
            raise
        return targets

    def _plan_shards(self, split_max_size: int | None, split_max_tensors: int | None) -> list[list[_PendingTensor]]:
        if split_max_size is not None and split_max_tensors is not None:
            raise GGUFError(f"{self.path}: give split_max_size or split_max_tensors, not both (as gguf-split)")
        for label, v in (("split_max_size", split_max_size), ("split_max_tensors", split_max_tensors)):
            if v is not None and (not isinstance(v, int) or v <= 0):
                raise GGUFError(f"{self.path}: {label} must be a positive integer, got {v!r}")
        shards: list[list[_PendingTensor]] = [[]]
        shard_bytes = 0
        for t in self._tensors.values():
            padded = _pad(t.nbytes, self.alignment)
            full = (split_max_tensors is not None and len(shards[-1]) >= split_max_tensors) or (
                split_max_size is not None and shard_bytes + padded > split_max_size
            )
            if full and shards[-1]:
                shards.append([])
                shard_bytes = 0
            shards[-1].append(t)
            shard_bytes += padded
        return shards

    def _shard_fields(self, index: int, count: int) -> list[tuple[str, bytes]]:
        fields = [(k, v) for k, v in self._fields.items() if k not in _SPLIT_KEYS] if index == 0 else []
        if self.alignment != GGUF_DEFAULT_ALIGNMENT and not any(k == ALIGNMENT_KEY for k, _ in fields):
            fields.append((ALIGNMENT_KEY, struct.pack("<II", GGUFValueType.UINT32, self.alignment)))
        if count > 1:
            fields.append((SPLIT_INDEX_KEY, struct.pack("<IH", GGUFValueType.UINT16, index)))
            fields.append((SPLIT_COUNT_KEY, struct.pack("<IH", GGUFValueType.UINT16, count)))
            fields.append((SPLIT_TENSORS_KEY, struct.pack("<Ii", GGUFValueType.INT32, len(self._tensors))))
        return fields

    def _write_file(self, path: Path, fields: list[tuple[str, bytes]], tensors: list[_PendingTensor]) -> None:
        header = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(fields))]
        header += [_encode_string(k) + v for k, v in fields]
        offset = 0
        for t in tensors:
            ne = t.shape[::-1]
            header.append(_encode_string(t.name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, t.qtype, offset))
            offset += _pad(t.nbytes, self.alignment)
        head = b"".join(header)
        # O_EXCL on a random name: never follow or clobber something already there; mode 0o666 honours the umask
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            f.write(bytes(_pad(len(head), self.alignment) - len(head)))
            for t in tensors:
                data = t.data() if callable(t.data) else t.data
                if isinstance(data, np.ndarray):
                    f.write(memoryview(np.ascontiguousarray(self._check_data(t.name, t.qtype, t.nbytes, data))).cast("B"))
                else:
                    self._write_pieces(f, t, data)
                f.write(bytes(_pad(t.nbytes, self.alignment) - t.nbytes))

    def _write_pieces(self, f, t: _PendingTensor, pieces: Iterator[np.ndarray]) -> None:
        error = GGUFError(f"{self.path}: tensor {t.name!r}: data pieces must be uint8 arrays adding up to {t.nbytes} bytes")
        written = 0
        for piece in pieces:
            if not isinstance(piece, np.ndarray) or piece.dtype != np.uint8 or written + piece.nbytes > t.nbytes:
                raise error
            f.write(memoryview(np.ascontiguousarray(piece)).cast("B"))
            written += piece.nbytes
        if written != t.nbytes:
            raise error


# ---- value encoding -----------------------------------------------------------------------------


def _value_type(vtype: Any, where: str) -> GGUFValueType:
    try:
        return GGUFValueType(vtype)
    except ValueError:
        raise GGUFError(f"{where}: unknown value type {vtype!r}") from None


def _infer_type(value: Any, where: str) -> GGUFValueType:
    if isinstance(value, np.generic):
        vt = _TYPE_OF_DTYPE.get((value.dtype.kind, value.dtype.itemsize))
        if vt is None:
            raise GGUFError(f"{where}: cannot store a numpy {value.dtype} value")
        return vt
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, bool):
        return GGUFValueType.BOOL
    if isinstance(value, int):
        return _int_type([value], where)
    if isinstance(value, float):
        return GGUFValueType.FLOAT32
    if isinstance(value, (list, tuple, np.ndarray)):
        return GGUFValueType.ARRAY
    raise GGUFError(f"{where}: cannot infer a GGUF type for a {type(value).__name__} value; pass vtype")


def _int_type(values: list[int], where: str) -> GGUFValueType:
    lo, hi = min(values), max(values)
    if lo >= 0 and hi < 1 << 32:
        return GGUFValueType.UINT32
    if lo >= -(1 << 31) and hi < 1 << 31:
        return GGUFValueType.INT32
    if lo >= -(1 << 63) and hi < 1 << 63:
        return GGUFValueType.INT64
    if lo >= 0 and hi < 1 << 64:
        return GGUFValueType.UINT64
    raise GGUFError(f"{where}: integer {lo if lo < -(1 << 63) else hi} does not fit in 64 bits")


def _infer_item_type(value: Any, where: str) -> GGUFValueType:
    if isinstance(value, NestedArray):
        return value.item_type
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "US":
            return GGUFValueType.STRING
        vt = _TYPE_OF_DTYPE.get((value.dtype.kind, value.dtype.itemsize))
        if vt is None:
            raise GGUFError(f"{where}: cannot store a numpy array of {value.dtype}; pass item_type")
        return vt
    if not isinstance(value, (list, tuple)):
        raise GGUFError(f"{where}: an ARRAY value must be a list, tuple or numpy array, got {type(value).__name__}")
    if not value:
        raise GGUFError(f"{where}: cannot infer the element type of an empty array; pass item_type")
    kinds = {_infer_type(v, where) if not isinstance(v, int) or isinstance(v, bool) else "int" for v in value}
    if kinds == {"int"}:
        return _int_type(list(value), where)
    if kinds <= {"int", GGUFValueType.FLOAT32}:
        return GGUFValueType.FLOAT32
    if len(kinds) == 1:
        return kinds.pop()
    names = sorted(k if isinstance(k, str) else k.name for k in kinds)
    raise GGUFError(f"{where}: array elements of mixed types ({', '.join(names)}); pass item_type")


def _encode_value(value: Any, vtype: GGUFValueType, item_type: GGUFValueType | None, where: str, depth: int) -> bytes:
    if vtype == GGUFValueType.STRING:
        if not isinstance(value, str):
            raise GGUFError(f"{where}: STRING value must be a str, got {type(value).__name__}")
        return _encode_string(value)
    if vtype != GGUFValueType.ARRAY:
        return _encode_scalars([value], vtype, where)
    if depth > 8:
        raise GGUFError(f"{where}: arrays nested too deeply")
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray)):
        raise GGUFError(f"{where}: ARRAY value must be a list, tuple or numpy array, got {type(value).__name__}")
    item_type = _value_type(item_type, where)
    head = struct.pack("<IQ", item_type, len(value))
    if item_type == GGUFValueType.STRING:
        return head + b"".join(_encode_value(v, item_type, None, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
    if item_type == GGUFValueType.ARRAY:
        # each element is itself a full array value: element type, count, elements
        parts = [_encode_value(v, item_type, _infer_item_type(v, f"{where}[{i}]"), f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        return head + b"".join(parts)
    return head + _encode_scalars(value, item_type, where)


def _encode_scalars(values: Any, vtype: GGUFValueType, where: str) -> bytes:
    """Values (a list or a 1-D numpy array) checked against vtype's range and packed little-endian."""
    dt = _DTYPES[vtype]
    if isinstance(values, np.ndarray):
        if values.ndim > 1:
            raise GGUFError(f"{where}: expected a flat sequence of {vtype.name} values, got an array of shape {values.shape}")
        kind = values.dtype.kind
        items = values
    else:
        # Python values are checked one by one: numpy would turn [0, 2**63] into float64 and lose bits.
        kinds = {"b" if isinstance(v, (bool, np.bool_)) else "i" if isinstance(v, (int, np.integer))
                 else "f" if isinstance(v, (float, np.floating)) else "?" for v in values}
        if "?" in kinds:
            bad = next(v for v in values if not isinstance(v, (bool, int, float, np.generic)))
            raise GGUFError(f"{where}: {vtype.name} value expected, got {type(bad).__name__} {bad!r:.60}")
        kind = kinds.pop() if len(kinds) == 1 else "f" if kinds == {"i", "f"} else "mixed" if kinds else "empty"
        items = values
    if not len(items):
        return b""
    if vtype == GGUFValueType.BOOL:
        if kind != "b":
            raise GGUFError(f"{where}: BOOL values must be booleans")
        return np.asarray(items, dtype=bool).astype(dt).tobytes()
    if dt.kind in "iu":
        if kind not in "iu":
            raise GGUFError(f"{where}: {vtype.name} values must be integers")
        lo, hi = int(min(items)), int(max(items))
        info = np.iinfo(dt)
        if lo < info.min or hi > info.max:
            raise GGUFError(f"{where}: value {lo if lo < info.min else hi} does not fit in {vtype.name}")
        return np.asarray(items, dtype=dt).tobytes()
    if kind not in "iuf":
        raise GGUFError(f"{where}: {vtype.name} values must be numbers")
    try:
        wide = np.asarray(items, dtype=np.float64) if not isinstance(items, np.ndarray) or kind in "iu" else items
    except OverflowError:
        raise GGUFError(f"{where}: a value does not fit in {vtype.name}") from None
    with np.errstate(over="ignore"):
        out = wide.astype(dt)
    overflow = np.isinf(out) & np.isfinite(wide)
    if overflow.any():
        raise GGUFError(f"{where}: value {wide[overflow][0]!r} does not fit in {vtype.name}")
    return out.tobytes()
