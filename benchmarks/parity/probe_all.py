"""All 18 layers of Gemma 3 270M as llama-imatrix ran them (8 chunks x 256, ubatches of 64 per chunk), with the
emulated ggml-cpu arithmetic; compares every blk.* matmul input against the reference imatrix.
usage: python3 probe_all.py [n_layers]"""
import sys
import time

import layer0 as L
import numpy as np
from emu import fa_tiled, gelu_table, matmul_k, matmul_legacy, rms_norm_rows, rope_neox, rope_thetas, sincos

N_LAYERS = int(sys.argv[1]) if len(sys.argv) > 1 else 18
T, H, D = 256, 4, 256
GELU = gelu_table(1)


def raw(name):
    t = L.tensor(name)
    return t, np.asarray(t.raw.numpy()).reshape(t.shape[0], -1)


def linear(name, x):
    t, r = raw(name)
    q = int(t.qtype)
    if q in (2, 6, 8):
        return matmul_legacy(x, r, q)
    if q == 12:
        return matmul_k(x, r, 12, 3)  # Q4_K: CPU_REPACK q4_K_8x8 GEMM
    if q == 14:
        return matmul_k(x, r, 14, 0)  # Q6_K: ggml_vec_dot_q6_K_q8_K (AVX2 lanes, unsigned quants)
    raise ValueError(t.qtype)


def attention(il, q, k, v):
    p = f"blk.{il}."
    q = rms_norm_rows(q.reshape(8, T, H, D), L.vec(p + "attn_q_norm.weight"), L.EPS)
    k = rms_norm_rows(k.reshape(8, T, 1, D), L.vec(p + "attn_k_norm.weight"), L.EPS)
    v = v.reshape(8, T, 1, D)
    base = 1e6 if il % 6 == 5 else 10000.0
    theta, _ = rope_thetas(T, D, base)
    cs = sincos(theta)
    out = np.zeros((8, T, H * D), np.float32)
    for c in range(8):
        qr = rope_neox(q[c], cs, 1) * np.float32(0.0625)
        kr = L.f16(rope_neox(k[c], cs, 1))
        vr = L.f16(v[c])
        for hh in range(H):
            out[c, :, hh * D:(hh + 1) * D] = fa_tiled(qr[:, hh], kr[:, 0], vr[:, 0], 1.0, 0)
    return out.reshape(8 * T, H * D)


def report(name, x):
    e, g, _ = L.gap(name, x)
    n = len(L.ref(name))
    print(f"  {name:28s} exact {e:5d}/{n:<5d} median {g:.3g}", flush=True)
    return e, n, g


def main():
    x = L.load("x0").reshape(8 * T, 640)
    rows = []
    for il in range(N_LAYERS):
        t0 = time.time()
        p = f"blk.{il}."
        h = rms_norm_rows(x, L.vec(p + "attn_norm.weight"), L.EPS)
        r_in = report(p + "attn_q.weight", h)
        q, k, v = (linear(p + f"attn_{n}.weight", h) for n in "qkv")
        a = attention(il, q, k, v)
        r_att = report(p + "attn_output.weight", a)
        o = linear(p + "attn_output.weight", a)
        sa = rms_norm_rows(o, L.vec(p + "post_attention_norm.weight"), L.EPS) + x
        h2 = rms_norm_rows(sa, L.vec(p + "ffn_norm.weight"), L.EPS)
        r_ffn = report(p + "ffn_gate.weight", h2)
        g = linear(p + "ffn_gate.weight", h2)
        u = linear(p + "ffn_up.weight", h2)
        gl = GELU[g.astype(np.float16).view(np.uint16).astype(np.int64)]
        act = np.where(g <= -10, np.float32(0), np.where(g >= 10, g * u, gl * u)).astype(np.float32)
        r_down = report(p + "ffn_down.weight", act)
        f = linear(p + "ffn_down.weight", act)
        x = rms_norm_rows(f, L.vec(p + "post_ffw_norm.weight"), L.EPS) + sa
        rows.append((il, r_in, r_att, r_ffn, r_down))
        print(f"layer {il} done in {time.time() - t0:.1f}s", flush=True)
    print("\n| layer | attn_q in | attn_output in | ffn_gate in | ffn_down in |")
    print("|---|---|---|---|---|")
    for il, *rs in rows:
        print(f"| {il} | " + " | ".join(f"{e}/{n} ({g:.2g})" for e, n, g in rs) + " |")


if __name__ == "__main__":
    main()
