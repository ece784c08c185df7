"""TritonLinear: y = x @ W.T on a CUDA device with W kept in its GGUF block format (as planes, see layout.py).

Paths, chosen per call by the number of activation rows M (thresholds measured on an H100, docs/GPU.md):
  M <= 4            Q4_K and Q6_K layer weights (not the output projection): the CUDA GEMV of q8k_gemv.py, activations
                    as two int8 planes, integer dot products (q8k_gemv.MAX_M rows; KAMADO_CUDA_GEMV=0: off)
  M == 1            otherwise: fused dequantize-GEMV (float32 activations, one pass over the weight bytes); Q4_K and
                    Q6_K have their own (kernels.q4k_gemv_kernel, q6k_gemv_kernel: int32 words, x reordered once per
                    call), the other types share kernels.gemv_kernel
  2 <= M <= GEMM_MAX_M   fused dequantize-GEMM on tensor cores (fp16 activations, fp32 accumulation)
  M > GEMM_MAX_M    dequantize the whole weight to fp16 once per call, then the library matmul (cuBLAS)
F16/BF16/F32 weights use the library matmul in their own dtype at every M.
"""

from __future__ import annotations

import os

import torch
import triton

from kamado.gguf.constants import GGMLQuantizationType
from kamado.kernels.linear import FLOAT_TYPES, KernelError, QuantTensor
from kamado.kernels.triton import kernels, q8k_gemv
from kamado.kernels.triton.layout import GROUP_SIZE, PLANES, split_planes
from kamado.quants.iq4 import KVALUES

GEMM_MAX_M = 16  # above: dequantize + cuBLAS, as fast or faster from 32 rows on (H200 sweep, docs/GPU.md session 4)
# KAMADO_CUDA_GEMV=0: Q4_K/Q6_K decode products through the Triton word GEMVs (float activations) instead of q8k_gemv.
CUDA_GEMV = os.environ.get("KAMADO_CUDA_GEMV", "1") != "0"
# (BLOCK_N, BLOCK_K, num_warps) for the GEMV; (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for the fused GEMM.
GEMV_CONFIG = (8, 512, 4)  # best or near-best for Q4_K, Q4_0, Q6_K, Q8_0 in the H100 sweep (docs/GPU.md)
# The word GEMVs (M = 1, x in nibble order): qtype -> (kernel, how many leading planes it reads as int32 words).
WORD_GEMVS = {
    GGMLQuantizationType.Q4_K: (kernels.q4k_gemv_kernel, 3),  # qs, (d, dmin), scales: all
    GGMLQuantizationType.Q6_K: (kernels.q6k_gemv_kernel, 3),  # ql, qh, scales; d stays fp16
}
# Their configs: qtype -> ((min output rows, (BLOCK_N, BLOCK_K, num_warps, min programs for the split)), ...), the
# first entry whose min rows the weight reaches. Best in the H200 sweeps (docs/GPU.md session 5): many 2-row programs
# for the layer weights, 16-row programs for vocabulary-sized heads (Q4_K 128256x4096: 165 µs against 187 with 2 rows;
# Q6_K: 210 against 216).
WORD_GEMV_CONFIGS = {
    GGMLQuantizationType.Q4_K: ((65536, (16, 1024, 4, 2048)), (0, (2, 2048, 2, 0))),
    GGMLQuantizationType.Q6_K: ((65536, (16, 512, 4, 2048)), (0, (2, 2048, 2, 0))),
}
# The GEMV and the fused GEMM split K (the kernels' SPLIT_K) until they have at least this many programs, so a short
# weight (4096 x 4096: 512 GEMV row tiles, 64 GEMM tiles) still keeps every SM's memory requests in flight; 0 = never.
GEMV_MIN_PROGRAMS = 2048
GEMM_MIN_PROGRAMS = 512
# Split partial sums and the per-tile counters, shared by every TritonLinear of a device: kernels on one stream run
# one at a time and each launch leaves its counters at 0. Fixed size, made once: CUDA graphs keep captured pointers.
SPLIT_PARTIAL_FLOATS = 1 << 24  # 64 MiB
SPLIT_COUNTERS = 1 << 16
_split_workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
GEMM_CONFIG_SMALL = (16, 64, 128, 4, 3)  # M <= 16: decode batches
GEMM_CONFIG_LARGE = (64, 128, 64, 8, 3)
DEQUANT_CONFIG = (32, 256, 4)


def _split_k(tiles: int, cols: int, block_k: int, tile_floats: int, min_programs: int) -> int:
    """How many ranges to cut K into: doubling while there are fewer than min_programs programs, each range stays a
    whole number of BLOCK_K tiles and the partial sums fit the workspace."""
    split = 1
    while (tiles * split < min_programs and cols % (2 * split * block_k) == 0
           and 2 * split * tiles * tile_floats <= SPLIT_PARTIAL_FLOATS and tiles <= SPLIT_COUNTERS):  # fmt: skip
        split *= 2
    return split


def _split_workspace(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _split_workspaces:
        _split_workspaces[device] = (torch.empty(SPLIT_PARTIAL_FLOATS, dtype=torch.float32, device=device),
                                     torch.zeros(SPLIT_COUNTERS, dtype=torch.int32, device=device))  # fmt: skip
    return _split_workspaces[device]


def _block_k(preferred: int, cols: int, group: int) -> int:
    """The largest power-of-two tile width <= preferred that divides cols and holds whole scale groups."""
    width = preferred
    while width > group and cols % width:
        width //= 2
    return width


def nibble_order(x: torch.Tensor) -> torch.Tensor:
    """A (1, K) row x as float32 in the word GEMVs' nibble order: the 4 x 4 transpose of every 16 values. One small
    copy kernel; a fresh tensor like the GEMV's output, which CUDA-graph capture takes from the graph's memory pool."""
    xp = torch.empty(x.shape[-1], dtype=torch.float32, device=x.device)
    xp.view(-1, 4, 4).copy_(x.reshape(-1, 4, 4).transpose(1, 2))
    return xp


class TritonLinear:
    """A GGUF weight resident on a CUDA device; calling it with x (M, in) returns float32 (M, out)."""

    def __init__(self, tensor: QuantTensor, device: torch.device | str = "cuda", stacked: tuple[QuantTensor, ...] = (),
                 logits: bool = False):  # fmt: skip
        """`stacked`: further weights of the same type and width read by the same input (q/k/v, gate/up), their
        rows appended below tensor's: one kernel launch gives all outputs side by side. `logits`: the output
        projection, whose activations are not rounded (as on the CPU: kamado/kernels/cpu.py, _input_rounding)."""
        parts = (tensor, *stacked)
        for part in parts:
            if len(part.shape) != 2:
                raise KernelError(f"tensor {part.name}: a linear layer needs a 2-D weight, got shape {part.shape}")
            if part.qtype != tensor.qtype or part.shape[1] != tensor.shape[1]:
                raise KernelError(f"tensor {part.name}: {part.qtype.name} {part.shape} cannot be stacked under "
                                  f"{tensor.name}: {tensor.qtype.name} {tensor.shape}")
        self.name = tensor.name
        self.qtype = tensor.qtype
        self.out_features, self.in_features = sum(part.shape[0] for part in parts), tensor.shape[1]
        if self.qtype in FLOAT_TYPES:
            self.float_weight = torch.cat([part.float_view().to(device) for part in parts])
            self.weight = None
            self.device = self.float_weight.device
            return
        if self.qtype not in PLANES:
            supported = ", ".join(q.name for q in (*FLOAT_TYPES, *PLANES))
            raise KernelError(f"tensor {tensor.name}: no GPU kernel for {self.qtype.name}; supported: {supported}")
        self.float_weight = None
        try:
            self.weight = split_planes(torch.cat([part.raw.to(device) for part in parts]), self.qtype, self.in_features)
        except ValueError as e:
            raise KernelError(f"tensor {tensor.name}: {e}") from None
        self.device = self.weight.planes[0].device
        self.group = GROUP_SIZE[self.qtype]
        if self.in_features % self.group:
            raise KernelError(f"tensor {tensor.name}: {self.in_features} columns are not a multiple of {self.group}")
        self.table = torch.tensor(KVALUES, dtype=torch.float32, device=self.device)
        # the planes as a word GEMV reads them (views: no extra memory)
        self.words = None
        if self.qtype in WORD_GEMVS:
            n_words = WORD_GEMVS[self.qtype][1]
            self.words = tuple(p.view(torch.int32) if i < n_words else p for i, p in enumerate(self.weight.planes))
        self.q8k_max_m = q8k_gemv.MAX_M if (CUDA_GEMV and not logits and q8k_gemv.supports(self.qtype, self.in_features)
                                            and q8k_gemv.available(self.device.index or 0)) else 0  # fmt: skip

    @property
    def nbytes(self) -> int:
        """Bytes of weight the device holds (what one pass of a decode step reads)."""
        if self.float_weight is not None:
            return self.float_weight.numel() * self.float_weight.element_size()
        return self.weight.nbytes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise KernelError(f"tensor {self.name}: input of shape {tuple(x.shape)}, expected (M, {self.in_features})")
        if x.device != self.device:
            raise KernelError(f"tensor {self.name}: input on {x.device}, weight on {self.device}")
        if self.float_weight is not None:
            return (x.to(self.float_weight.dtype) @ self.float_weight.T).float()
        m = x.shape[0]
        if m == 0:
            return x.new_zeros((0, self.out_features), dtype=torch.float32)
        if m <= self.q8k_max_m:
            return q8k_gemv.gemv(x, self.weight.planes, self.qtype, self.out_features)
        if m == 1:
            return self.gemv(x)
        if m <= GEMM_MAX_M:
            return self.fused_gemm(x)
        return (x.to(torch.float16) @ self.dequantize().T).float()

    def _plane_args(self) -> list:
        planes = list(self.weight.planes)
        planes += [planes[0]] * (4 - len(planes))  # unused slots: any valid pointer
        return [*planes, *(p.stride(0) for p in planes), self.table]

    def gemv(self, x: torch.Tensor) -> torch.Tensor:
        """Fused dequantize-GEMV of one row x (1, in), float32 arithmetic; the decode path."""
        if self.words is not None:
            return self._word_gemv(x)
        return self._planes_gemv(x)

    def _word_gemv(self, x: torch.Tensor) -> torch.Tensor:
        """kernels.q4k_gemv_kernel / q6k_gemv_kernel: planes as words, then strides, then the split workspace."""
        n, k = self.out_features, self.in_features
        block_n, block_k, warps, min_programs = next(c for rows, c in WORD_GEMV_CONFIGS[self.qtype] if n >= rows)
        block_k = _block_k(block_k, k, 256)
        tiles = triton.cdiv(n, block_n)
        split = _split_k(tiles, k, block_k, block_n, min_programs)
        y = torch.empty(1, n, dtype=torch.float32, device=x.device)
        WORD_GEMVS[self.qtype][0][(tiles, split)](
            nibble_order(x), y, n, k, *self.words, *(p.stride(0) for p in self.words), *_split_workspace(x.device),
            BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=warps,
        )  # fmt: skip
        return y

    def _planes_gemv(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        y = torch.empty(1, self.out_features, dtype=torch.float32, device=x.device)
        block_n, block_k, warps = GEMV_CONFIG
        block_k = _block_k(block_k, self.in_features, self.group)
        tiles = triton.cdiv(self.out_features, block_n)
        split = _split_k(tiles, self.in_features, block_k, block_n, GEMV_MIN_PROGRAMS)
        kernels.gemv_kernel[(tiles, split)](
            x, y, self.out_features, self.in_features, *_split_workspace(x.device), *self._plane_args(),
            QTYPE=int(self.qtype), GS=self.group, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=warps,
        )  # fmt: skip
        return y

    def fused_gemm(self, x: torch.Tensor) -> torch.Tensor:
        """Fused dequantize-GEMM on tensor cores (fp16 inputs, fp32 accumulation)."""
        x = x.to(torch.float16).contiguous()
        m = x.shape[0]
        y = torch.empty(m, self.out_features, dtype=torch.float32, device=x.device)
        block_m, block_n, block_k, warps, stages = GEMM_CONFIG_SMALL if m <= 16 else GEMM_CONFIG_LARGE
        block_k = _block_k(block_k, self.in_features, max(self.group, 16))
        tiles_n, tiles_m = triton.cdiv(self.out_features, block_n), triton.cdiv(m, block_m)
        split = _split_k(tiles_n * tiles_m, self.in_features, block_k, block_m * block_n, GEMM_MIN_PROGRAMS)
        kernels.gemm_kernel[(tiles_n, tiles_m, split)](
            x, y, m, self.out_features, self.in_features, x.stride(0), y.stride(0), *_split_workspace(x.device),
            *self._plane_args(), QTYPE=int(self.qtype), GS=self.group, BLOCK_M=block_m, BLOCK_N=block_n,
            BLOCK_K=block_k, SPLIT_K=split, num_warps=warps, num_stages=stages,
        )  # fmt: skip
        return y

    def dequantize(self) -> torch.Tensor:
        """The whole weight as fp16 (out, in), on the device."""
        w = torch.empty(self.out_features, self.in_features, dtype=torch.float16, device=self.device)
        block_n, block_k, warps = DEQUANT_CONFIG
        block_k = _block_k(block_k, self.in_features, self.group)
        grid = (triton.cdiv(self.out_features, block_n), self.in_features // block_k)
        kernels.dequant_kernel[grid](
            w, self.out_features, self.in_features, *self._plane_args(),
            QTYPE=int(self.qtype), GS=self.group, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        )  # fmt: skip
        return w
