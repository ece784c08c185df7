"""Importance-matrix files (llama-imatrix output) in the GGUF format and the legacy .dat format.

`read_imatrix` returns, for each weight name, the per-column weights exactly as llama-quantize
computes them before handing them to the quantizer (tools/quantize/quantize.cpp, load_imatrix):
- GGUF: tensors `NAME.in_sum2` (sums of squared activations) and `NAME.counts` (one count per expert);
  values = in_sum2 / count for each expert's slice, or 1 where that expert's count is 0.
- legacy .dat: values were saved as (sum / count) * ncall; they are divided by ncall again (left as they
  are when ncall is 0).
The result is flat: for a 3-D expert tensor (n_expert, rows, n_per_row), expert e uses
values[e * n_per_row:(e + 1) * n_per_row], as llama-quantize does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kamado.gguf.constants import GGUF_MAGIC, GGMLQuantizationType
from kamado.gguf.reader import GGUFError, GGUFReader

_REQUIRED_METADATA = ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")


class ImatrixError(ValueError):
    """An imatrix file is malformed; the message names the file and the entry."""


@dataclass
class ImatrixFile:
    """An imatrix file's weights and where they came from (llama-quantize records both in its output)."""

    weights: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0


def load_imatrix(path) -> ImatrixFile:
    """Weights, datasets and chunk count of a GGUF or legacy .dat imatrix file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ImatrixError(f"{path}: cannot read imatrix file: {e.strerror or e}") from None
    return _read_gguf(path) if magic == GGUF_MAGIC else _read_legacy(path)


def read_imatrix(path) -> dict[str, np.ndarray]:
    """Per-column importance weights (float32) for each weight name in a GGUF or legacy .dat imatrix file."""
    return load_imatrix(path).weights


def _read_gguf(path: Path) -> ImatrixFile:
    try:
        reader = GGUFReader(path)
    except GGUFError as e:
        raise ImatrixError(f"{path}: not a valid GGUF imatrix: {e}") from None
    missing = [key for key in _REQUIRED_METADATA if key not in reader.metadata]
    if missing:
        # llama-quantize refuses such a file too ("missing imatrix metadata").
        raise ImatrixError(f"{path}: GGUF imatrix lacks the metadata {', '.join(missing)}")

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for name, tensor in reader.tensors.items():
        for suffix, table in ((".in_sum2", sums), (".counts", counts)):
            if name.endswith(suffix):
                if tensor.type != GGMLQuantizationType.F32:
                    raise ImatrixError(f"{path}: tensor {name} is {tensor.type.name}, expected F32")
                table[name[: -len(suffix)]] = np.asarray(tensor.raw).view("<f4").reshape(-1)

    values = {}
    for name in sorted(sums.keys() | counts.keys()):
        if name not in sums or name not in counts:
            raise ImatrixError(f"{path}: {name} has {'no counts' if name in sums else 'no in_sum2'} tensor")
        values[name] = _normalise(path, name, sums[name], counts[name])
    if not values:
        raise ImatrixError(f"{path}: GGUF imatrix holds no in_sum2/counts tensors")
    datasets = reader.get("imatrix.datasets")
    return ImatrixFile(values, [str(d) for d in datasets] if isinstance(datasets, list) else [], int(reader.get("imatrix.chunk_count")))


def _normalise(path: Path, name: str, in_sum2: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if counts.size == 0 or in_sum2.size == 0 or in_sum2.size % counts.size:
        raise ImatrixError(f"{path}: {name} has {in_sum2.size} sums for {counts.size} counts (not a whole number per expert)")
    # ggml stores counts as float; llama.cpp reads them back with lround, then divides by (float)count.
    whole = np.trunc(counts.astype(np.float64) + np.copysign(0.5, counts)).astype(np.float32)
    per_expert = in_sum2.reshape(counts.size, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(whole[:, None] > 0, per_expert / whole[:, None], np.float32(1))
    return out.astype(np.float32).reshape(-1)


class _Cursor:
    """Bounds-checked little-endian reads over a legacy imatrix file's bytes."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.pos = path, data, 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0:
            raise ImatrixError(f"{self.path}: negative length {n} for {what} at offset {self.pos}")
        if n > self.remaining():
            raise ImatrixError(f"{self.path}: truncated legacy imatrix reading {what} at offset {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int32(self, what: str) -> int:
        return struct.unpack("<i", self.take(4, what))[0]


def _read_legacy(path: Path) -> ImatrixFile:
    data = path.read_bytes()
    cur = _Cursor(path, data)
    n_entries = cur.int32("the entry count")
    if n_entries < 1:
        raise ImatrixError(f"{path}: not a GGUF file and not a legacy imatrix (entry count {n_entries})")
    values = {}
    for i in range(n_entries):
        name_bytes = cur.take(cur.int32(f"entry {i} name length"), f"entry {i} name")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise ImatrixError(f"{path}: entry {i} name is not UTF-8") from None
        ncall = cur.int32(f"entry {i} ({name}) call count")
        nval = cur.int32(f"entry {i} ({name}) value count")
        if nval < 1:
            raise ImatrixError(f"{path}: entry {i} ({name}) has {nval} values")
        sums = np.frombuffer(cur.take(4 * nval, f"entry {i} ({name}) values"), dtype="<f4")
        values[name] = (sums / np.float32(ncall) if ncall > 0 else sums).astype(np.float32)
    # What follows (chunk count, then the dataset's name) is optional: older files end here.
    chunks, datasets = 0, []
    if cur.remaining() >= 4:
        chunks = cur.int32("the chunk count")
        if cur.remaining() >= 4:
            datasets = [cur.take(cur.int32("the dataset name length"), "the dataset name").decode("utf-8", errors="replace")]
    return ImatrixFile(values, datasets, chunks)
