"""Fused Triton kernels for the hot loops of k-quant quantization on the GPU: the scale searches make_qkx_quants
(Q2_K/Q4_K/Q5_K) and make_qx_quants (Q6_K, Q3_K with importance weights).

The eager torch twins (kquants.t_make_qkx_quants, t_make_qx_quants) make ~10-20 passes over the whole tensor per
candidate scale; these kernels keep a group's 16 or 32 values in cache and try every candidate in one launch. It stays bit-exact with
ggml: compiled with enable_fp_fusion=False (no FMA contraction), divisions through div_rn (IEEE; Triton's `/` is an
approximate division), levels through ggml's nearest_int bit trick, and every sum in index order. make_qkx_quants
covers the reference rule (clamp_v False: Q2_K, Q4_K and Q5_K without importance weights); NaN inputs are not reproduced
(min/max differ on NaN), which only matters for tensors holding NaN.
"""

from __future__ import annotations

import os

import numpy as np
import torch

F32 = np.float32

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the eager twin serves
    triton = None

BLOCK_COLUMNS = 128


def usable(x: torch.Tensor) -> bool:
    """Whether the kernels run on x: a CUDA tensor with Triton present, or Triton's CPU interpreter switched on
    (TRITON_INTERPRET=1, for checking the kernels without a GPU). KAMADO_QUANTS_TRITON=0 forces the eager twins."""
    if triton is None or os.environ.get("KAMADO_QUANTS_TRITON", "1") == "0":
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _levels(xj, iscale, mn, NMAX: tl.constexpr):
        v = (xj - mn) * iscale
        i = (v + 12582912.0).to(tl.int32, bitcast=True)
        i = (i & 0x7FFFFF) - 0x400000
        return tl.minimum(tl.maximum(i, 0), NMAX)

    @triton.jit
    def _error(x_ptr, w_ptr, cols, mask, S, iscale, mn, scale, new_mn, N: tl.constexpr, NMAX: tl.constexpr, USE_MAD: tl.constexpr):
        """sum_j w_j * f(lf_j*scale + new_mn - x_j), f = |.| or square, lf_j the levels of (iscale, mn)."""
        err = tl.zeros_like(scale)
        for j in tl.static_range(N):
            xj = tl.load(x_ptr + j * S + cols, mask=mask, other=0.0)
            wj = tl.load(w_ptr + j * S + cols, mask=mask, other=0.0)
            lf = _levels(xj, iscale, mn, NMAX).to(tl.float32)
            t = lf * scale + new_mn - xj
            if USE_MAD:
                t = tl.abs(t)
            else:
                t = t * t
            err = err + wj * t
        return err

    @triton.jit
    def _make_qkx_kernel(x_ptr, w_ptr, num_ptr, scale_ptr, min_ptr, L_ptr, S, N: tl.constexpr, NMAX: tl.constexpr,
                         NSTEP: tl.constexpr, USE_MAD: tl.constexpr, BLOCK: tl.constexpr):
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < S
        xmin = tl.full((BLOCK,), float("inf"), tl.float32)
        mx = tl.full((BLOCK,), float("-inf"), tl.float32)
        sum_w = tl.zeros((BLOCK,), tl.float32)
        sum_x = tl.zeros((BLOCK,), tl.float32)
        for j in tl.static_range(N):
            xj = tl.load(x_ptr + j * S + cols, mask=mask, other=0.0)
            wj = tl.load(w_ptr + j * S + cols, mask=mask, other=0.0)
            xmin = tl.minimum(xmin, xj)
            mx = tl.maximum(mx, xj)
            sum_w = sum_w + wj
            sum_x = sum_x + wj * xj
        zero = tl.zeros((BLOCK,), tl.float32)
        mn = tl.where(xmin > 0, zero, xmin)
        flat = mx <= mn
        mx = tl.where(flat, mn + 1.0, mx)
        fmax = tl.full((BLOCK,), NMAX, tl.float32)
        L_iscale = tl.math.div_rn(fmax, mx - mn)
        L_mn = mn
        scale = tl.math.div_rn(tl.full((BLOCK,), 1.0, tl.float32), L_iscale)
        best_error = _error(x_ptr, w_ptr, cols, mask, S, L_iscale, mn, scale, mn, N, NMAX, USE_MAD)
        for step in range(NSTEP + 1):
            iscale = tl.math.div_rn(tl.load(num_ptr + step + cols * 0), mx - mn)
            sum_l = tl.zeros((BLOCK,), tl.float32)
            sum_xl = tl.zeros((BLOCK,), tl.float32)
            sum_l2 = tl.zeros((BLOCK,), tl.float32)
            for j in tl.static_range(N):
                xj = tl.load(x_ptr + j * S + cols, mask=mask, other=0.0)
                wj = tl.load(w_ptr + j * S + cols, mask=mask, other=0.0)
                lf = _levels(xj, iscale, mn, NMAX).to(tl.float32)
                wl = wj * lf
                sum_l = sum_l + wl
                sum_xl = sum_xl + wl * xj
                sum_l2 = sum_l2 + wl * lf
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = tl.math.div_rn(sum_w * sum_xl - sum_x * sum_l, D)
            this_min = tl.math.div_rn(sum_l2 * sum_x - sum_l * sum_xl, D)
            positive = this_min > 0
            this_min = tl.where(positive, zero, this_min)
            this_scale = tl.where(positive, tl.math.div_rn(sum_xl, sum_l2), this_scale)
            cur_error = _error(x_ptr, w_ptr, cols, mask, S, iscale, mn, this_scale, this_min, N, NMAX, USE_MAD)
            better = (D > 0) & (cur_error < best_error)
            L_iscale = tl.where(better, iscale, L_iscale)
            L_mn = tl.where(better, mn, L_mn)
            best_error = tl.where(better, cur_error, best_error)
            scale = tl.where(better, this_scale, scale)
            mn = tl.where(better, this_min, mn)
        for j in tl.static_range(N):
            xj = tl.load(x_ptr + j * S + cols, mask=mask, other=0.0)
            level = tl.where(flat, 0, _levels(xj, L_iscale, L_mn, NMAX))
            tl.store(L_ptr + j * S + cols, level, mask=mask)
        first_min = tl.where(xmin > 0, zero, xmin)
        tl.store(scale_ptr + cols, tl.where(flat, zero, scale), mask=mask)
        tl.store(min_ptr + cols, -tl.where(flat, first_min, mn), mask=mask)


    @triton.jit
    def _qx_levels(xj, iscale, NMAX: tl.constexpr):
        i = (iscale * xj + 12582912.0).to(tl.int32, bitcast=True)
        i = (i & 0x7FFFFF) - 0x400000
        return tl.minimum(tl.maximum(i, -NMAX), NMAX - 1)

    @triton.jit
    def _qx_sums(x_ptr, w_ptr, cols, mask, S, iscale, N: tl.constexpr, NMAX: tl.constexpr):
        sumlx = tl.zeros_like(iscale)
        suml2 = tl.zeros_like(iscale)
        for j in tl.static_range(N):
            xj = tl.load(x_ptr + j * S + cols, mask=mask, other=0.0)
            wj = tl.load(w_ptr + j * S + cols, mask=mask, other=0.0)
            lf = _qx_levels(xj, iscale, NMAX).to(tl.float32)
            sumlx = sumlx + (wj * xj) * lf
            suml2 = suml2 + (wj * lf) * lf
        return sumlx, suml2

    @triton.jit
    def _make_qx_kernel(x_ptr, w_ptr, num_ptr, scale_ptr, L_ptr, S, N: tl.constexpr, NMAX: tl.constexpr, BLOCK: tl.constexpr):
        cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < S
        zero = tl.zeros((BLOCK,), tl.float32)
        amax = zero
        vmax = zero
        for j in tl.static_range(N):  # ggml's scan: the first value of largest magnitude, +0.0 when all are zero
            xj = tl.load(x_ptr + j * S + cols, mask=mask, other=0.0)
            take = tl.abs(xj) > amax
            amax = tl.where(take, tl.abs(xj), amax)
            vmax = tl.where(take, xj, vmax)
        best_iscale = tl.math.div_rn(tl.full((BLOCK,), -NMAX, tl.float32), vmax)
        sumlx, suml2 = _qx_sums(x_ptr, w_ptr, cols, mask, S, best_iscale, N, NMAX)
        scale = tl.where(suml2 != 0, tl.math.div_rn(sumlx, suml2), zero)
        best = scale * sumlx
        for k in range(18):
            iscale = tl.math.div_rn(tl.load(num_ptr + k + cols * 0), vmax)
            sumlx, suml2 = _qx_sums(x_ptr, w_ptr, cols, mask, S, iscale, N, NMAX)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_iscale = tl.where(better, iscale, best_iscale)
            scale = tl.where(better, tl.math.div_rn(sumlx, suml2), scale)
            best = tl.where(better, scale * sumlx, best)
        is_zero = amax < 1e-15
        for j in tl.static_range(N):
            xj = tl.load(x_ptr + j * S + cols, mask=mask, other=0.0)
            level = tl.where(is_zero, 0, _qx_levels(xj, best_iscale, NMAX) + NMAX)
            tl.store(L_ptr + j * S + cols, level, mask=mask)
        tl.store(scale_ptr + cols, tl.where(is_zero, zero, scale), mask=mask)


def make_qx_quants(x: torch.Tensor, nmax: int, w: torch.Tensor):
    """make_qx_quants(rmse_type=1) over the columns of x (n, S): (scale (S,), L (n, S) int32) as kquants.t_make_qx_quants."""
    n, S = x.shape
    x = x.contiguous()
    w = w.contiguous()
    # the 18 candidates' numerators -(nmax + 0.1*step), step = -9..9 without 0, rounded as ggml rounds them
    numerators = np.array([-(F32(nmax) + F32(0.1) * F32(step)) for step in range(-9, 10) if step], F32)
    scale = torch.empty(S, dtype=torch.float32, device=x.device)
    L = torch.empty((n, S), dtype=torch.int32, device=x.device)
    grid = (triton.cdiv(S, BLOCK_COLUMNS),)
    _make_qx_kernel[grid](x, w, torch.from_numpy(numerators).to(x.device), scale, L, S, N=n, NMAX=nmax, BLOCK=BLOCK_COLUMNS,
                          enable_fp_fusion=False)
    return scale, L


def make_qkx_quants(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool):
    """make_qkx2_quants over the columns of x (n, S): (scale (S,), L (n, S) int32, the_min (S,)) as kquants.t_make_qkx_quants."""
    n, S = x.shape
    x = x.contiguous()
    w = w.contiguous()
    # the candidates' numerators rmin + rdelta*step + nmax, rounded as ggml rounds them
    numerators = torch.from_numpy(np.array([F32(rmin) + F32(rdelta) * F32(step) + F32(nmax) for step in range(nstep + 1)], F32))
    scale = torch.empty(S, dtype=torch.float32, device=x.device)
    the_min = torch.empty(S, dtype=torch.float32, device=x.device)
    L = torch.empty((n, S), dtype=torch.int32, device=x.device)
    grid = (triton.cdiv(S, BLOCK_COLUMNS),)
    _make_qkx_kernel[grid](x, w, numerators.to(x.device), scale, the_min, L, S, N=n, NMAX=nmax, NSTEP=nstep, USE_MAD=use_mad,
                           BLOCK=BLOCK_COLUMNS, enable_fp_fusion=False)
    return scale, L, the_min
