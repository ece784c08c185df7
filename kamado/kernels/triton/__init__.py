"""GPU backend: Triton fused dequantize-matmul kernels over GGUF weights kept in their block bytes on the device.

`make_linear(tensor)` has the shape of the other backends' factories (kamado/kernels/linear.py BACKENDS):
it returns a `TritonLinear` whose call maps x (M, in) on the GPU to float32 (M, out).
Importing this package needs neither CUDA nor Triton; `available()` says whether the kernels can run.
Layout, kernel choice and measurements: docs/GPU.md.
"""

from __future__ import annotations

import importlib.util

import torch


def available() -> bool:
    """True when a CUDA device and Triton are present."""
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None


def make_linear(tensor, device="cuda"):
    """TritonLinear for a kamado.kernels.QuantTensor, its weight copied to `device` once."""
    from kamado.kernels.linear import KernelError

    if not available():
        raise KernelError(f"tensor {tensor.name}: the GPU backend needs a CUDA device and Triton")
    from kamado.kernels.triton.linear import TritonLinear

    return TritonLinear(tensor, device)


__all__ = ["available", "make_linear"]
