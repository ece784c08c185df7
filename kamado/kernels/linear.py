"""Linear layers over GGUF tensors: the shared tensor view, the reference backend, the backend table."""

from __future__ import annotations

import mmap
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType
from kamado.kernels.activations import activation_rounding
from kamado.kernels.ggml_order import ORDERED, OrderedProduct
from kamado.quants import QuantError, dequantize_torch

FLOAT_TYPES = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16, GGMLQuantizationType.BF16: torch.bfloat16}
# Rows dequantized at once when a whole tensor is walked: bounds the float32 scratch memory (~16 MiB).
CHUNK_ELEMENTS = 1 << 22
# The largest page-cache folio a read fault of a file mapping maps at once (a PMD on x86-64).
FOLIO = 2 << 20


class KernelError(ValueError):
    """A tensor the kernels cannot compute with (unsupported type, wrong shape)."""


@dataclass
class QuantTensor:
    """One GGUF tensor as the kernels see it: raw block bytes (zero-copy, mmap-backed) and its logical shape."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: (..., rows, columns)
    raw: torch.Tensor  # uint8 (..., rows, row_bytes)
    mapping: mmap.mmap | None = None  # the read-only file mapping raw lies in, if any (release_pages)
    file: tuple[str, int, int] | None = None  # path, device and inode of the file that mapping maps from its start (read_rows)

    @classmethod
    def from_info(cls, info) -> QuantTensor:
        """From a kamado.gguf TensorInfo (its raw view is read-only mmap memory: torch must never write it)."""
        array = np.asarray(info.raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we only ever read it
            raw = torch.from_numpy(array)
        mapping = _file_mapping(array)
        file = None
        if mapping is not None and getattr(info, "path", None) is not None:
            stat = os.stat(info.path)
            file = (str(info.path), stat.st_dev, stat.st_ino)
        return cls(info.name, GGMLQuantizationType(info.type), tuple(int(d) for d in info.shape), raw, mapping, file)

    def _file_offset(self, raw: torch.Tensor) -> int:
        """Where raw's first byte lies in the mapped file."""
        return raw.data_ptr() - np.frombuffer(self.mapping, np.uint8, 1).ctypes.data

    def read_rows(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The raw bytes of rows `ids` of a 2-D file-mapped tensor, read from the file with pread (None for another
        tensor). Unlike a read through the mapping, this maps no page of the file into the process: a read fault maps
        the whole page-cache folio around a row (up to FOLIO bytes), and the embedding rows of a 128-token prompt
        mapped 30 MiB of Gemma 3 270M's file at once (0.8 MiB through pread), at the peak of a request."""
        if self.file is None or len(self.shape) != 2 or not self.raw.is_contiguous() or ids.numel() == 0 or not hasattr(os, "pread"):
            return None
        path, device, inode = self.file
        row_bytes = self.raw.shape[1]
        start = self._file_offset(self.raw)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) != (device, inode):  # the path names another file now: read the mapping
                return None
            data = bytearray().join(os.pread(fd, row_bytes, start + i * row_bytes) for i in ids.reshape(-1).tolist())
        finally:
            os.close(fd)
        return torch.frombuffer(data, dtype=torch.uint8).reshape(*ids.shape, row_bytes)

    def release_pages(self, rows: slice = slice(None)) -> None:
        """Drop the file pages of these rows from the process's resident memory once they have been repacked.

        Pages of a file mapping that were read stay counted in the process's RSS until the kernel needs them
        back; a model whose weights are repacked would otherwise hold the file beside its repacked copy.
        A read fault maps the whole page-cache folio around the page (up to FOLIO bytes, aligned), so the
        range released reaches out to the enclosing folios: neighbours' pages refault when they are read.
        Only read-only file mappings are released (a later read simply faults the bytes in again); other
        memory (arrays built in memory) is left alone, since MADV_DONTNEED would zero it.
        """
        raw = self.raw[rows]
        if self.mapping is None or not raw.is_contiguous() or raw.numel() == 0:
            return
        start = self._file_offset(raw)
        first = start - start % FOLIO
        stop = min(len(self.mapping), -(-(start + raw.numel()) // FOLIO) * FOLIO)
        self.mapping.madvise(mmap.MADV_DONTNEED, first, stop - first)

    def float_view(self) -> torch.Tensor | None:
        """The tensor itself when it is stored as a float type (zero-copy), else None."""
        dtype = FLOAT_TYPES.get(self.qtype)
        return None if dtype is None else self.raw.view(dtype).reshape(self.shape)

    def dequantize(self, rows=slice(None), raw: torch.Tensor | None = None) -> torch.Tensor:
        """float32 values of the selected rows (index tensor or slice over the first axis of a 2-D tensor); `raw`: their
        bytes, where the caller has read them already (read_rows)."""
        raw = self.raw[rows] if raw is None else raw
        view = None if raw.numel() == 0 else FLOAT_TYPES.get(self.qtype)
        if view is not None:
            return raw.contiguous().view(view).float()
        try:
            return dequantize_torch(raw.contiguous(), self.qtype)
        except QuantError as e:
            raise KernelError(f"tensor {self.name}: {e}") from None

    def row_chunks(self):
        """(start, stop) row ranges of about CHUNK_ELEMENTS values each."""
        rows, cols = self.shape[-2], self.shape[-1]
        step = max(1, CHUNK_ELEMENTS // cols)
        return [(i, min(rows, i + step)) for i in range(0, rows, step)]


class ReferenceLinear:
    """y = x @ W.T in float32 with W dequantized exactly on every call, chunk by chunk (exact, slow)."""

    def __init__(self, tensor: QuantTensor):
        _check_2d(tensor)
        self.tensor = tensor
        self.out_features, self.in_features = tensor.shape

    def round_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.round_input(x)
        parts = [x @ self.tensor.dequantize(slice(a, b)).T for a, b in self.tensor.row_chunks()]
        return torch.cat(parts, dim=-1)

    def rows(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Outputs for selected output features only: (M, in) x ids (M, k) -> (M, k)."""
        w = self.tensor.dequantize(ids.reshape(-1)).reshape(*ids.shape, self.in_features)
        return torch.einsum("mi,mki->mk", self.round_input(x), w)


class GgmlLinear(ReferenceLinear):
    """llama.cpp's product, slowly: for Q4_0/Q5_0/Q8_0/Q4_K/Q6_K weights bit for bit as ggml-cpu computes it on x86
    (kamado/kernels/ggml_order.py); for other types x rounded as ggml-cpu rounds it (kamado.kernels.activations), then
    the exact float32 product. The yardstick of the fast CPU backend. (`rows`, a few outputs, takes the latter way.)

    `logits=True` (the output head): the ordered chain over a vocabulary-wide head would hold GBs of float64 lanes and
    unpacked quants (262144 x 640 for Gemma 3), so the head takes the latter way, and then recomputes in ggml's order
    the outputs within LOGIT_MARGIN of each row's best: those are the only ones whose last bits can decide a greedy
    token (the two ways differ by ~1e-5 on logits of tens). The head keeps its weight dequantized (float32, 4x a Q8_0
    file's bytes): dequantizing it again on every step took half of a decode step's time."""

    LOGIT_MARGIN = 0.01

    def __init__(self, tensor: QuantTensor, logits: bool = False):
        super().__init__(tensor)
        self.round_input = activation_rounding(tensor.qtype)
        self.in_order = tensor.qtype in ORDERED
        self.ordered = OrderedProduct(tensor.raw, tensor.qtype) if self.in_order and not logits else None
        self.logits = logits
        self._weight = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.ordered is not None:
            return self.ordered(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        if not self.logits:
            return super().__call__(x)
        if self._weight is None:
            self._weight = self.tensor.dequantize()
        out = self.round_input(x) @ self._weight.T
        if self.in_order:  # the best outputs of each row again, in order
            for row, best in zip(x.reshape(-1, self.in_features), out.reshape(-1, self.out_features), strict=True):
                ids = (best >= best.max() - self.LOGIT_MARGIN).nonzero()[:, 0]
                best[ids] = OrderedProduct(self.tensor.raw[ids], self.tensor.qtype)(row[None])[0]
        return out


def _file_mapping(array: np.ndarray) -> mmap.mmap | None:
    """The read-only mmap an array views (np.frombuffer over kamado.gguf's mapping), else None."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) and memoryview(base).readonly else None


def _check_2d(tensor: QuantTensor) -> None:
    if len(tensor.shape) != 2:
        raise KernelError(f"tensor {tensor.name}: a linear layer needs a 2-D weight, got shape {tensor.shape}")


def embedding_rows(tensor: QuantTensor, ids: torch.Tensor) -> torch.Tensor:
    """float32 rows of an embedding table for token ids (only those rows are read from the file).

    The rows are read with pread (QuantTensor.read_rows) where the table lies in a file; otherwise through the
    mapping, whose pages are dropped again after the lookup: a read fault maps the whole page-cache folio around the
    row (up to 2 MiB), so over a conversation the lookups would keep most of the table resident (Gemma 3 270M's:
    170 MiB, ~0.7x its file) beside the weights' repacked copy."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= tensor.shape[0]):
        raise KernelError(f"token id out of range for {tensor.name} with {tensor.shape[0]} rows")
    raw = tensor.read_rows(ids)
    if raw is not None:
        return tensor.dequantize(ids, raw)
    rows = tensor.dequantize(ids)
    tensor.release_pages()
    return rows


def make_linear(tensor: QuantTensor, backend: str = "cpu", logits: bool = False):
    """`logits`: the output projection, which the cpu and cuda backends compute without llama.cpp's activation rounding
    (kamado/kernels/cpu.py, _input_rounding, says why) and the ggml backend in ggml's float order only near the top
    (GgmlLinear); the reference backend computes it as any weight."""
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise KernelError(f"unknown kernel backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    if backend == "cpu":
        return _cpu(tensor, logits)
    if backend == "cuda":
        return _cuda(tensor, logits)
    return GgmlLinear(tensor, logits) if backend == "ggml" else factory(tensor)


def _cpu(tensor: QuantTensor, logits: bool = False):
    from kamado.kernels.cpu import make_cpu_linear

    return make_cpu_linear(tensor, logits)


def _cuda(tensor: QuantTensor, logits: bool = False):
    from kamado.kernels.triton import make_linear as make_triton_linear

    return make_triton_linear(tensor, "cuda", logits=logits)


BACKENDS = {"reference": ReferenceLinear, "ggml": GgmlLinear, "cpu": _cpu, "cuda": _cuda}


def make_fused_linear(tensors: list[QuantTensor], backend: str = "cpu"):
    """One callable for weights read by the same input (q/k/v, gate/up), their outputs side by side, or None where the
    backend computes them apart (the exact backends, mixed types on the GPU, float weights on the CPU).

    Why: a decode step pays a fixed cost per product (126 int8pack calls for Gemma 3 270M on the CPU without fusion,
    72 with it; on the GPU a small GEMV takes 11-15 us whatever its size, docs/GPU.md)."""
    if backend == "cpu":
        from kamado.kernels.cpu import fused_linear

        return fused_linear(tensors)
    if backend == "cuda":
        from kamado.kernels.triton import fused_linear

        return fused_linear(tensors, "cuda")
    return None
