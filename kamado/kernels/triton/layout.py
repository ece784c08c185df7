"""GPU weight layout: each GGUF block type split once into per-field planes (struct of arrays).

A GGUF row is a run of fixed-size blocks (Q4_0: 18 bytes, Q6_K: 210 ...). Most block sizes are not
multiples of 4 or 16 bytes, so a kernel reading the file layout cannot use aligned vector loads. At load
time every field of the block (quant bits, high bits, scales, the fp16 super-scale) is copied into its
own contiguous (rows, blocks_per_row * field_bytes) tensor. The planes hold exactly the file's bytes in the
file's order, no more: a memory-bound decode kernel reads as many bytes as llama.cpp does, only aligned. The file's
order is also what the integer dot-product GEMV wants: 4 consecutive bytes of a 4-bit quant field hold 4 consecutive
values in their low nibbles (q8k_gemv.cu).
The plane order below is the order the Triton kernels take them in (kamado/kernels/triton/kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kamado.gguf.constants import GGML_BLOCK_SIZES
from kamado.gguf.constants import GGMLQuantizationType as Q

U8, I8, F16, I16, I32 = torch.uint8, torch.int8, torch.float16, torch.int16, torch.int32

# qtype -> fields as (byte offset in the block, byte length, dtype of the plane), in kernel argument order.
PLANES: dict[Q, tuple[tuple[int, int, torch.dtype], ...]] = {
    Q.Q8_0: ((2, 32, I8), (0, 2, F16)),  # qs, d
    Q.Q4_0: ((2, 16, U8), (0, 2, F16)),  # qs, d
    Q.Q4_1: ((4, 16, U8), (0, 2, F16), (2, 2, F16)),  # qs, d, m
    Q.Q5_0: ((6, 16, U8), (2, 4, I32), (0, 2, F16)),  # qs, qh, d
    Q.Q5_1: ((8, 16, U8), (4, 4, I32), (0, 2, F16), (2, 2, F16)),  # qs, qh, d, m
    Q.IQ4_NL: ((2, 16, U8), (0, 2, F16)),  # qs, d
    Q.Q2_K: ((16, 64, U8), (0, 16, U8), (80, 4, F16)),  # qs, scales, (d, dmin)
    Q.Q3_K: ((32, 64, U8), (0, 32, U8), (96, 12, U8), (108, 2, F16)),  # qs, hmask, scales, d
    Q.Q4_K: ((16, 128, U8), (0, 4, F16), (4, 12, U8)),  # qs, (d, dmin), scales
    Q.Q5_K: ((48, 128, U8), (16, 32, U8), (0, 4, F16), (4, 12, U8)),  # qs, qh, (d, dmin), scales
    Q.Q6_K: ((0, 128, U8), (128, 64, U8), (192, 16, I8), (208, 2, F16)),  # ql, qh, scales, d
    Q.IQ4_XS: ((8, 128, U8), (4, 4, U8), (2, 2, I16), (0, 2, F16)),  # qs, scales_l, scales_h, d
}

# Values per scale group as the kernels walk them (Q2_K, Q3_K and Q6_K scale every 16 values).
GROUP_SIZE = {q: 16 if q in (Q.Q2_K, Q.Q3_K, Q.Q6_K) else 32 for q in PLANES}


@dataclass
class PlanedWeight:
    """A quantized (rows, cols) weight as planes on one device."""

    qtype: Q
    rows: int
    cols: int
    planes: tuple[torch.Tensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.planes)


def split_planes(raw: torch.Tensor, qtype: Q, cols: int) -> PlanedWeight:
    """Planes of a uint8 (rows, row_bytes) tensor in qtype's block format, on raw's device."""
    qtype = Q(qtype)
    if qtype not in PLANES:
        raise ValueError(f"no GPU layout for {qtype.name}; supported: {', '.join(q.name for q in PLANES)}")
    block, type_size = GGML_BLOCK_SIZES[qtype]
    if raw.dim() != 2 or raw.dtype != U8:
        raise ValueError(f"expected a 2-D uint8 tensor of {qtype.name} blocks, got {raw.dtype} of shape {tuple(raw.shape)}")
    rows, row_bytes = raw.shape
    if cols % block or row_bytes != cols // block * type_size:
        raise ValueError(f"{qtype.name}: {cols} columns need {cols // block * type_size} bytes per row, got {row_bytes}")
    blocks = raw.reshape(rows, cols // block, type_size)
    planes = [blocks[:, :, at : at + size].reshape(rows, -1).contiguous().view(dtype) for at, size, dtype in PLANES[qtype]]
    return PlanedWeight(qtype, rows, cols, tuple(planes))


def join_planes(weight: PlanedWeight) -> torch.Tensor:
    """The file's uint8 (rows, row_bytes) bytes back from the planes (the inverse of split_planes)."""
    nb = weight.cols // GGML_BLOCK_SIZES[weight.qtype][0]
    fields = sorted(zip(PLANES[weight.qtype], weight.planes), key=lambda f: f[0][0])
    parts = [plane.view(U8).reshape(weight.rows, nb, size) for (_, size, _), plane in fields]
    return torch.cat(parts, dim=2).reshape(weight.rows, -1)


def random_blocks(qtype: Q, rows: int, cols: int, device="cpu", seed: int = 0) -> torch.Tensor:
    """uint8 (rows, row_bytes) of random bytes made valid for qtype: every fp16 field holds a finite scale
    of modest size (|s| in [2**-14, 2**-6]), so all bit patterns of the quant fields are exercised without inf/NaN."""
    qtype = Q(qtype)
    block, type_size = GGML_BLOCK_SIZES[qtype]
    gen = torch.Generator(device=device).manual_seed(seed)
    raw = torch.randint(0, 256, (rows, cols // block, type_size), dtype=U8, device=device, generator=gen)
    for at, size, dtype in PLANES[qtype]:
        if dtype == F16:
            n = size // 2
            scale = torch.rand((rows, cols // block, n), device=device, generator=gen) * (2**-6 - 2**-14) + 2**-14
            sign = torch.randint(0, 2, scale.shape, device=device, generator=gen) * 2 - 1
            raw[:, :, at : at + size] = (scale * sign).to(F16).view(U8).reshape(rows, cols // block, size)
    return raw.reshape(rows, -1)
