"""RoPE and attention as ggml-cpu computes them (x86, GCC -march=native builds), for the "ggml" kernel backend.

blocks.py's versions are llama.cpp's numerics up to float32 summation order; these follow the order itself, so that
with kamado/kernels/ggml_order.py a 256-row forward pass reproduces llama.cpp bit for bit (docs/NUMERICS.md,
2026-12-03; benchmarks/parity/faemu.c is the scalar specification they were checked against):

- RoPE: cos/sin of the float32 angles from the C library's cosf/sinf (glibc; through ctypes), and the rotation as
  GCC contracts ggml's rotate_pairs: a' = fma(a, cos, -(b*sin)), b' = fma(a, sin, b*cos).
- GELU: blocks.gelu_tanh (ggml's fp16 table) with ggml's 0 for x <= -10.
- Attention with >= 64 query rows: ggml-cpu's tiled flash-attention kernel (64 x 64 tiles): Q.K as a sequential fma
  chain over the head dimension with fp16 keys, online softmax per key tile with ggml_v_expf (AVX-512 form) and
  sums of 16 lanes in double, the running max rescaled with libm expf, values (fp16) accumulated by fma key by key.
  Fewer query rows run ggml's one-row kernel (fp16 accumulator), which is not emulated: blocks.attention serves them.

fma(a, b, c) is emulated in float64 as in ggml_order.fma.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import warnings

import numpy as np
import torch

from kamado.kernels.ggml_order import fma
from kamado.models.blocks import ACTIVATIONS as BLOCK_ACTIVATIONS
from kamado.models.blocks import Rope, attention, gelu_tanh

TILE = 64  # ggml-cpu's flash-attention tiles (GGML_FA_TILE_Q, GGML_FA_TILE_KV)


def _libm():
    name = ctypes.util.find_library("m")
    try:
        lib = ctypes.CDLL(name or "libm.so.6")
    except OSError:
        return None
    for f in ("cosf", "sinf", "expf"):
        getattr(lib, f).restype = ctypes.c_float
        getattr(lib, f).argtypes = [ctypes.c_float]
    return lib


_LIBM = _libm()
_WARNED = []


def libm_float(name: str, x: torch.Tensor) -> torch.Tensor:
    """The C library's float32 function `name` (cosf, sinf, expf) elementwise; without a loadable libm, torch's
    (not bit-exact against llama.cpp; said once)."""
    if _LIBM is None:
        if not _WARNED:
            warnings.warn("no C math library found: the ggml backend's RoPE and attention use torch's cos/sin/exp, "
                          "which are not bit-exact against llama.cpp", stacklevel=2)
            _WARNED.append(True)
        return getattr(torch, name[:-1])(x)
    f = np.frompyfunc(getattr(_LIBM, name), 1, 1)
    flat = x.detach().float().reshape(-1).numpy()
    return torch.from_numpy(f(flat).astype(np.float32)).reshape(x.shape)


class GgmlRope(Rope):
    """Rope with glibc's cosf/sinf and the fma-contracted rotation."""

    def trig(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return libm_float("cosf", theta), libm_float("sinf", theta)

    def tables(self, cos, sin, head_dim):
        c_full, s_full, partner = super().tables(cos, sin, head_dim)
        first = torch.zeros(head_dim, dtype=torch.bool)  # the a of each pair (a, b)
        n = self.spec.n_dims
        first[torch.arange(n // 2) if self.spec.neox else torch.arange(0, n, 2)] = True
        return c_full, s_full, partner, first

    @staticmethod
    def rotate(x, c_full, s_full, partner, first=None):
        partnered = x.roll(partner, -1) if isinstance(partner, int) else x.index_select(-1, partner)
        xc, ps = x * c_full, partnered * s_full  # the products GCC rounds: b*sin at a, b*cos at b
        return torch.where(first, torch.addcmul(ps.double(), x.double(), c_full.double()),
                           torch.addcmul(xc.double(), partnered.double(), s_full.double())).float()


def gelu(x: torch.Tensor) -> torch.Tensor:
    """ggml's GELU with its test on the low side too: 0 for x <= -10 (blocks.gelu_tanh leaves x in [-10.004, -10]
    its table entry, -1.2e-6, to save the test)."""
    return torch.where(x <= -10.0, 0.0, gelu_tanh(x))


ACTIVATIONS = {**BLOCK_ACTIVATIONS, "gelu": gelu}

_E = [float.fromhex(h) for h in ("0x1.8p23", "0x1.715476p+0", "0x1.62e4p-1", "0x1.7f7d1cp-20", "0x1.0e4020p-7",
                                 "0x1.573e2ep-5", "0x1.555e66p-3", "0x1.fffdb6p-2", "0x1.ffffecp-1")]


def v_expf(x: torch.Tensor) -> torch.Tensor:
    """ggml_v_expf, AVX-512 form, for x <= 0 (softmax): 2^n * p(b) with n = round(x / ln 2); 0 where n <= -192."""
    r, log2e, ln2_hi, ln2_lo, c5, c4, c3, c2, c1 = (torch.tensor(v, dtype=torch.float32) for v in _E)
    z = fma(x, log2e, r)
    n = z - r
    b = fma(-n, ln2_lo, fma(-n, ln2_hi, x))
    u = b * b
    j = fma(fma(fma(c5, b, c4), u, fma(c3, b, c2)), u, fma(c1, b, torch.tensor(1.0)))
    out = torch.ldexp(j.double(), n.clamp(-192, 192).double()).float()  # scalef: one rounding of j * 2^n
    return torch.where(n <= -192, 0.0, out)


def _reduce16(v: torch.Tensor) -> torch.Tensor:
    """_mm512_reduce_add_ps over the last axis (16) as GCC implements it: halves 8+8, 4+4, then (0+2)+(1+3)."""
    a = v[..., :8] + v[..., 8:]
    b = a[..., :4] + a[..., 4:]
    return (b[..., 0] + b[..., 2]) + (b[..., 1] + b[..., 3])


def attention_tiled(q, k, v, q_pos, k_pos, scale: float, window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """blocks.attention's contract (q (T, H, D), k/v (S, Hkv, D*) -> (T, H*Dv)) in ggml-cpu's tiled kernel's order;
    fewer than 64 query rows or soft-capping: blocks.attention."""
    n_tok, n_head, n_kv = q.shape[0], q.shape[1], k.shape[1]
    if n_tok < TILE or softcap:
        return attention(q, k, v, q_pos, k_pos, scale, window, softcap)
    group, n_keys, dv = n_head // n_kv, k.shape[0], v.shape[2]
    tq, tk = math.ceil(n_tok / TILE) * TILE, math.ceil(n_keys / TILE) * TILE
    qh = torch.zeros(n_head, tq, q.shape[2])
    qh[:, :n_tok] = q.float().transpose(0, 1)
    kh = torch.zeros(n_head, tk, k.shape[2])
    kh[:, :n_keys] = k.half().float().transpose(0, 1).repeat_interleave(group, 0)
    vh = torch.zeros(n_head, tk, dv)
    vh[:, :n_keys] = v.half().float().transpose(0, 1).repeat_interleave(group, 0)
    # Q.K: one fma chain over the head dimension per (query, key)
    kq = torch.zeros(n_head, tq, tk)
    for d in range(q.shape[2]):
        kq = fma(qh[:, :, d, None], kh[:, None, :, d], kq)
    kq = kq * torch.tensor(scale, dtype=torch.float32)
    delta = q_pos[:, None] - k_pos[None, :]
    visible = torch.zeros(tq, tk, dtype=torch.bool)
    visible[:n_tok, :n_keys] = (delta >= 0) & ((delta < window) if window else True)
    kq = kq.masked_fill(~visible, float("-inf"))
    m = torch.full((n_head, tq), float("-inf"))
    s = torch.zeros(n_head, tq)
    acc = torch.zeros(n_head, tq, dv)
    for ic in range(0, tk, TILE):
        tile = kq[:, :, ic : ic + TILE]
        live = tile.amax(-1) > float("-inf")  # rows with a visible key in this tile; the others are left as they are
        m_new = torch.where(live, torch.maximum(m, tile.amax(-1)), m)
        grow = live & (m_new > m)
        ms = torch.ones_like(m)
        finite = grow & (m > float("-inf"))
        ms[grow & ~finite] = 0.0  # expf(-inf)
        ms[finite] = libm_float("expf", (m - m_new)[finite])
        acc = acc * ms[..., None]
        s = s * ms
        m = m_new
        p = v_expf(tile - torch.where(live, m, 0.0)[..., None])
        p = torch.where(live[..., None], p, 0.0)
        total = _reduce16(p.reshape(n_head, tq, TILE // 16, 16)).double()
        for g in range(1, TILE // 16):
            total[..., 0] += total[..., g]
        s = torch.where(live, (s.double() + total[..., 0]).float(), s)
        for j in range(TILE):  # values, key by key
            acc = fma(p[:, :, j, None], vh[:, None, ic + j], acc)
    inv = torch.where(s == 0, 0.0, torch.div(torch.tensor(1.0), s))
    out = (acc * inv[..., None])[:, :n_tok]
    return out.transpose(0, 1).reshape(n_tok, n_head * dv)
