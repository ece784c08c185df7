"""Fused activation-side ops of a transformer layer on the GPU: RMS norm (with the residual add), q/k norm + RoPE,
the gated activation, the KV-cache store. One launch each where eager torch took 4 to 10 (docs/GPU.md).

A decode step of an 8B model ran ~320 small elementwise kernels (~3 ms of a 7.4 ms step) around its 225 matmuls;
inside a CUDA graph each launch still costs a few microseconds of GPU time, so the count is what matters.
Each op has a torch twin in kamado.models.blocks (what the CPU runs); tests/kernels/test_triton_ops.py compares them.
Arithmetic is float32 throughout (ggml-cuda's choice too): sums are tree reductions, not the CPU path's doubles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tanh(x):
    # 1 - 2 / (e^2x + 1): exact limits at +-inf, no libdevice call (which Triton's CPU interpreter lacks)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, sum_ptr, w_ptr, y_ptr, D, stride_x, stride_res, eps,
                     HAS_RES: tl.constexpr, HAS_W: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """Row r: s = x[r] (+ res[r]); y[r] = s / sqrt(mean(s^2) + eps) * w; s is stored too when res is given."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    s = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(res_ptr + row * stride_res + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(sum_ptr + row * D + offs, s, mask=mask)
    y = s * (1.0 / tl.sqrt(tl.sum(s * s, axis=0) / D + eps))
    if HAS_W:
        y = y * tl.load(w_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + row * D + offs, y, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, residual: torch.Tensor | None = None):
    """rms_norm(x (+ residual)) * weight over the last dim of a (T, D) float32 tensor whose rows may be strided.
    Returns y, or (x + residual, y) when a residual is given (the add and the norm in one pass)."""
    rows, d = x.shape
    y = torch.empty(rows, d, dtype=torch.float32, device=x.device)
    total = torch.empty_like(y) if residual is not None else y
    if rows:
        res = residual if residual is not None else x
        _rms_norm_kernel[(rows,)](x, res, total, weight if weight is not None else x, y, d, x.stride(0), res.stride(0), eps,
                                  HAS_RES=residual is not None, HAS_W=weight is not None, BLOCK_D=triton.next_power_of_2(d),
                                  num_warps=_warps(d))  # fmt: skip
    return y if residual is None else (total, y)


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, w_ptr, y_ptr, H, D, HALF, stride_row, stride_head, stride_trig, eps,
                 NEOX: tl.constexpr, HAS_NORM: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """One head of one row: optional RMS norm with a per-head weight row, then rotation of its first 2*HALF dims."""
    pid = tl.program_id(0)
    row = (pid // H).to(tl.int64)
    head = pid % H
    src = x_ptr + row * stride_row + head * stride_head
    dst = y_ptr + pid.to(tl.int64) * D
    i = tl.arange(0, BLOCK_HALF)
    pair = i < HALF
    ia = i if NEOX else 2 * i  # NEOX rotates (x[i], x[i + half]); NORM rotates (x[2i], x[2i + 1])
    ib = i + HALF if NEOX else 2 * i + 1
    t = 2 * HALF + tl.arange(0, BLOCK_D)  # dimensions past n_dims pass through
    tail = t < D
    a = tl.load(src + ia, mask=pair, other=0.0)
    b = tl.load(src + ib, mask=pair, other=0.0)
    rest = tl.load(src + t, mask=tail, other=0.0)
    if HAS_NORM:
        scale = 1.0 / tl.sqrt((tl.sum(a * a, axis=0) + tl.sum(b * b, axis=0) + tl.sum(rest * rest, axis=0)) / D + eps)
        w = w_ptr + head * D
        a = a * scale * tl.load(w + ia, mask=pair, other=0.0)
        b = b * scale * tl.load(w + ib, mask=pair, other=0.0)
        rest = rest * scale * tl.load(w + t, mask=tail, other=0.0)
    c = tl.load(cos_ptr + row * stride_trig + i, mask=pair, other=0.0)
    s = tl.load(sin_ptr + row * stride_trig + i, mask=pair, other=0.0)
    tl.store(dst + ia, a * c - b * s, mask=pair)
    tl.store(dst + ib, b * c + a * s, mask=pair)
    tl.store(dst + t, rest, mask=tail)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool, norm_weight: torch.Tensor | None = None,
         eps: float = 0.0) -> torch.Tensor:
    """x (T, H, D) float32, each head's last dim contiguous (rows and heads may be strided, e.g. a slice of q|k|v);
    cos/sin (T, n_dims/2) from Rope.cos_sin; norm_weight (H, D) applies a per-head RMS norm first (Gemma 3 / Qwen 3's
    q/k norm). Returns a new contiguous (T, H, D) tensor."""
    rows, heads, d = x.shape
    half = cos.shape[1]
    y = torch.empty(rows, heads, d, dtype=torch.float32, device=x.device)
    if rows:
        _rope_kernel[(rows * heads,)](x, cos, sin, norm_weight if norm_weight is not None else x, y, heads, d, half,
                                      x.stride(0), x.stride(1), cos.stride(0), eps, NEOX=neox, HAS_NORM=norm_weight is not None,
                                      BLOCK_HALF=triton.next_power_of_2(half), BLOCK_D=triton.next_power_of_2(max(d - 2 * half, 1)),
                                      num_warps=1)  # fmt: skip
    return y


@triton.jit
def _gated_kernel(g_ptr, u_ptr, y_ptr, F, stride_g, stride_u, GELU: tl.constexpr, BLOCK: tl.constexpr):
    """y = act(g) * u elementwise over one (row, block of columns)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    g = tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0)
    u = tl.load(u_ptr + row * stride_u + cols, mask=mask, other=0.0)
    if GELU:  # tanh approximation, as ggml and exact.gelu_tanh
        act = 0.5 * g * (1.0 + _tanh(0.7978845608028654 * g * (1.0 + 0.044715 * g * g)))
    else:
        act = g / (1.0 + tl.exp(-g))
    tl.store(y_ptr + row * F + cols, act * u, mask=mask)


def gated(g: torch.Tensor, u: torch.Tensor, activation: str) -> torch.Tensor:
    """act(g) * u for (T, F) float32 g and u (strided rows allowed: halves of one gate|up output); act: silu or gelu."""
    rows, width = g.shape
    y = torch.empty(rows, width, dtype=torch.float32, device=g.device)
    block = min(1024, triton.next_power_of_2(width))
    if rows:
        _gated_kernel[(rows, triton.cdiv(width, block))](g, u, y, width, g.stride(0), u.stride(0), GELU=activation == "gelu",
                                                         BLOCK=block, num_warps=4)  # fmt: skip
    return y


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slots_ptr, WK, WV, stride_k, stride_v,
                     BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):  # fmt: skip
    """Row r's keys and values (WK, WV values) into cache slot slots[r], rounded to the cache's dtype."""
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + row)
    ok = tl.arange(0, BLOCK_K)
    k = tl.load(k_ptr + row * stride_k + ok, mask=ok < WK)
    tl.store(kc_ptr + slot * WK + ok, k.to(kc_ptr.dtype.element_ty), mask=ok < WK)
    ov = tl.arange(0, BLOCK_V)
    v = tl.load(v_ptr + row * stride_v + ov, mask=ov < WV)
    tl.store(vc_ptr + slot * WV + ov, v.to(vc_ptr.dtype.element_ty), mask=ov < WV)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> None:
    """k_cache[slots] = k, v_cache[slots] = v for k (T, Hkv, D) and v (T, Hkv, Dv) whose (heads, dims) are contiguous
    within a row; the caches are (n_slots, Hkv, D*) tensors, contiguous."""
    rows = k.shape[0]
    wk, wv = k.shape[1] * k.shape[2], v.shape[1] * v.shape[2]
    if rows:
        _store_kv_kernel[(rows,)](k, v, k_cache, v_cache, slots, wk, wv, k.stride(0), v.stride(0),
                                  BLOCK_K=triton.next_power_of_2(wk), BLOCK_V=triton.next_power_of_2(wv), num_warps=4)  # fmt: skip


def _warps(width: int) -> int:
    return 4 if width <= 2048 else 8 if width <= 8192 else 16
