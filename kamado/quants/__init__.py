"""GGML block formats: quantize and dequantize every tensor type, bit-exact with ggml.

The public functions have the shape of `gguf.quants` so the two can be compared:
rows lie along the last axis; `quantize` returns uint8 bytes shaped (..., bytes_per_row) and
`dequantize` takes them back to float32 (..., row_length). `dequantize_torch` is the torch twin
(CPU or CUDA tensors). Each family module registers row-level functions in its tables:
  DEQUANTIZE[qtype](raw: uint8 (n_rows, row_bytes)) -> float32 (n_rows, n_per_row)
  QUANTIZE[qtype](x: float32 (n_rows, n_per_row), imatrix: float32 (n_per_row,) | None) -> uint8 (n_rows, row_bytes)
  DEQUANTIZE_TORCH[qtype](raw: torch.uint8 (n_rows, row_bytes)) -> torch.float32 (n_rows, n_per_row)
  QUANTIZE_TORCH[qtype](x: torch.float32 (n_rows, n_per_row), imatrix: torch.float32 (n_per_row,) | None)
      -> torch.uint8 (n_rows, row_bytes)
`quantize_torch` is the torch twin of `quantize` (CPU or CUDA tensors, the same bytes): operation-by-operation ports
of the numpy quantizers, for quantizing on a GPU.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import torch

from kamado.gguf.constants import GGML_BLOCK_SIZES, GGMLQuantizationType
from kamado.quants import floats, iq4, iquants, kquants, legacy, mxfp4, ternary
from kamado.quants.imatrix import ImatrixError, ImatrixFile, load_imatrix, read_imatrix

_FAMILIES = (floats, legacy, kquants, iq4, iquants, ternary, mxfp4)
DEQUANTIZE = {q: f for m in _FAMILIES for q, f in m.DEQUANTIZE.items()}
QUANTIZE = {q: f for m in _FAMILIES for q, f in m.QUANTIZE.items()}
DEQUANTIZE_TORCH = {q: f for m in _FAMILIES for q, f in m.DEQUANTIZE_TORCH.items()}
QUANTIZE_TORCH = {q: f for m in (floats, legacy, kquants, iq4) for q, f in m.QUANTIZE_TORCH.items()}


class QuantError(ValueError):
    """A quantize/dequantize request that cannot be served (unknown type, wrong row length)."""


def _qtype(qtype) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(qtype) if not isinstance(qtype, str) else GGMLQuantizationType[qtype.upper()]
    except (KeyError, ValueError):
        raise QuantError(f"unknown tensor type {qtype!r}") from None


def row_bytes(qtype, n_per_row: int) -> int:
    """Bytes one row of n_per_row values takes in qtype (raises QuantError if not a whole number of blocks)."""
    qtype = _qtype(qtype)
    block, type_size = GGML_BLOCK_SIZES[qtype]
    if n_per_row % block:
        raise QuantError(f"row length {n_per_row} is not a multiple of {qtype.name}'s block size {block}")
    return n_per_row // block * type_size


# Rows are independent in every ggml format, so large tensors are cut into chunks of about this many values
# and run on all cores (numpy releases the GIL inside its loops); a chunk's arrays stay cache-sized.
_CHUNK_VALUES = 1 << 18


_threads = {"n": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}


def set_num_threads(n: int) -> None:
    """Threads that quantize/dequantize use from now on (default: every core this process may run on)."""
    if n < 1:
        raise QuantError(f"thread count must be at least 1, got {n}")
    _threads["n"] = n


@cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="kamado-quants")


def _map_row_chunks(row_fn, rows: np.ndarray, out: np.ndarray, values_per_row: int) -> np.ndarray:
    """out[a:b] = row_fn(rows[a:b]) over chunks of rows, in parallel when there is more than one chunk."""
    step = max(1, _CHUNK_VALUES // max(1, values_per_row))
    spans = [(a, min(a + step, len(rows))) for a in range(0, len(rows), step)]

    def run(span):
        a, b = span
        # Files may hold inf/NaN scales and they decode to inf/NaN as in ggml: no warnings. (errstate is
        # per thread, so it is set here, inside the worker.)
        with np.errstate(all="ignore"):
            out[a:b] = row_fn(rows[a:b])

    if len(spans) <= 1 or _threads["n"] == 1:
        for span in spans:
            run(span)
    else:
        list(_pool(_threads["n"]).map(run, spans))
    return out


def quantize(data: np.ndarray, qtype, imatrix: np.ndarray | None = None) -> np.ndarray:
    qtype = _qtype(qtype)
    if qtype not in QUANTIZE:
        raise QuantError(f"quantizing to {qtype.name} is not supported; supported: {', '.join(q.name for q in QUANTIZE)}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    n = data.shape[-1]
    nb = row_bytes(qtype, n)
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n,):
            raise QuantError(f"imatrix has shape {imatrix.shape}, expected ({n},) to match the row length")
    rows = data.reshape(-1, n)
    out = np.empty((rows.shape[0], nb), dtype=np.uint8)
    _map_row_chunks(lambda chunk: QUANTIZE[qtype](chunk, imatrix), rows, out, n)
    return out.reshape(*data.shape[:-1], nb)


# Values per torch pass: the eager quantizers keep about ten float32 temporaries of a chunk alive, so a GPU chunk of
# 2^26 values needs ~3 GB and amortises the kernel launches; on the CPU smaller chunks stay in cache.
_TORCH_CHUNK_VALUES = {"cuda": 1 << 26}
_TORCH_CHUNK_VALUES_DEFAULT = 1 << 20


def quantize_torch(data: torch.Tensor, qtype, imatrix: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Torch twin of `quantize`: float32 tensor (..., n) on any device -> uint8 (..., row_bytes) on that device."""
    qtype = _qtype(qtype)
    if qtype not in QUANTIZE_TORCH:
        raise QuantError(f"quantizing to {qtype.name} with torch is not supported; supported: {', '.join(q.name for q in QUANTIZE_TORCH)}")
    if not isinstance(data, torch.Tensor):
        raise QuantError(f"quantize_torch takes a torch tensor, got {type(data).__name__} (use quantize for numpy arrays)")
    data = data.to(torch.float32).contiguous()
    n = data.shape[-1]
    nb = row_bytes(qtype, n)
    if imatrix is not None:
        imatrix = torch.as_tensor(imatrix, dtype=torch.float32, device=data.device).contiguous()
        if tuple(imatrix.shape) != (n,):
            raise QuantError(f"imatrix has shape {tuple(imatrix.shape)}, expected ({n},) to match the row length")
    rows = data.reshape(-1, n)
    out = torch.empty((rows.shape[0], nb), dtype=torch.uint8, device=data.device)
    step = max(1, _TORCH_CHUNK_VALUES.get(data.device.type, _TORCH_CHUNK_VALUES_DEFAULT) // max(1, n))
    for a in range(0, rows.shape[0], step):
        out[a : a + step] = QUANTIZE_TORCH[qtype](rows[a : a + step], imatrix)
    return out.reshape(*data.shape[:-1], nb)


def dequantize(data: np.ndarray, qtype) -> np.ndarray:
    qtype = _qtype(qtype)
    if qtype not in DEQUANTIZE:
        raise QuantError(f"dequantizing {qtype.name} is not supported")
    raw = np.ascontiguousarray(data).view(np.uint8)
    block, type_size = GGML_BLOCK_SIZES[qtype]
    if raw.shape[-1] % type_size:
        raise QuantError(f"{qtype.name}: row of {raw.shape[-1]} bytes is not a whole number of {type_size}-byte blocks")
    n = raw.shape[-1] // type_size * block
    rows = raw.reshape(-1, raw.shape[-1])
    out = np.empty((rows.shape[0], n), dtype=np.float32)
    _map_row_chunks(DEQUANTIZE[qtype], rows, out, n)
    return out.reshape(*raw.shape[:-1], n)


def dequantize_torch(data, qtype):
    """Torch twin of `dequantize`: uint8 tensor (..., row_bytes) on any device -> float32 (..., n)."""
    qtype = _qtype(qtype)
    if qtype not in DEQUANTIZE_TORCH:
        raise QuantError(f"dequantizing {qtype.name} with torch is not supported")
    block, type_size = GGML_BLOCK_SIZES[qtype]
    if data.shape[-1] % type_size:
        raise QuantError(f"{qtype.name}: row of {data.shape[-1]} bytes is not a whole number of {type_size}-byte blocks")
    n = data.shape[-1] // type_size * block
    out = DEQUANTIZE_TORCH[qtype](data.reshape(-1, data.shape[-1]))
    return out.reshape(*data.shape[:-1], n)


__all__ = [
    "ImatrixError", "ImatrixFile", "QuantError", "dequantize", "dequantize_torch", "load_imatrix", "quantize", "quantize_torch",
    "read_imatrix",
    "row_bytes", "set_num_threads",
]
