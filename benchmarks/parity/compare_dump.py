"""Op-by-op check of the harness against tensors dumped from llama.cpp (llamacpp_dump.py), Gemma 3 270M.
Each op is fed llama.cpp's own dumped input, so every line says whether that one op is bit-exact.
usage: python3 compare_dump.py DUMP.npz N_LAYERS   (the dump's batches in order: prompt batches, then decode steps)"""
import sys

import numpy as np
from emu import fa_onechunk, fa_splitkv, fa_tiled, gelu_table, matmul_k, matmul_legacy, rms_norm_rows, rope_neox, rope_thetas, sincos

H, D = 4, 256
GELU = gelu_table(1)


def linear(t, x):
    """x (M, K) times the QuantTensor t's rows, in the order of the kernel llama.cpp runs for this type and M."""
    r = np.asarray(t.raw.numpy()).reshape(t.shape[0], -1)
    q = int(t.qtype)
    if q in (2, 6, 8):
        return matmul_legacy(x, r, q), "lanes"
    if q == 12:  # CPU_REPACK q4_K_8x8: GEMM on whole groups of 4 rows, GEMV (one fma per super-block) for the rest
        m4 = x.shape[0] // 4 * 4
        y = np.concatenate([matmul_k(x[:m4], r, 12, 3), matmul_k(x[m4:], r, 12, 1)])
        return y, f"q4K gemm {m4} + gemv {x.shape[0] - m4}"
    return matmul_k(x, r, 14, 0), "q6K avx2"


def check(label, mine, theirs):
    mine, theirs = np.asarray(mine, np.float32).reshape(-1), np.asarray(theirs, np.float32).reshape(-1)
    ex = int((mine == theirs).sum())
    rel = np.max(np.abs(mine.astype(np.float64) - theirs) / (np.abs(theirs) + 1e-30))
    print(f"    {label:34s} exact {ex:6d}/{mine.size:<6d} max rel {rel:.2e}")
    return ex == mine.size


def rows(d, batch, name):
    """A dumped tensor of one batch as (rows, last dim)."""
    t = d[f"{batch}/{name}"]
    return t.reshape(-1, t.shape[-1])


def main():
    import layer0 as L  # loads Gemma 3 270M; compare_qwen.py imports the helpers above without it
    d = np.load(sys.argv[1])
    n_layers = int(sys.argv[2])
    batches = sorted({k.split("/")[0] for k in d.keys()}, key=lambda b: int(b[1:]))
    cache = {il: ([], []) for il in range(n_layers)}
    pos0 = 0
    for b in batches:
        def g(name, b=b):
            return rows(d, b, name)
        if f"{b}/inp_scaled" not in d:  # dumped with --kv-only: the roped K and V just fill the cache
            for il in range(n_layers):
                cache[il][0].append(L.f16(g(f"Kcur-{il}").reshape(-1, D)))
                cache[il][1].append(L.f16(g(f"Vcur-{il}").reshape(-1, D)))
            pos0 += len(cache[0][0][-1])
            print(f"{b}: K/V only, positions ..{pos0 - 1}")
            continue
        T = g("inp_scaled").shape[0]
        print(f"{b}: {T} rows, positions {pos0}..{pos0 + T - 1}")
        for il in range(n_layers):
            p = f"blk.{il}."
            print(f"  layer {il}")
            x = g("inp_scaled") if il == 0 else g(f"l_out-{il - 1}")
            check("attn_norm", rms_norm_rows(x, L.vec(p + "attn_norm.weight"), L.EPS), g(f"attn_norm-{il}"))
            h = g(f"attn_norm-{il}")
            # Qcur/Kcur are not materialised (ggml-cpu fuses the matmul's consumer), so Q and K are checked
            # through their RMS norm
            (q, how), (k, _), (v, _) = (linear(L.tensor(p + f"attn_{n}.weight"), h) for n in "qkv")
            check(f"Vcur ({how})", v, g(f"Vcur-{il}"))
            qn = rms_norm_rows(q.reshape(T, H, D), L.vec(p + "attn_q_norm.weight"), L.EPS)
            check("Qcur_normed (our Q product)", qn, g(f"Qcur_normed-{il}"))
            kn = rms_norm_rows(k.reshape(T, 1, D), L.vec(p + "attn_k_norm.weight"), L.EPS)
            check("Kcur_normed (our K product)", kn, g(f"Kcur_normed-{il}"))
            base = 1e6 if il % 6 == 5 else 10000.0
            theta, _ = rope_thetas(pos0 + T, D, base)
            cs = sincos(theta)
            qr = rope_neox(g(f"Qcur_normed-{il}").reshape(T, H, D), cs[pos0:], 1) * np.float32(0.0625)
            kr = L.f16(rope_neox(g(f"Kcur_normed-{il}").reshape(T, 1, D), cs[pos0:], 1))
            cache[il][0].append(kr[:, 0])
            cache[il][1].append(L.f16(g(f"Vcur-{il}").reshape(T, D)))
            K, V = np.concatenate(cache[il][0]), np.concatenate(cache[il][1])
            if T == 1 and max(256, -(-(pos0 + T) // 256) * 256) >= 512:  # split-KV (compare_qwen.py), < 512 positions
                att = np.concatenate([fa_splitkv(qr[0, hh], K, V, -(-(pos0 + T) // 256) * 256, 2, 1.0, 1 | 4)
                                      for hh in range(H)])
                name = "fa_splitkv"
            else:  # >= 64 query rows: tiled kernel; fewer: the one-row kernel, whose S = S*ms + vs GCC contracts to an fma
                fa, opts = (fa_tiled, 0) if T >= 64 else (fa_onechunk, 1)
                att = np.concatenate([fa(qr[:, hh], K, V, 1.0, opts) for hh in range(H)], axis=1)
                name = fa.__name__
            check(f"kqv_out ({name})", att, g(f"kqv_out-{il}"))
            o, how = linear(L.tensor(p + "attn_output.weight"), g(f"kqv_out-{il}"))
            n_out = g(f"attn_post_norm-{il}").shape[0]  # last layer: only the output row is kept after attention
            o, x = o[-n_out:], x[-n_out:]
            check(f"attn_post_norm (attn_output {how})", rms_norm_rows(o, L.vec(p + "post_attention_norm.weight"), L.EPS),
                  g(f"attn_post_norm-{il}"))
            check("sa_out", g(f"attn_post_norm-{il}") + x, g(f"sa_out-{il}"))
            h2 = g(f"ffn_norm-{il}")
            check("ffn_norm", rms_norm_rows(g(f"sa_out-{il}"), L.vec(p + "ffn_norm.weight"), L.EPS), h2)
            for n in ("gate", "up"):
                y, how = linear(L.tensor(p + f"ffn_{n}.weight"), h2)
                check(f"ffn_{n} ({how})", y, g(f"ffn_{n}-{il}"))
            gt, u = g(f"ffn_gate-{il}"), g(f"ffn_up-{il}")
            gl = GELU[gt.astype(np.float16).view(np.uint16).astype(np.int64)]
            act = np.where(gt <= -10, np.float32(0), np.where(gt >= 10, gt * u, gl * u)).astype(np.float32)
            check("ffn_geglu", act, g(f"ffn_geglu-{il}"))
            y, how = linear(L.tensor(p + "ffn_down.weight"), g(f"ffn_geglu-{il}"))
            check(f"ffn_out ({how})", y, g(f"ffn_out-{il}"))
            check("ffn_post_norm", rms_norm_rows(g(f"ffn_out-{il}"), L.vec(p + "post_ffw_norm.weight"), L.EPS),
                  g(f"ffn_post_norm-{il}"))
        out_norm = rms_norm_rows(g(f"l_out-{n_layers - 1}"), L.vec("output_norm.weight"), L.EPS)
        if n_layers == 18 and check("result_norm", out_norm, g("result_norm")):
            logits, how = linear(L.tensor("token_embd.weight"), g("result_norm"))  # tied output head, Q8_0
            check(f"result_output ({how})", logits, g("result_output"))
        pos0 += T


if __name__ == "__main__":
    main()
