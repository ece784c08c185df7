"""Give memory that the C heap holds free back to the system while a model's weights are repacked; keep the logits out of it.

Repacking allocates float32 scratch chunks (~16 MiB) between the long-lived packed weights. glibc serves
such blocks from its heap once a freed one has raised its dynamic mmap threshold, and the holes they leave
between live packed buffers stay counted in the process's RSS: measured on Gemma 3 270M, ~220 MiB of
free heap after loading and a peak ~300 MiB above what the weights need. malloc_trim(0) returns every free
page of the heap (not only its top) to the system.
"""

from __future__ import annotations

import ctypes
import functools
import mmap

import torch


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; other C libraries have no such call
    except (OSError, AttributeError):
        return None


def release_free_heap() -> None:
    """Return the C heap's free pages to the system (a no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def mapped_empty(rows: int, cols: int) -> torch.Tensor:
    """An uninitialized float32 (rows, cols) tensor in an anonymous mapping of its own, unmapped when the tensor is freed.

    For the logits: a decode step's logits are 1 MiB per row of Gemma 3's vocabulary, and their size changes with the
    number of rows. Taken from the heap, each new size left the earlier blocks behind as holes that the heap kept
    resident (8 streams joining one by one raised Gemma 3 270M's resident memory by ~10 MiB for good)."""
    if rows * cols == 0:
        return torch.empty(rows, cols)
    return torch.frombuffer(mmap.mmap(-1, rows * cols * 4), dtype=torch.float32).view(rows, cols)
