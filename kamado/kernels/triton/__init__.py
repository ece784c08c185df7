"""GPU backend: fused dequantize-matmul kernels over GGUF weights kept in their block bytes on the device, in Triton
and, for the Q4_K/Q6_K decode GEMV, CUDA C compiled at run time by NVRTC (q8k_gemv.py).

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


def make_linear(tensor, device="cuda", stacked=(), logits=False):
    """TritonLinear for a kamado.kernels.QuantTensor, its weight copied to `device` once (stacked, logits: see
    TritonLinear)."""
    from kamado.kernels.linear import KernelError

    if not available():
        raise KernelError(f"tensor {tensor.name}: the GPU backend needs a CUDA device and Triton")
    from kamado.kernels.triton.linear import TritonLinear

    return TritonLinear(tensor, device, tuple(stacked), logits)


def fused_linear(tensors, device="cuda"):
    """One TritonLinear for weights read by the same input (q/k/v, gate/up), or None when their types or widths differ."""
    first = tensors[0]
    if any(t.qtype != first.qtype or len(t.shape) != 2 or t.shape[1] != first.shape[1] for t in tensors):
        return None
    return make_linear(first, device, tensors[1:])


__all__ = ["available", "fused_linear", "make_linear"]
