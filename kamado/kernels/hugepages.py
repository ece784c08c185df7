"""Back a model's packed weights with transparent huge pages, so decode streams them at the memory's speed.

A decode step reads every weight once, from memory (these models are several times the cache), and with 4 KiB
pages the streaming rate drops: on the 2-core machine a float32 sum over 256 MiB ran at 19-22 GB/s on 4 KiB pages
and 27-28 GB/s on 2 MiB ones (2026-12-03). Linux's usual THP setting ('madvise') gives huge pages only where they are
asked for, and fbgemm allocates its packed copies itself. So the anonymous mappings that a model load creates or grows
are read from /proc/self/maps and their 2 MiB extents whose pages are all resident are collapsed into huge pages
(MADV_COLLAPSE, Linux 6.1+). Extents holding a page never touched are left alone: collapsing them would allocate it.
Anywhere else (another system, an older kernel, THP off) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys
from collections.abc import Iterator
from contextlib import contextmanager

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25


@functools.cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        return libc
    except (OSError, AttributeError):
        return None


def _anonymous_mappings() -> set[tuple[int, int]]:
    """(start, stop) of the process's private writable mappings without a file (the heap, malloc's and torch's memory)."""
    found = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 5 and fields[1].startswith("rw") and fields[4] == "0" and (len(fields) == 5 or fields[5] == "[heap]"):
                start, stop = fields[0].split("-")
                found.add((int(start, 16), int(stop, 16)))
    return found


def _collapse_resident(start: int, stop: int) -> None:
    libc = _libc()
    first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, stop // HUGE_PAGE * HUGE_PAGE
    if last <= first:
        return
    resident = ctypes.create_string_buffer((last - first) // mmap.PAGESIZE)
    if libc.mincore(first, last - first, resident) != 0:
        return
    per_extent = HUGE_PAGE // mmap.PAGESIZE
    for at in range(0, last - first, HUGE_PAGE):
        pages = resident.raw[at // mmap.PAGESIZE : at // mmap.PAGESIZE + per_extent]
        if all(p & 1 for p in pages):
            libc.madvise(first + at, HUGE_PAGE, _MADV_HUGEPAGE)
            libc.madvise(first + at, HUGE_PAGE, _MADV_COLLAPSE)


@contextmanager
def huge_pages_for_new_memory() -> Iterator[None]:
    """Collapse, on exit, the fully resident 2 MiB extents of the anonymous memory mapped or grown inside the block."""
    if _libc() is None:
        yield
        return
    before = _anonymous_mappings()
    yield
    for start, stop in _anonymous_mappings() - before:
        _collapse_resident(start, stop)
