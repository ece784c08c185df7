"""Compute kernels: the matmul of activations with GGUF-format weights, and embedding row lookups.

`make_linear(tensor, backend)` turns a GGUF tensor into a callable `x (M, in) float32 -> (M, out) float32`.
Backends: "reference" (kamado.quants.dequantize_torch then a float32 matmul: exact float32),
"ggml" (the same after rounding the activations as ggml-cpu does: llama.cpp's numerics, slowly)
and "cpu" (repacked int8, see kamado/kernels/cpu.py for the measured choice). A GPU backend plugs in
by adding a module with the same `make_linear` shape to BACKENDS. docs/NUMERICS.md: what parity with llama.cpp
needs and what was measured.
"""

from kamado.kernels.linear import BACKENDS, KernelError, QuantTensor, embedding_rows, make_fused_linear, make_linear

__all__ = ["BACKENDS", "KernelError", "QuantTensor", "embedding_rows", "make_fused_linear", "make_linear"]
