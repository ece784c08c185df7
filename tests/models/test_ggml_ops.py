"""kamado/models/ggml_ops.py against scalar transcriptions of ggml-cpu's loops (benchmarks/parity/faemu.c)."""

import math

import numpy as np
import torch

from kamado.models.blocks import RopeSpec
from kamado.models.ggml_ops import GgmlRope, attention_tiled, libm_float, v_expf

F = np.float32


def fmaf(a, b, c):
    return F(np.float64(a) * np.float64(b) + np.float64(c))


def v_expf_scalar(x):
    if x == -math.inf:
        return F(0)
    c = [F(float.fromhex(h)) for h in ("0x1.8p23", "0x1.715476p+0", "0x1.62e4p-1", "0x1.7f7d1cp-20", "0x1.0e4020p-7",
                                        "0x1.573e2ep-5", "0x1.555e66p-3", "0x1.fffdb6p-2", "0x1.ffffecp-1")]
    z = fmaf(x, c[1], c[0])
    n = F(z - c[0])
    b = fmaf(-n, c[3], fmaf(-n, c[2], x))
    u = F(b * b)
    j = fmaf(fmaf(fmaf(c[4], b, c[5]), u, fmaf(c[6], b, c[7])), u, fmaf(c[8], b, F(1)))
    return F(0) if n <= -192 else F(math.ldexp(float(j), int(n)))


def reduce16(v):
    a = [F(v[i] + v[i + 8]) for i in range(8)]
    b = [F(a[i] + a[i + 4]) for i in range(4)]
    return F(F(b[0] + b[2]) + F(b[1] + b[3]))


def fa_tiled_scalar(q, k, v, scale):
    """One head, causal, positions 0..T-1: faemu.c's fa_tiled (64 x 64 tiles)."""
    nq, nk, dv = len(q), len(k), v.shape[1]
    out = np.zeros((nq, dv), F)
    for iq in range(0, nq, 64):
        rows = range(iq, min(nq, iq + 64))
        m = {t: F(-np.inf) for t in rows}
        s = {t: F(0) for t in rows}
        acc = {t: np.zeros(dv, F) for t in rows}
        for ic in range(0, nk, 64):
            keys = range(ic, min(nk, ic + 64))
            for t in rows:
                kq = []
                for j in range(ic, ic + 64):
                    if j in keys and j <= t:
                        a = F(0)
                        for d in range(q.shape[1]):
                            a = fmaf(q[t, d], k[j, d], a)
                        kq.append(F(a * F(scale)))
                    else:
                        kq.append(F(-np.inf))
                mx = max(kq)
                if mx == -np.inf:
                    continue
                m_new = max(m[t], mx)
                if m_new > m[t]:
                    ms = F(libm_float("expf", torch.tensor([m[t] - m_new])).item())
                    acc[t] = (acc[t] * ms).astype(F)
                    s[t] = F(s[t] * ms)
                m[t] = m_new
                p = [v_expf_scalar(F(x - m_new)) for x in kq]
                total = 0.0
                for g in range(0, 64, 16):
                    total += float(reduce16(p[g : g + 16]))
                s[t] = F(float(s[t]) + total)
                for d in range(dv):
                    a = acc[t][d]
                    for jj, j in enumerate(range(ic, ic + 64)):
                        a = fmaf(p[jj], v[j, d] if j < nk else F(0), a)
                    acc[t][d] = a
        for t in rows:
            out[t] = acc[t] * (F(1) / s[t])
    return out


def test_v_expf_matches_the_scalar_polynomial():
    x = torch.cat([-torch.rand(2000) * 140, torch.tensor([0.0, -1e-30, float("-inf")])])
    np.testing.assert_array_equal(v_expf(x).numpy(), np.array([v_expf_scalar(F(a)) for a in x.numpy()], F))


def test_tiled_attention_follows_ggml_cpus_tiled_kernel():
    """70 query rows: two query tiles (the second padded), two key tiles; grouped-query heads."""
    rng = np.random.default_rng(0)
    t, d = 70, 8
    q = torch.from_numpy(rng.standard_normal((t, 2, d)).astype(F))
    k = torch.from_numpy((rng.standard_normal((t, 1, d)) * 2).astype(F))
    v = torch.from_numpy(rng.standard_normal((t, 1, d)).astype(F))
    pos = torch.arange(t)
    got = attention_tiled(q, k, v, pos, pos, 0.35)
    kh, vh = k[:, 0].half().float().numpy(), v[:, 0].half().float().numpy()
    for h in range(2):
        np.testing.assert_array_equal(got[:, h * d : (h + 1) * d].numpy(), fa_tiled_scalar(q[:, h].numpy(), kh, vh, 0.35))


def test_rope_rotation_is_fma_contracted_as_gcc_compiles_rotate_pairs():
    rope = GgmlRope(RopeSpec(16, 10000.0, True))
    cos, sin = rope.cos_sin(torch.arange(5))
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((5, 2, 16)).astype(F))
    got = rope.rotate(x, *rope.tables(cos, sin, 16)).numpy()
    c, s, xn = cos.numpy(), sin.numpy(), x.numpy()
    for p in range(5):
        for h in range(2):
            for i in range(8):
                x0, x1 = xn[p, h, i], xn[p, h, i + 8]
                assert got[p, h, i] == fmaf(x0, c[p, i], -F(x1 * s[p, i]))
                assert got[p, h, i + 8] == fmaf(x0, s[p, i], F(x1 * c[p, i]))
