"""ctypes wrappers around faemu.so, and float helpers."""
import ctypes
import os

import numpy as np

_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "faemu.so"))
_f = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_i = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
_lib.fa_tiled.argtypes = [_f, _f, _f, _i, _i, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float, _f, ctypes.c_int]
_lib.rope_neox.argtypes = [_f, _f, _f, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
_lib.sincos_table.argtypes = [_f, _f, ctypes.c_int]
_lib.v_expf_array.argtypes = [_f, _f, ctypes.c_int, ctypes.c_int]
libm = ctypes.CDLL("libm.so.6")
libm.powf.restype = ctypes.c_float
libm.powf.argtypes = [ctypes.c_float, ctypes.c_float]


def c32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _one_head(kernel, q, k, v, scale, opts):
    """q (T, DK), k (S, DK), v (S, DV) of one head -> (T, DV) through a faemu.c kernel; the T rows are the last T of the
    S key positions."""
    T, S = q.shape[0], k.shape[0]
    out = np.zeros((T, v.shape[1]), np.float32)
    qpos = np.arange(S - T, S, dtype=np.int32)
    kpos = np.arange(S, dtype=np.int32)
    kernel(c32(q), c32(k), c32(v), qpos, kpos, T, S, q.shape[1], v.shape[1], scale, out, opts)
    return out


def fa_tiled(q, k, v, scale=1.0, opts=0):
    """ggml-cpu's tiled flash attention (>= 64 query rows) of one head (_one_head's shapes)."""
    return _one_head(_lib.fa_tiled, q, k, v, scale, opts)


def rope_neox(x, cs, mode):
    """x (T, H, D); cs (T, D/2, 2) cos/sin."""
    x = c32(x)
    y = np.empty_like(x)
    _lib.rope_neox(x, y, c32(cs), x.shape[0], x.shape[1], x.shape[2], mode)
    return y


def sincos(theta):
    theta = c32(theta)
    cs = np.empty(theta.shape + (2,), np.float32)
    _lib.sincos_table(theta.reshape(-1), cs.reshape(-1), theta.size)
    return cs


def v_expf(x, variant=0):
    x = c32(x)
    y = np.empty_like(x)
    _lib.v_expf_array(x.reshape(-1), y.reshape(-1), x.size, variant)
    return y


_lib.swiglu.argtypes = [_f, _f, _f, ctypes.c_int]


def swiglu(x, g):
    """ggml_vec_swiglu_f32 (AVX-512): silu through ggml_v_expf, then times g."""
    x, g = c32(x), c32(g)
    y = np.empty_like(x)
    _lib.swiglu(x.reshape(-1), g.reshape(-1), y.reshape(-1), x.size)
    return y


def rope_thetas(n_pos, n_dims, base):
    """ggml_rope_cache_init: theta = p, then theta *= theta_scale per pair, float32; theta_scale = powf(base, -2/n_dims)."""
    ts = np.float32(libm.powf(base, -2.0 / n_dims))
    out = np.empty((n_pos, n_dims // 2), np.float32)
    theta = np.arange(n_pos, dtype=np.float32)
    for i in range(n_dims // 2):
        out[:, i] = theta
        theta = (theta * ts).astype(np.float32)
    return out, ts


def rms_norm_rows(x, w, eps):
    """ggml_rms_norm + mul: squares in float, summed in double (row order), mean float, 1/sqrtf(mean+eps), x*scale, *w."""
    x = c32(x)
    sq = (x * x).astype(np.float64)
    s = np.zeros(x.shape[:-1], np.float64)
    for i in range(x.shape[-1]):  # sequential double sum (ggml's scalar loop)
        s = s + sq[..., i]
    mean = (s / x.shape[-1]).astype(np.float32)
    scale = (np.float32(1.0) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
    y = (x * scale[..., None]).astype(np.float32)
    return (y * c32(w)).astype(np.float32)
_lib.attn_nofa.argtypes = [_f, _f, _f, _i, _i, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ctypes.c_float, _f, ctypes.c_int]


def attn_nofa(q, k, v, nkv=256, scale=1.0, opts=0):
    T, S = q.shape[0], k.shape[0]
    out = np.zeros((T, v.shape[1]), np.float32)
    qpos = np.arange(S - T, S, dtype=np.int32)
    kpos = np.arange(S, dtype=np.int32)
    _lib.attn_nofa(c32(q), c32(k), c32(v), qpos, kpos, T, S, nkv, q.shape[1], v.shape[1], scale, out, opts)
    return out
_lib.fa_onechunk.argtypes = [_f, _f, _f, _i, _i, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_float, _f,
                             ctypes.c_int]


def fa_onechunk(q, k, v, scale=1.0, opts=0):
    """ggml-cpu's one-row flash-attention kernel (fewer than 64 query rows) of one head (_one_head's shapes)."""
    return _one_head(_lib.fa_onechunk, q, k, v, scale, opts)
_lib.fa_splitkv.argtypes = [_f, _i, _f, _f, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                            ctypes.c_int, ctypes.c_float, _f, ctypes.c_int]


def fa_splitkv(q, k, v, n_kv, nth=2, scale=1.0, opts=0):
    """One decode row q (DK,) over k (S, DK), v (S, DV) (positions 0..S-1, the row at S-1) as ggml's split-KV path
    runs it for a KV view of n_kv cells on nth threads."""
    out = np.zeros(v.shape[1], np.float32)
    kpos = np.arange(k.shape[0], dtype=np.int32)
    _lib.fa_splitkv(c32(q), kpos, c32(k), c32(v), k.shape[0] - 1, k.shape[0], n_kv, nth, q.shape[0], v.shape[1],
                    scale, out, opts)
    return out


_k = ctypes.CDLL(os.path.join(os.path.dirname(__file__), "kquants.so"))
_u8 = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
_u16 = np.ctypeslib.ndpointer(np.uint16, flags="C_CONTIGUOUS")
_k.matmul_k.argtypes = [_f, _u8, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, _f, ctypes.c_int]
_k.gelu_table.argtypes = [_u16, ctypes.c_int]


def matmul_k(x, raw, qtype, variant=0):
    """x (M, K) float32; raw uint8 (N, row_bytes) of a Q4_K (12) / Q6_K (14) weight -> (M, N), ggml's AVX2 vec_dot order."""
    x = c32(x)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    y = np.empty((x.shape[0], raw.shape[0]), np.float32)
    _k.matmul_k(x, raw, x.shape[0], raw.shape[0], x.shape[1], int(qtype), y, variant)
    return y


def gelu_table(mode=0):
    t = np.empty(65536, np.uint16)
    _k.gelu_table(t, mode)
    return t.view(np.float16).astype(np.float32)


def fmaf(a, b, c):
    """float32 fused multiply-add via float64 (a*b exact in float64; one double rounding, wrong only within 2^-29 of a tie)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def rms_scale(x, eps):
    x = c32(x)
    sq = (x * x).astype(np.float64)
    s = np.zeros(x.shape[:-1], np.float64)
    for i in range(x.shape[-1]):
        s = s + sq[..., i]
    mean = (s / x.shape[-1]).astype(np.float32)
    return (np.float32(1.0) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
_k.matmul_legacy.argtypes = [_f, _u8, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, _f]


def matmul_legacy(x, raw, qtype):
    """x (M, K); raw uint8 (N, row_bytes) Q4_0/Q5_0/Q8_0 (2/6/8) -> (M, N) in ggml's 8-lane order."""
    x = c32(x)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    y = np.empty((x.shape[0], raw.shape[0]), np.float32)
    _k.matmul_legacy(x, raw, x.shape[0], raw.shape[0], x.shape[1], int(qtype), y)
    return y
