"""RoPE and attention as ggml-cpu computes them (x86, GCC -march=native builds), for the "ggml" kernel backend.

blocks.py's versions are llama.cpp's numerics up to float32 summation order; these follow the order itself, so that
with kamado/kernels/ggml_order.py a 256-row forward pass reproduces llama.cpp bit for bit (docs/NUMERICS.md,
2026-12-03; benchmarks/parity/faemu.c is the scalar specification they were checked against):

- RoPE: cos/sin of the float32 angles from the C library's cosf/sinf (glibc; through ctypes), and the rotation as
  GCC contracts ggml's rotate_pairs: a' = fma(a, cos, -(b*sin)), b' = fma(a, sin, b*cos).
- GELU: blocks.gelu_tanh (ggml's fp16 table) with ggml's 0 for x <= -10.
- SiLU (SwiGLU): ggml_vec_swiglu_f32's AVX-512 loop, x / (1 + ggml_v_expf(0 - x)) 16 lanes at a time, the row's
  tail with libm expf.
- Attention, as ggml_compute_forward_flash_attn_ext picks its kernel (`attention`):
  * >= 64 query rows: the tiled kernel (64 x 64 tiles): Q.K as a sequential fma chain over the head dimension with
    fp16 keys, online softmax per key tile with ggml_v_expf (AVX-512 form) and sums of 16 lanes in double, the
    running max rescaled with libm expf, values (fp16) accumulated by fma key by key.
  * fewer rows: the one-row kernel: Q rounded to fp16, Q.K by ggml_vec_dot_f16 (4 x 16 float lanes), keys one by
    one with libm expf, S = fma(S, ms, vs) (GCC contracts it), the V accumulator kept in fp16 (rounded after every
    key), then * 1/S.
  * one query row over a KV view of >= 512 cells: split-KV: the view cut into one chunk per thread, the one-row
    kernel on each, the partials merged in chunk order with fma-contracted rescaling.
  llama.cpp's view is the used cells padded to 256; a kamado sequence is taken to sit in cells 0.. in position order
  (one sequence in a fresh llama.cpp cache), so the view is its positions padded to 256.

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
from kamado.models.blocks import Rope, gelu_tanh
from kamado.models.blocks import attention as blocks_attention

TILE = 64  # ggml-cpu's flash-attention tiles (GGML_FA_TILE_Q, GGML_FA_TILE_KV)
SPLIT_KV_CELLS = 512  # a single query row over a view of at least this many cells takes the split-KV path
CELL_PAD = 256  # llama.cpp pads the KV view to a multiple of this (flash attention on)
LANES = 16  # float32 lanes of an AVX-512 vector


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


def silu(x: torch.Tensor) -> torch.Tensor:
    """ggml_vec_swiglu_f32's SiLU (the product with the up half is the caller's): 16-lane blocks of each row through
    ggml_v_silu, x / (1 + ggml_v_expf(0 - x)); the row's last n % 16 values through ggml_silu_f32 (libm expf)."""
    n = x.shape[-1]
    main = n - n % LANES
    one = torch.tensor(1.0)
    head = x[..., :main] / (one + v_expf(0.0 - x[..., :main]))
    tail = x[..., main:] / (one + libm_float("expf", -x[..., main:]))
    return torch.cat([head, tail], dim=-1)


ACTIVATIONS = {**BLOCK_ACTIVATIONS, "gelu": gelu, "silu": silu}

_E = [float.fromhex(h) for h in ("0x1.8p23", "0x1.715476p+0", "0x1.62e4p-1", "0x1.7f7d1cp-20", "0x1.0e4020p-7",
                                 "0x1.573e2ep-5", "0x1.555e66p-3", "0x1.fffdb6p-2", "0x1.ffffecp-1")]


def v_expf(x: torch.Tensor) -> torch.Tensor:
    """ggml_v_expf, AVX-512 form: 2^n * p(b) with n = round(x / ln 2) (one rounding, as _mm512_scalef_ps); 0 where
    n <= -192, inf where n > 192 (past float32's range anyway)."""
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


def attention_tiled(q, k, v, q_pos, k_pos, scale: float, window: int = 0) -> torch.Tensor:
    """`attention` through ggml-cpu's tiled kernel, whatever the row count (ggml takes it from 64 rows on)."""
    n_tok, n_head, n_kv = q.shape[0], q.shape[1], k.shape[1]
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
    return _divide(acc, s)[:, :n_tok].transpose(0, 1).reshape(n_tok, n_head * dv)


def _dot_f16(qh: torch.Tensor, kh: torch.Tensor) -> torch.Tensor:
    """ggml_vec_dot_f16 on AVX-512 without FP16 arithmetic, every query row with every key: qh (T, D), kh (S, D)
    (fp16 values as float32) -> (T, S). Four accumulators of 16 lanes over steps of 64, folded (0+2, 1+3, then 0+1)
    and reduced (_reduce16); leftover elements (D % 64) added in double, each product rounded to float32 first."""
    n_tok, dim = qh.shape
    main = dim - dim % (4 * LANES)
    acc = torch.zeros(n_tok, kh.shape[0], 4, LANES)
    for i in range(0, main, 4 * LANES):
        acc = fma(qh[:, None, i : i + 4 * LANES].reshape(n_tok, 1, 4, LANES), kh[None, :, i : i + 4 * LANES].reshape(1, -1, 4, LANES), acc)
    folded = (acc[:, :, 0] + acc[:, :, 2]) + (acc[:, :, 1] + acc[:, :, 3])
    total = _reduce16(folded).double()
    for i in range(main, dim):
        total += (qh[:, None, i] * kh[None, :, i]).double()
    return total.float()


def _one_row_partials(q, k, v, visible, scale):
    """ggml's one-row kernel over the keys of `visible` (T, S), in key order: q (T, H, D), k (S, Hkv, D),
    v (S, Hkv, Dv) -> the running max M (T, H), the sum S (T, H) and the V accumulator (T, H, Dv), not yet divided."""
    n_tok, n_head, _ = q.shape
    group = n_head // k.shape[1]
    qh, kh, vh = q.half().float(), k.half().float(), v.half().float()
    scores = torch.stack([_dot_f16(qh[:, h], kh[:, h // group]) for h in range(n_head)], dim=1)
    scores = (scores * torch.tensor(scale, dtype=torch.float32)).masked_fill(~visible[:, None], float("-inf"))
    # The running max after each key does not depend on the sums: take it for all keys at once, and with it every
    # key's factor (ms where the key raises the max, vs where it does not), one libm call for the whole row.
    m = scores.cummax(-1).values
    m_prev = torch.cat([torch.full((n_tok, n_head, 1), float("-inf")), m[..., :-1]], dim=-1)
    grow = scores > m_prev
    live = visible[:, None].expand_as(scores)
    factor = torch.zeros_like(scores)
    factor[live] = libm_float("expf", torch.where(grow, m_prev - scores, scores - m_prev)[live])
    ms, vs = torch.where(grow, factor, 1.0), torch.where(grow, 1.0, factor)
    acc = torch.zeros(n_tok, n_head, v.shape[2])
    total = torch.zeros(n_tok, n_head)
    values = vh.repeat_interleave(group, dim=1)  # (S, H, Dv)
    for j in range(k.shape[0]):  # key by key: the fp16 accumulator rounds after every step
        rows = visible[:, j]
        if not rows.any():
            continue
        scaled = torch.where(grow[:, :, j, None], (acc * ms[:, :, j, None]).half().float(), acc)
        new_acc = fma(values[j], vs[:, :, j, None], scaled).half().float()
        new_total = fma(total, ms[:, :, j], vs[:, :, j])
        acc = torch.where(rows[:, None, None], new_acc, acc)
        total = torch.where(rows[:, None], new_total, total)
    return m[..., -1], total, acc


def _divide(acc: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """acc * (1 / total), 0 where total is 0 (a row that saw no key), as both ggml kernels end."""
    inv = torch.where(total == 0, 0.0, torch.div(torch.tensor(1.0), total))
    return acc * inv[..., None]


def attention(q, k, v, q_pos, k_pos, scale: float, window: int = 0, softcap: float = 0.0) -> torch.Tensor:
    """blocks.attention's contract (q (T, H, D), k/v (S, Hkv, D*) in position order -> (T, H*Dv)) through the kernel
    ggml-cpu picks (module docstring); soft-capping (Gemma 2): blocks.attention."""
    n_tok, n_head = q.shape[:2]
    if softcap:
        return blocks_attention(q, k, v, q_pos, k_pos, scale, window, softcap)
    if n_tok >= TILE:
        return attention_tiled(q, k, v, q_pos, k_pos, scale, window)
    delta = q_pos[:, None] - k_pos[None, :]
    visible = (delta >= 0) & ((delta < window) if window else True)
    n_cells = -(-(int(q_pos.max()) + 1) // CELL_PAD) * CELL_PAD
    if n_tok > 1 or n_cells < SPLIT_KV_CELLS:
        _, total, acc = _one_row_partials(q, k, v, visible, scale)
        return _divide(acc, total).reshape(n_tok, -1)
    # split-KV: chunk c holds the cells (positions) c * size .. (c + 1) * size - 1; partials merged in chunk order
    threads = torch.get_num_threads()
    size = -(-n_cells // threads)
    m_f, s_f, acc_f = torch.full((1, n_head), float("-inf")), torch.zeros(1, n_head), torch.zeros(1, n_head, v.shape[2])
    for c in range(threads):
        keys = (k_pos >= c * size) & (k_pos < (c + 1) * size)
        if not visible[:, keys].any():
            continue
        m_c, s_c, acc_c = _one_row_partials(q, k[keys], v[keys], visible[:, keys], scale)
        m_new = torch.maximum(m_f, m_c)
        old, new = libm_float("expf", m_f - m_new), libm_float("expf", m_c - m_new)
        acc_f = fma(acc_f, old[..., None], acc_c * new[..., None])
        s_f = fma(s_f, old, s_c * new)
        m_f = m_new
    return _divide(acc_f, s_f).reshape(1, -1)
