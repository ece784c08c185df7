"""Decode GEMV for Q4_K and Q6_K weights in CUDA C (q8k_gemv.cu), compiled at run time by NVRTC through torch.

Why CUDA here: the Triton word GEMVs (kernels.q4k_gemv_kernel, q6k_gemv_kernel) stayed at 25-40% of the H200's memory
roofline whatever their configs, latency-bound (docs/GPU.md, sessions 3-5); this kernel issues all its weight loads of
several 4-block steps before using any, and takes integer dot products (4 products per dp4a) on activations as int8:
rounded to Q8_K (the rounding llama.cpp's CPU backend and kamado's CPU path apply to these products,
kamado.kernels.activations), plus, with PLANES = 2 (the default), that rounding's remainder as a second int8 plane, so
the product is within ~1e-4 of the unrounded one (see PLANES). NVRTC ships with torch's CUDA wheels: no toolchain needed.

`available()` is False where torch cannot compile (no CUDA, no NVRTC); callers then keep the Triton kernels.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.kernels.activations import round_q8_k

SOURCE = Path(__file__).with_name("q8k_gemv.cu")
KERNELS = {Q.Q4_K: "q4k_q8k_gemv", Q.Q6_K: "q6k_q8k_gemv"}
# (ROWS weight rows a warp, U 4-block steps loaded ahead, WARPS a program); MX, the activation rows, is the call's.
# H200 (benchmarks/gemv_variants.py, docs/GPU.md session 7): one row of x: (1, 4, 4) best or within 3% of the best on
# every Llama-3-8B shape of both types (14336x4096 Q4_K 15.0 µs, 52% of the roofline, against 26.2 for the Triton word
# GEMV); 8 rows: (4, 4, 2) 31.0 µs there against 49.6 with (1, 4, 4) (each x row loaded is used for 4 weight rows).
CONFIG = (1, 4, 4)
BATCH_CONFIG = (4, 4, 2)
# x as 1 plane (Q8_K quants: the CPU backend's rounding) or 2 (quants and their rounding remainder, ~15 bits: as close
# to the unrounded product as a float GEMV; docs/GPU.md session 7: the 1-plane rounding flips steps on the tiny random
# models past issue 9's 0.02). KAMADO_Q8K_PLANES chooses; each plane is one more activation row for the kernel.
PLANES = int(os.environ.get("KAMADO_Q8K_PLANES", "2"))
# Up to 8 activation rows of the kernel (batched decode), x's planes included: each row's result is the same bits as
# alone (same order of sums per row).
MAX_M = 8 // PLANES


def supports(qtype: Q, cols: int) -> bool:
    return qtype in KERNELS and cols % 256 == 0


@functools.cache
def _compiled(name: str, nb: int, mx: int, config: tuple[int, int, int], device: int):
    rows, steps, warps = config
    defines = [f"-DNB={nb}", f"-DMX={mx}", f"-DROWS={rows}", f"-DU={steps}", f"-DWARPS={warps}", f"-DPLANES={PLANES}"]
    with torch.cuda.device(device):
        return torch.cuda._compile_kernel(SOURCE.read_text(), name, nvcc_options=["-std=c++17", *defines])


@functools.cache
def available(device: int = 0) -> bool:
    """Whether the kernels compile here (checked once per device by compiling the smallest shape)."""
    if not torch.cuda.is_available():
        return False
    try:
        _compiled("quantize_q8k", 1, 1, CONFIG, device)
    except Exception as e:  # no NVRTC, or a torch without _compile_kernel: the Triton GEMVs remain
        warnings.warn(f"the CUDA GEMV cannot be compiled here ({type(e).__name__}: {e}); using the Triton GEMV", stacklevel=2)
        return False
    return True


def quantize_q8k(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (M, K) float32 on the GPU, K a multiple of 256 -> int8 quants (PLANES M, K), scales d (PLANES M, K / 256), the
    sum of each 16 quants (PLANES M, K / 16) int32. Rows :M are kamado.kernels.activations.quantize_q8_k's values (its q
    times the sign ggml gives them); with 2 planes rows M: are the remainders (`rounded` says what they stand for)."""
    m, k = x.shape
    nb = k // 256
    xq = torch.empty(PLANES * m, k, dtype=torch.int8, device=x.device)
    xd = torch.empty(PLANES * m, nb, dtype=torch.float32, device=x.device)
    xs = torch.empty(PLANES * m, k // 16, dtype=torch.int32, device=x.device)
    kernel = _compiled("quantize_q8k", nb, 1, CONFIG, x.device.index)
    kernel(grid=((nb + 3) // 4, m, 1), block=(128, 1, 1), args=[x, x.stride(0), xq, xd, xs])
    return xq, xd, xs


def gemv(x: torch.Tensor, planes: tuple[torch.Tensor, ...], qtype: Q, n: int, config: tuple[int, int, int] | None = None) -> torch.Tensor:
    """y (M, n) = rounded(x) @ W.T for x (M, K), M <= MAX_M, and W in qtype's planes (layout.PLANES, contiguous),
    `supports`; config: CONFIG for one kernel row (x of one row, one plane), BATCH_CONFIG for more, unless given."""
    x = x.float().contiguous()
    m, k = x.shape
    config = config or (CONFIG if PLANES * m == 1 else BATCH_CONFIG)
    xq, xd, xs = quantize_q8k(x)
    y = torch.empty(m, n, dtype=torch.float32, device=x.device)
    rows, _, warps = config
    kernel = _compiled(KERNELS[qtype], k // 256, PLANES * m, config, x.device.index)
    kernel(grid=((n + rows * warps - 1) // (rows * warps), 1, 1), block=(32 * warps, 1, 1), args=[*planes, xq, xd, xs, y, n])
    return y


def rounded(x: torch.Tensor) -> torch.Tensor:
    """The float x (M, K) the GEMV multiplies for x (a torch twin, any device): round_q8_k(x) with one plane; with two,
    (q + r / 254) / s for q = round(x s), r = round((x s - q) 254)."""
    if PLANES == 1:
        return round_q8_k(x)
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // 256, 256)
    s = torch.div(torch.tensor(127.0), torch.amax(blocks.abs(), dim=-1, keepdim=True).clamp_min(1e-30))  # IEEE 127 / amax
    scaled = blocks * s
    q = scaled.round()
    return (q / s + (scaled - q).mul(254.0).round() / s / 254.0).reshape(x.shape)
