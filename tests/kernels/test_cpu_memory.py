"""The CPU backend's memory: file pages released once repacked, fbgemm's int8 copy freed, memory arrays untouched,
embedding rows read without mapping the file."""

import mmap
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.kernels import QuantTensor, cpu, embedding_rows, make_linear
from kamado.quants import dequantize, quantize

PAGE = mmap.PAGESIZE


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


linux_only = pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc/self/status")


def q8_weights(rows: int, cols: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    w = np.random.default_rng(seed).normal(0, 0.05, (rows, cols)).astype(np.float32)
    return w, quantize(w, T.Q8_0)


def mapped_tensor(tmp_path, raw: np.ndarray, rows: int, cols: int) -> QuantTensor:
    """raw block bytes written to a new file and viewed through a read-only mmap, as kamado.gguf's reader does."""
    path = tmp_path / f"w{len(list(tmp_path.iterdir()))}.bin"
    path.write_bytes(b"\0" * 100 + raw.tobytes())  # an offset that is not page-aligned
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, np.uint8, raw.size, 100).reshape(raw.shape)
    return QuantTensor.from_info(SimpleNamespace(name="w", type=T.Q8_0, shape=(rows, cols), raw=view, path=path))


@linux_only
def test_embedding_rows_are_read_from_the_file_without_mapping_it(tmp_path):
    rows = 16384
    _, raw = q8_weights(rows)
    t = mapped_tensor(tmp_path, raw, rows, 256)
    embedding_rows(t, torch.tensor([1]))  # loads the code it runs
    ids = torch.tensor([[0, 8191], [16383, 8191]])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak RSS starts again from the current RSS
    before = status_kib("VmRSS")
    got = embedding_rows(t, ids)
    # a read through the mapping maps 64 KiB to 2 MiB around each row, until the lookup releases them again
    assert status_kib("VmHWM") - before < 64
    assert torch.equal(got, torch.from_numpy(dequantize(raw[ids.numpy()].reshape(4, -1), T.Q8_0).reshape(2, 2, 256)))


def test_embedding_rows_of_a_replaced_file_come_from_the_mapping(tmp_path):
    _, raw = q8_weights(64)
    t = mapped_tensor(tmp_path, raw, 64, 256)
    path = t.file[0]
    os.replace(mapped_tensor(tmp_path, q8_weights(64, seed=1)[1], 64, 256).file[0], path)  # another file under its name
    ids = torch.tensor([3, 60])
    assert torch.equal(embedding_rows(t, ids), torch.from_numpy(dequantize(raw[[3, 60]], T.Q8_0)))


@linux_only
def test_released_file_pages_leave_the_rss_and_read_back_the_same(tmp_path):
    rows = 16384  # 4.4 MB of Q8_0 blocks
    _, raw = q8_weights(rows)
    t = mapped_tensor(tmp_path, raw, rows, 256)
    assert t.mapping is not None
    t.release_pages()  # once first: loads the code it runs, whose pages would count as file pages too
    checksum = int(t.raw.sum())  # touches every page
    touched = status_kib("RssFile")
    t.release_pages()
    assert touched - status_kib("RssFile") >= 0.9 * raw.size / 1024
    assert int(t.raw.sum()) == checksum  # faulted back in from the file
    assert torch.equal(t.raw.cpu(), torch.from_numpy(raw))


def test_memory_arrays_are_never_released():
    w, raw = q8_weights(64)
    t = QuantTensor.from_info(SimpleNamespace(name="w", type=T.Q8_0, shape=w.shape, raw=raw))
    assert t.mapping is None  # MADV_DONTNEED would zero anonymous memory
    t.release_pages()
    assert np.array_equal(t.raw.numpy(), raw)


@linux_only
def test_repacking_a_mapped_weight_releases_its_pages_and_computes_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "FBGEMM_MIN_SHORT_ROW_WEIGHTS", 1 << 30)  # int8pack, the path the warm-up below takes
    rows = 16384
    w, raw = q8_weights(rows)
    t = mapped_tensor(tmp_path, raw, rows, 256)
    make_linear(mapped_tensor(tmp_path, raw[:64], 64, 256), "cpu")  # loads the code that repacking runs
    int(t.raw.sum())
    touched = status_kib("RssFile")
    lin = make_linear(t, "cpu")
    assert touched - status_kib("RssFile") >= 0.9 * raw.size / 1024  # the pages read while repacking are dropped
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(1))
    exact = x @ torch.from_numpy(dequantize(raw, T.Q8_0)).T
    assert (lin(x) - exact).norm() <= 0.01 * exact.norm()


@linux_only
def test_fbgemm_weights_take_one_byte_each(monkeypatch):
    # linear_prepack keeps the int8 tensor it packed beside its own copy; the backend frees that tensor's bytes.
    monkeypatch.setattr(cpu, "FBGEMM_MIN_WEIGHTS", 0)
    monkeypatch.setattr(cpu, "PACK_PART_WEIGHTS", 1 << 20)  # several parts
    rows, cols = 16384, 1024  # 16 MiB of int8 codes
    raw_row = quantize(np.random.default_rng(0).normal(0, 0.05, (64, cols)).astype(np.float32), T.Q8_0)
    raw = np.tile(raw_row, (rows // 64, 1))
    t = QuantTensor.from_info(SimpleNamespace(name="w", type=T.Q8_0, shape=(rows, cols), raw=raw))
    before = status_kib("VmRSS")
    lin = make_linear(t, "cpu")
    grown_mib = (status_kib("VmRSS") - before) / 1024
    assert len(lin.packed) == 16
    assert grown_mib < 1.25 * rows * cols / 2**20, f"{grown_mib:.0f} MiB resident for {rows * cols >> 20} MiB of weights"
