"""How ggml-cpu rounds the activations it multiplies a weight with, as float32 values.

ggml never multiplies float32 activations with a quantized weight directly: each matmul first converts
the activation rows to the weight type's `vec_dot_type` (ggml-cpu type traits) and takes integer dot
products block by block. Since y = sum_b d_w[b] * d_x[b] * (integer dot of block b) equals
dequant(W) @ dequant(quantize(x)) up to float32 summation order, rounding x here and then using an exact
matmul reproduces llama.cpp's outputs to ~1e-6 (docs/NUMERICS.md has the measurements).

  Q8_0 (Q4_0, Q5_0, Q8_0, IQ4_NL, MXFP4 weights), also Q8_1 (Q4_1, Q5_1: same values; ggml's extra
  per-block sum s = fp16(d * sum q) is not reproduced): blocks of 32, d = amax / 127 stored as fp16,
  q = round-half-even(x * (127 / amax)) (ggml-cpu's AVX quantize_row_q8_0).
  Q8_K (k-quants, IQ2/IQ3/IQ1, IQ4_XS, TQ): blocks of 256, iscale = -127 / (the signed value of largest
  magnitude, first one on ties), q = min(127, round-half-even(iscale * x)), d = 1 / iscale in float32.
  F16 / BF16 weights: x rounded to that type. F32: unchanged.
"""

from __future__ import annotations

import torch

from kamado.gguf.constants import GGMLQuantizationType as T

Q8_0_WEIGHTS = {T.Q4_0, T.Q5_0, T.Q8_0, T.IQ4_NL, T.Q4_1, T.Q5_1}
Q8_K_WEIGHTS = {T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M,
                T.IQ4_XS, T.TQ1_0, T.TQ2_0}
if hasattr(T, "MXFP4"):
    Q8_0_WEIGHTS.add(T.MXFP4)


# 127 / amax is divided as ggml divides it: `127.0 / t` is torch's reciprocal(t) * 127, an ulp off a quarter of the time,
# which flips the rounding of some activations (docs/NUMERICS.md, 2026-12-03); a 0-dim tensor numerator is a true division.
_127 = torch.tensor(127.0)
_1 = torch.tensor(1.0)


def _blocks_q8_0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as float32 blocks of 32 (no copy of a float32 x) and each block's largest magnitude (..., blocks, 1)."""
    blocks = (x if x.dtype == torch.float32 else x.float()).reshape(*x.shape[:-1], x.shape[-1] // 32, 32)  # (an empty x too)
    # A block's max is lifted to 1e-30 so that a zero block divides by no zero: below ~3e-6 its fp16 d is 0 anyway.
    return blocks, torch.amax(blocks.abs(), dim=-1, keepdim=True).clamp_min_(1e-30)


def quantize_q8_0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_row_q8_0(x) along the last axis (a multiple of 32): quants (..., blocks, 32) as float32 integers and
    the blocks' fp16 scales d (..., blocks) as float32."""
    blocks, amax = _blocks_q8_0(x)
    d = amax.div(127.0).half().float()
    return torch.mul(blocks, torch.div(_127, amax)).round_(), d[..., 0]


def round_q8_0(x: torch.Tensor) -> torch.Tensor:
    """dequantize(quantize_row_q8_0(x)) along the last axis (a multiple of 32): quantize_q8_0's steps, with its fp16
    scale multiplied in as it is (float32 * fp16 computes in float32: the same product), 4 torch calls fewer
    (19.4 -> 16.6 us for a decode row of 640)."""
    blocks, amax = _blocks_q8_0(x)
    return torch.mul(blocks, torch.div(_127, amax)).round_().mul_(amax.div(127.0).half()).reshape(x.shape)


def quantize_q8_k(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_row_q8_K_ref(x) along the last axis (a multiple of 256), with ggml's signs: iscale = -127 / (the value
    of largest magnitude, the first on ties), q = min(127, round(iscale * x)), d = 1 / iscale. Quants (..., blocks,
    256) as float32 integers, d (..., blocks); a zero block gets q = 0, d = 0."""
    blocks = x.float().reshape(*x.shape[:-1], x.shape[-1] // 256, 256)
    peak = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    iscale = torch.div(-_127, torch.where(peak == 0, 1.0, peak))
    q = torch.mul(blocks, iscale).round_().clamp_max_(127.0)
    d = torch.where(peak == 0, 0.0, torch.div(_1, iscale))
    return q.mul_(peak != 0), d[..., 0]


def round_q8_k(x: torch.Tensor) -> torch.Tensor:
    """dequantize(quantize_row_q8_K(x)) along the last axis (a multiple of 256).

    ggml takes iscale = -127 / peak with the peak's sign, q = round(iscale * x) and d = 1 / iscale; both signs give
    the same q * d (rounding half to even is symmetric, and (-a) * (-b) == a * b), and no q passes 127, so this is
    round(x * s) * (1 / s) with s = 127 / max|x| (a zero block stays zero: its max is lifted to 1e-30).
    """
    blocks = (x if x.dtype == torch.float32 else x.float()).reshape(*x.shape[:-1], x.shape[-1] // 256, 256)
    s = torch.div(_127, torch.amax(blocks.abs(), dim=-1, keepdim=True).clamp_min_(1e-30))
    return torch.mul(blocks, s).round_().mul_(s.reciprocal_()).reshape(x.shape)


def _to(dtype):
    return lambda x: x.to(dtype).float()


def activation_rounding(qtype: T):
    """The function x -> x as ggml-cpu sees it when multiplying with a weight of this type."""
    if qtype in Q8_0_WEIGHTS:
        return round_q8_0
    if qtype in Q8_K_WEIGHTS:
        return round_q8_k
    if qtype == T.F16:
        return _to(torch.float16)
    if qtype == T.BF16:
        return _to(torch.bfloat16)
    return lambda x: x
