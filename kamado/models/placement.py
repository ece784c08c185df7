"""Where layers run: llama.cpp's n_gpu_layers (-ngl) turned into a decoder Offload."""

from __future__ import annotations

import sys

from kamado.models.decoder import Offload


def offload_for(n_gpu_layers: int, n_layer: int) -> Offload:
    """-1 or >= n_layer: every layer and the output on the GPU; N: the first N layers; 0: CPU only.

    Without a CUDA device (or Triton) the request is ignored with a note on stderr, as llama.cpp warns when it
    was built without GPU support, so scripts written for a GPU still run.
    """
    if n_gpu_layers == 0:
        return Offload()
    from kamado.kernels import triton

    if not triton.available():
        print(f"kamado: n_gpu_layers={n_gpu_layers} ignored: no CUDA device with Triton is available, running on the CPU",
              file=sys.stderr)
        return Offload()
    return Offload(n_layer if n_gpu_layers < 0 else min(n_gpu_layers, n_layer))
