"""Linear layers over GGUF tensors: the shared tensor view, the reference backend, the backend table."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType
from kamado.kernels.activations import activation_rounding
from kamado.quants import QuantError, dequantize_torch

FLOAT_TYPES = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16, GGMLQuantizationType.BF16: torch.bfloat16}
# Rows dequantized at once when a whole tensor is walked: bounds the float32 scratch memory (~16 MiB).
CHUNK_ELEMENTS = 1 << 22


class KernelError(ValueError):
    """A tensor the kernels cannot compute with (unsupported type, wrong shape)."""


@dataclass
class QuantTensor:
    """One GGUF tensor as the kernels see it: raw block bytes (zero-copy, mmap-backed) and its logical shape."""

    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # numpy order: (..., rows, columns)
    raw: torch.Tensor  # uint8 (..., rows, row_bytes)

    @classmethod
    def from_info(cls, info) -> QuantTensor:
        """From a kamado.gguf TensorInfo (its raw view is read-only mmap memory: torch must never write it)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we only ever read it
            raw = torch.from_numpy(np.asarray(info.raw))
        return cls(info.name, GGMLQuantizationType(info.type), tuple(int(d) for d in info.shape), raw)

    def float_view(self) -> torch.Tensor | None:
        """The tensor itself when it is stored as a float type (zero-copy), else None."""
        dtype = FLOAT_TYPES.get(self.qtype)
        return None if dtype is None else self.raw.view(dtype).reshape(self.shape)

    def dequantize(self, rows=slice(None)) -> torch.Tensor:
        """float32 values of the selected rows (index tensor or slice over the first axis of a 2-D tensor)."""
        raw = self.raw[rows]
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
    """llama.cpp's product, slowly: x rounded as ggml-cpu rounds it for this weight type
    (kamado.kernels.activations), then the exact float32 product. The yardstick of the fast CPU backend."""

    def __init__(self, tensor: QuantTensor):
        super().__init__(tensor)
        self.round_input = activation_rounding(tensor.qtype)


def _check_2d(tensor: QuantTensor) -> None:
    if len(tensor.shape) != 2:
        raise KernelError(f"tensor {tensor.name}: a linear layer needs a 2-D weight, got shape {tensor.shape}")


def embedding_rows(tensor: QuantTensor, ids: torch.Tensor) -> torch.Tensor:
    """float32 rows of an embedding table for token ids (only those rows are read from the file)."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= tensor.shape[0]):
        raise KernelError(f"token id out of range for {tensor.name} with {tensor.shape[0]} rows")
    return tensor.dequantize(ids)


def make_linear(tensor: QuantTensor, backend: str = "cpu"):
    try:
        factory = BACKENDS[backend]
    except KeyError:
        raise KernelError(f"unknown kernel backend {backend!r}; available: {', '.join(BACKENDS)}") from None
    return factory(tensor)


def _cpu(tensor: QuantTensor):
    from kamado.kernels.cpu import Int8Linear

    return Int8Linear(tensor)


def _cuda(tensor: QuantTensor):
    from kamado.kernels.triton import make_linear as make_triton_linear

    return make_triton_linear(tensor, "cuda")


BACKENDS = {"reference": ReferenceLinear, "ggml": GgmlLinear, "cpu": _cpu, "cuda": _cuda}
