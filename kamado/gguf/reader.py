"""Read GGUF files (v2 and v3) through mmap, validating everything: model files are untrusted input.

A `GGUFReader` exposes:
- `fields`: dict name -> `Field` (value type, Python/numpy value), in file order;
- `metadata`: dict name -> value (the same values, without the types);
- `tensors`: dict name -> `TensorInfo` with `raw`, a zero-copy uint8 view of the tensor bytes shaped
  (*shape[:-1], bytes_per_row), where `shape` is in numpy order (the last axis is ggml's ne[0]).
Arrays of numbers are numpy arrays (zero-copy), arrays of strings are lists; an array inside an array is a
numpy array or a `NestedArray` (a list that keeps its element type), so a writer can copy it exactly.
Split files (NAME-00001-of-0000N.gguf) open as one model, given any shard: metadata from the first shard,
tensors from all; split.count / split.no / split.tensors.count, when present, must agree with the files found.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class GGUFError(ValueError):
    """A GGUF file is malformed or unsupported; the message names the file, the field or tensor, the offset."""


# Limits that no real model reaches; they keep a hostile header from making us allocate or loop forever.
MAX_TENSORS = 1 << 20
MAX_FIELDS = 1 << 20
MAX_DIMS = 4
MAX_STRING_BYTES = 1 << 30

_SCALARS = SCALAR_DTYPES


@dataclass(frozen=True)
class Field:
    name: str
    type: GGUFValueType
    value: Any
    item_type: GGUFValueType | None = None  # for arrays: the element type (ARRAY for nested arrays)
    offset: int = 0  # where the key starts in the file


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: shape[-1] == ne[0], the row length
    offset: int  # absolute offset of the data in its file
    nbytes: int
    raw: np.ndarray  # uint8, (*shape[:-1], bytes_per_row), a view into the mmap
    path: Path

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


_U64 = struct.Struct("<Q")


def _item(what: str, i: int, indexed: bool) -> str:
    return f"{what}[{i}]" if indexed else what


class NestedArray(list):
    """An array inside an array whose elements are strings or arrays; `item_type` keeps their exact type.
    (Inner arrays of numbers are numpy arrays, whose dtype tells their type.)"""

    def __init__(self, values, item_type: GGUFValueType):
        super().__init__(values)
        self.item_type = item_type


class _Cursor:
    """Sequential little-endian decoding of a buffer with bounds checks that name the file and offset."""

    def __init__(self, buf, path: Path):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def error(self, what: str, at: int | None = None) -> GGUFError:
        return GGUFError(f"{self.path}: {what} (at offset {self.pos if at is None else at})")

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise self.error(f"truncated file: {what} needs {n} bytes, {self.size - start} left", start)
        self.pos = start + n
        return start

    def u32(self, what: str) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8, what))[0]

    def string(self, what: str) -> str:
        return self.strings(1, what, indexed=False)[0]

    def strings(self, count: int, what: str, indexed: bool = True) -> list[str]:
        """`count` length-prefixed strings; one tight loop because vocabularies hold hundreds of thousands."""
        buf, size, pos, unpack = self.buf, self.size, self.pos, _U64.unpack_from
        out = []
        for i in range(count):
            if pos + 8 > size:
                raise self.error(f"truncated file: length of {_item(what, i, indexed)} needs 8 bytes, {size - pos} left", pos)
            (n,) = unpack(buf, pos)
            if n > MAX_STRING_BYTES:
                raise self.error(f"{_item(what, i, indexed)}: absurd string length {n}", pos)
            pos += 8
            if n > size - pos:
                raise self.error(f"truncated file: {_item(what, i, indexed)} needs {n} bytes, {size - pos} left", pos)
            data = buf[pos : pos + n]
            pos += n
            try:
                out.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                # Vocabularies may hold pieces that are not valid UTF-8; keep their bytes recoverable.
                out.append(data.decode("utf-8", errors="surrogateescape"))
        self.pos = pos
        return out

    def value(self, vtype: int, what: str, depth: int = 0) -> tuple[Any, GGUFValueType | None]:
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise self.error(f"{what}: unknown value type {vtype}", self.pos - 4) from None
        if vtype in _SCALARS:
            dt = _SCALARS[vtype]
            start = self.take(dt.itemsize, what)
            v = np.frombuffer(self.buf, dt, 1, start)[0].item()
            return (bool(v) if vtype == GGUFValueType.BOOL else v), None
        if vtype == GGUFValueType.STRING:
            return self.string(what), None
        # ARRAY
        if depth > 8:
            raise self.error(f"{what}: arrays nested too deeply")
        item_raw = self.u32(f"{what} element type")
        try:
            item = GGUFValueType(item_raw)
        except ValueError:
            raise self.error(f"{what}: unknown array element type {item_raw}", self.pos - 4) from None
        count = self.u64(f"{what} length")
        if item in _SCALARS:
            dt = _SCALARS[item]
            if count > (self.size - self.pos) // dt.itemsize:
                raise self.error(f"{what}: array of {count} elements runs past the end of the file")
            start = self.take(count * dt.itemsize, what)
            arr = np.frombuffer(self.buf, dt, count, start)
            return (arr.astype(bool) if item == GGUFValueType.BOOL else arr), item
        # Strings take at least 8 bytes each, arrays at least 12: a huge count fails here, before any loop.
        if count > (self.size - self.pos) // 8:
            raise self.error(f"{what}: array of {count} elements runs past the end of the file")
        if item == GGUFValueType.STRING:
            return self.strings(count, what), item
        inner = [self.value(item, f"{what}[{i}]", depth + 1) for i in range(count)]
        return [v if isinstance(v, np.ndarray) else NestedArray(v, t) for v, t in inner], item


def _tensor_nbytes(qtype: GGMLQuantizationType, ne: list[int], name: str, path: Path) -> int:
    block, type_size = GGML_BLOCK_SIZES[qtype]
    if ne[0] % block:
        raise GGUFError(f"{path}: tensor {name!r}: row length {ne[0]} is not a multiple of {qtype.name}'s block size {block}")
    n_rows = int(np.prod(ne[1:], dtype=object)) if len(ne) > 1 else 1
    return n_rows * (ne[0] // block) * type_size


class _Shard:
    """One GGUF file: header, metadata and tensor table, validated."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size == 0:
                    raise GGUFError(f"{path}: empty file, not a GGUF model")
                self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise GGUFError(f"{path}: cannot open: {e.strerror}") from None
        cur = _Cursor(self.mm, path)
        magic = cur.take(4, "magic")
        if bytes(self.mm[magic : magic + 4]) != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (magic {bytes(self.mm[0:4])!r} at offset 0, expected b'GGUF')")
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            hint = " (big-endian files are not supported)" if self.version >= 1 << 16 else ""
            raise GGUFError(f"{path}: unsupported GGUF version {self.version} at offset 4; 2 and 3 are supported{hint}")
        n_tensors = cur.u64("tensor count")
        n_fields = cur.u64("metadata count")
        if n_tensors > MAX_TENSORS:
            raise GGUFError(f"{path}: absurd tensor count {n_tensors} at offset 8")
        if n_fields > MAX_FIELDS:
            raise GGUFError(f"{path}: absurd metadata count {n_fields} at offset 16")

        self.fields: dict[str, Field] = {}
        for i in range(n_fields):
            at = cur.pos
            key = cur.string(f"metadata key #{i}")
            if key in self.fields:
                raise GGUFError(f"{path}: duplicate metadata key {key!r} at offset {at}")
            vtype = cur.u32(f"type of {key!r}")
            value, item = cur.value(vtype, f"metadata {key!r}")
            self.fields[key] = Field(key, GGUFValueType(vtype), value, item, at)

        self.alignment = GGUF_DEFAULT_ALIGNMENT
        if "general.alignment" in self.fields:
            a = self.fields["general.alignment"]
            if a.type != GGUFValueType.UINT32 or a.value <= 0 or a.value & (a.value - 1):
                raise GGUFError(f"{path}: general.alignment must be a power-of-two uint32, got {a.value!r} at offset {a.offset}")
            self.alignment = a.value

        infos = []
        names = set()
        for i in range(n_tensors):
            at = cur.pos
            name = cur.string(f"name of tensor #{i}")
            if name in names:
                raise GGUFError(f"{path}: duplicate tensor name {name!r} at offset {at}")
            names.add(name)
            n_dims = cur.u32(f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed) at offset {cur.pos - 4}")
            ne = [cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
            if any(d == 0 or d >= 1 << 40 for d in ne) or int(np.prod(ne, dtype=object)) >= 1 << 48:
                raise GGUFError(f"{path}: tensor {name!r} has absurd dimensions {ne} at offset {at}")
            traw = cur.u32(f"type of tensor {name!r}")
            try:
                qtype = GGMLQuantizationType(traw)
                GGML_BLOCK_SIZES[qtype]
            except (ValueError, KeyError):
                raise GGUFError(f"{path}: tensor {name!r} has unknown type {traw} at offset {cur.pos - 4}") from None
            offset = cur.u64(f"data offset of tensor {name!r}")
            infos.append((name, qtype, ne, offset, at))

        data_start = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        spans = []
        for name, qtype, ne, offset, at in infos:
            if offset % self.alignment:
                raise GGUFError(f"{path}: tensor {name!r} data offset {offset} is not aligned to {self.alignment} (info at offset {at})")
            nbytes = _tensor_nbytes(qtype, ne, name, path)
            start = data_start + offset
            if start + nbytes > size:
                raise GGUFError(f"{path}: tensor {name!r} data [{start}, {start + nbytes}) runs past the end of the file ({size} bytes)")
            shape = tuple(reversed(ne))
            block, type_size = GGML_BLOCK_SIZES[qtype]
            row_bytes = ne[0] // block * type_size
            raw = np.frombuffer(self.mm, np.uint8, nbytes, start).reshape(*shape[:-1], row_bytes)
            self.tensors[name] = TensorInfo(name, qtype, shape, start, nbytes, raw, path)
            spans.append((start, start + nbytes, name))
        spans.sort()
        for (_s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:], strict=False):
            if s1 < e0:
                raise GGUFError(f"{path}: tensors {n0!r} and {n1!r} overlap at offset {s1}")


_SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<idx>\d{5})-of-(?P<n>\d{5})\.gguf$")


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """The file name of shard `index` (0-based) of `count`, as llama.cpp names them: NAME-00001-of-00003.gguf."""
    p = Path(path)
    stem = p.name[: -len(".gguf")] if p.name.endswith(".gguf") else p.name
    return p.with_name(f"{stem}-{index + 1:05d}-of-{count:05d}.gguf")


def split_paths(path: str | os.PathLike) -> list[Path]:
    """The shard files of a split model given any one of them (or just the file itself if not split)."""
    p = Path(path)
    m = _SPLIT_RE.match(p.name)
    if not m:
        return [p]
    idx, n = int(m["idx"]), int(m["n"])
    if not 1 <= idx <= n:
        raise GGUFError(f"{p}: shard number {idx} of {n} in the file name is impossible")
    return [p.with_name(f"{m['stem']}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]


def _split_key(shard: _Shard, key: str) -> int | None:
    """An integer split.* key of a shard (None if absent); any other type is an error."""
    f = shard.fields.get(key)
    if f is None:
        return None
    if f.type not in _SCALARS or f.type in (GGUFValueType.BOOL, GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        raise GGUFError(f"{shard.path}: metadata {key!r} must be an integer, got {f.type.name} (at offset {f.offset})")
    return f.value


class GGUFReader:
    def __init__(self, path: str | os.PathLike):
        paths = split_paths(path)
        for i, p in enumerate(paths):
            if not p.is_file():
                what = "file not found" if not p.exists() else "not a regular file"
                raise GGUFError(f"{p}: {what}" + (f" (shard {i + 1} of {len(paths)} of the split model {path})" if len(paths) > 1 else ""))
        self.path = Path(path)
        self.shards = [_Shard(p) for p in paths]
        first = self.shards[0]
        self.version = first.version
        self.alignment = first.alignment
        self.fields: dict[str, Field] = dict(first.fields)
        self._check_split()
        self.tensors: dict[str, TensorInfo] = {}
        for shard in self.shards:
            for name, t in shard.tensors.items():
                if name in self.tensors:
                    raise GGUFError(f"{shard.path}: tensor {name!r} also appears in {self.tensors[name].path}")
                self.tensors[name] = t
        declared_tensors = _split_key(first, SPLIT_TENSORS_KEY)
        if declared_tensors is not None and len(self.shards) > 1 and declared_tensors != len(self.tensors):
            raise GGUFError(
                f"{first.path}: {SPLIT_TENSORS_KEY} is {declared_tensors}"
                f" but the {len(self.shards)} shards hold {len(self.tensors)} tensors"
            )

    def _check_split(self) -> None:
        """The split.* keys must agree with the shard files found, so that no tensors go silently missing."""
        first = self.shards[0]
        declared = _split_key(first, SPLIT_COUNT_KEY)
        if len(self.shards) == 1 and declared is not None and declared > 1:
            raise GGUFError(
                f"{first.path}: {SPLIT_COUNT_KEY} says the model has {declared} shards, but the file is not named"
                f" NAME-00001-of-{declared:05d}.gguf, so the other shards cannot be found"
            )
        if len(self.shards) > 1 and declared is not None and declared != len(self.shards):
            raise GGUFError(f"{first.path}: {SPLIT_COUNT_KEY} is {declared} but {len(self.shards)} shard files are named")
        if len(self.shards) > 1:
            for i, shard in enumerate(self.shards):
                no = _split_key(shard, SPLIT_INDEX_KEY)
                if no is not None and no != i:
                    raise GGUFError(f"{shard.path}: {SPLIT_INDEX_KEY} is {no} but the file name makes it shard {i} (0-based)")

    @property
    def metadata(self) -> dict[str, Any]:
        return {k: f.value for k, f in self.fields.items()}

    def get(self, key: str, default: Any = None) -> Any:
        f = self.fields.get(key)
        return default if f is None else f.value

    @property
    def architecture(self) -> str:
        arch = self.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: metadata general.architecture is missing")
        return arch

    def release_pages(self) -> None:
        """Drop the files' pages from this process's resident memory (a later read faults them back in from the page
        cache): once a model's weights are repacked, nothing reads most of the file again."""
        for shard in self.shards:
            shard.mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Drop our references to the mmaps; they close once no tensor view uses them any more."""
        self.tensors = {}
        self.shards = []

    def __enter__(self) -> GGUFReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
