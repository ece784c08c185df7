"""kamado.kernels.hugepages: memory mapped inside the block ends up on huge pages where its pages are all resident."""

import ctypes
import mmap
import sys
from pathlib import Path

import pytest

from kamado.kernels.hugepages import HUGE_PAGE, huge_pages_for_new_memory

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists() or "[never]" in THP.read_text(),
                                reason="needs Linux with transparent huge pages")


def smaps_kib(start: int, field: str) -> int:
    """A field of the /proc/self/smaps entry of the mapping that holds address `start`."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, line in enumerate(lines):
        low, _, high = line.partition(" ")[0].partition("-")
        if high and int(low, 16) <= start < int(high, 16):
            return next(int(x.split()[1]) for x in lines[i + 1 :] if x.startswith(field + ":"))
    raise AssertionError("mapping not found")


def private_area(size: int) -> mmap.mmap:
    """Anonymous private memory, as malloc and torch map it (mmap's default is a shared mapping)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def address_of(area: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(area))


def test_fully_written_new_memory_is_collapsed():
    with huge_pages_for_new_memory():
        area = private_area(9 * HUGE_PAGE)
        area.write(b"\1" * len(area))  # every page resident
    collapsed = smaps_kib(address_of(area), "AnonHugePages")
    if collapsed == 0:
        pytest.skip("the kernel collapsed nothing (MADV_COLLAPSE needs Linux 6.1+)")
    assert collapsed >= 8 * HUGE_PAGE // 1024  # every 2 MiB extent inside the mapping
    assert area[:] == b"\1" * len(area)


def test_pages_never_touched_are_not_allocated():
    with huge_pages_for_new_memory():
        area = private_area(8 * HUGE_PAGE)
        for offset in range(0, len(area), 2 * mmap.PAGESIZE):  # every other page
            area[offset] = 1
    assert smaps_kib(address_of(area), "Rss") * 1024 <= len(area) // 2
    assert smaps_kib(address_of(area), "AnonHugePages") == 0
