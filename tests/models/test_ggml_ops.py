"""kamado/models/ggml_ops.py against scalar transcriptions of ggml-cpu's loops (benchmarks/parity/faemu.c)."""

import math

import numpy as np
import torch

from kamado.models.blocks import RopeSpec
from kamado.models.ggml_ops import GgmlRope, attention, attention_tiled, libm_float, silu, v_expf

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


def expf(x):
    return F(libm_float("expf", torch.tensor([x], dtype=torch.float32)).item())


def dot_f16(x, y):
    """ggml_vec_dot_f16, AVX-512 without FP16: 4 x 16 lanes over steps of 64, folded, reduced; D % 64 == 0 here."""
    acc = np.zeros((4, 16), F)
    for i in range(0, len(x), 64):
        for j in range(4):
            for lane in range(16):
                acc[j, lane] = fmaf(x[i + 16 * j + lane], y[i + 16 * j + lane], acc[j, lane])
    folded = [F(F(acc[0, i] + acc[2, i]) + F(acc[1, i] + acc[3, i])) for i in range(16)]
    return reduce16(folded)


def one_row_scalar(qh, k, v, keys, scale):
    """faemu.c's onechunk_row (contracted S): the one-row kernel over the key indices `keys`, in order -> M, S, acc."""
    m, s, acc = F(-np.inf), F(0), np.zeros(v.shape[1], F)
    for j in keys:
        score = F(dot_f16(k[j], qh) * F(scale))
        ms = vs = F(1)
        if score > m:
            ms = expf(F(m - score)) if m > -np.inf else F(0)
            m = score
            acc = (acc * ms).astype(np.float16).astype(F)
        else:
            vs = expf(F(score - m))
        acc = np.array([fmaf(v[j, d], vs, acc[d]) for d in range(len(acc))], F).astype(np.float16).astype(F)
        s = fmaf(s, ms, vs)
    return m, s, acc


def test_one_row_attention_follows_ggml_cpus_one_row_kernel():
    """5 query rows (below the tiled kernel's 64), grouped-query heads, a sliding window of 4."""
    rng = np.random.default_rng(2)
    t, n, d = 5, 9, 64
    q = torch.from_numpy((rng.standard_normal((t, 2, d)) * 2).astype(F))
    k = torch.from_numpy(rng.standard_normal((n, 1, d)).astype(F))
    v = torch.from_numpy(rng.standard_normal((n, 1, d)).astype(F))
    q_pos, k_pos = torch.arange(n - t, n), torch.arange(n)
    got = attention(q, k, v, q_pos, k_pos, 0.125, window=4).numpy()
    kh, vh = k[:, 0].half().float().numpy(), v[:, 0].half().float().numpy()
    for row, pos in enumerate(q_pos.tolist()):
        for h in range(2):
            _, s, acc = one_row_scalar(q[row, h].half().float().numpy(), kh, vh, range(pos - 3, pos + 1), 0.125)
            np.testing.assert_array_equal(got[row, h * d : (h + 1) * d], acc * (F(1) / s))


def test_split_kv_attention_merges_per_thread_chunks_as_ggml_cpu():
    """One query row at position 300: a 512-cell view, one chunk per thread, partials merged with fmaf."""
    rng = np.random.default_rng(3)
    n, d = 301, 64
    q = torch.from_numpy((rng.standard_normal((1, 1, d)) * 0.5).astype(F))
    k = torch.from_numpy(rng.standard_normal((n, 1, d)).astype(F))
    v = torch.from_numpy(rng.standard_normal((n, 1, d)).astype(F))
    k[280] = q[0] * 1.5  # the best key in the second chunk: its merge rescales the first chunk's sums (the fma shows)
    got = attention(q, k, v, torch.tensor([n - 1]), torch.arange(n), 0.125).numpy()[0]
    kh, vh, qh = k[:, 0].half().float().numpy(), v[:, 0].half().float().numpy(), q[0, 0].half().float().numpy()
    threads = torch.get_num_threads()
    size = -(-512 // threads)
    m_f, s_f, acc_f = F(-np.inf), F(0), np.zeros(d, F)
    for c in range(threads):
        keys = range(c * size, min(n, (c + 1) * size))
        if not keys:
            continue
        m, s, acc = one_row_scalar(qh, kh, vh, keys, 0.125)
        m_new = max(m_f, m)
        old, new = (expf(F(m_f - m_new)) if m_f > -np.inf else F(0)), expf(F(m - m_new))
        acc_f = np.array([fmaf(acc_f[i], old, F(acc[i] * new)) for i in range(d)], F)
        s_f, m_f = fmaf(s_f, old, F(s * new)), m_new
    np.testing.assert_array_equal(got, acc_f * (F(1) / s_f))
    plain = attention(q, k, v, torch.tensor([200]), torch.arange(n), 0.125)  # a 256-cell view: the one-row kernel
    _, s, acc = one_row_scalar(qh, kh, vh, range(201), 0.125)
    np.testing.assert_array_equal(plain.numpy()[0], acc * (F(1) / s))


def test_silu_takes_v_expf_on_16_lane_blocks_and_libm_expf_on_the_tail():
    x = torch.from_numpy((np.random.default_rng(4).standard_normal((2, 36)) * 6).astype(F))
    want = [[F(a / F(1 + (v_expf_scalar(F(0 - a)) if i < 32 else expf(F(-a))))) for i, a in enumerate(row)] for row in x.numpy()]
    np.testing.assert_array_equal(silu(x).numpy(), np.array(want, F))
