"""Op-by-op check of the harness against tensors dumped from llama.cpp (llamacpp_dump.py), Qwen2 graph
(Qwen2.5-Coder-0.5B-Instruct Q4_K_M): q/k/v products with biases, NEOX RoPE, GQA attention (one-row, tiled, split-KV), SwiGLU.
usage: python3 compare_qwen.py MODEL.gguf DUMP.npz   (the dump's batches in order: prompt batches, then decode steps;
a batch dumped with only its K/V (llamacpp_dump.py --kv-only) just fills the KV cache)"""
import sys

import numpy as np
from compare_dump import check, linear, rows
from emu import fa_onechunk, fa_splitkv, fa_tiled, rms_norm_rows, rope_neox, rope_thetas, sincos, swiglu

from kamado.gguf import GGUFReader
from kamado.kernels import QuantTensor


def f16(a):
    return a.astype(np.float16).astype(np.float32)


def main():
    R = GGUFReader(sys.argv[1])
    d = np.load(sys.argv[2])
    meta = R.metadata
    n_layers, H, HKV = (int(meta[f"qwen2.{k}"]) for k in ("block_count", "attention.head_count", "attention.head_count_kv"))
    D = int(meta["qwen2.embedding_length"]) // H
    base, eps = float(meta["qwen2.rope.freq_base"]), np.float32(meta["qwen2.attention.layer_norm_rms_epsilon"])

    def tensor(name):
        return QuantTensor.from_info(R.tensors[name])

    def vec(name):
        return np.asarray(R.tensors[name].raw).view(np.float32).reshape(-1)

    batches = sorted({k.split("/")[0] for k in d.keys()}, key=lambda b: int(b[1:]))
    cache = {il: ([], []) for il in range(n_layers)}
    pos0, n_ok, n_all = 0, 0, 0
    for b in batches:
        keys = [k for k in d.keys() if k.startswith(b + "/")]

        def g(name, b=b):
            return rows(d, b, name)

        def after(name, keys=keys):
            """The (unnamed) tensor the graph computes right after `name`."""
            return d[keys[keys.index(name) + 1]]

        if f"{b}/embd" not in d:
            for il in range(n_layers):
                cache[il][0].append(f16(g(f"Kcur-{il}").reshape(-1, HKV, D)))
                cache[il][1].append(f16(g(f"Vcur-{il}").reshape(-1, HKV, D)))
            pos0 += len(cache[0][0][-1])
            print(f"{b}: K/V only, positions ..{pos0 - 1}")
            continue
        T = g("embd").shape[0]
        print(f"{b}: {T} rows, positions {pos0}..{pos0 + T - 1}")
        results = []
        for il in range(n_layers):
            p = f"blk.{il}."
            print(f"  layer {il}")
            x = g("embd") if il == 0 else g(f"l_out-{il - 1}")
            results.append(check("attn_norm", rms_norm_rows(x, vec(p + "attn_norm.weight"), eps), g(f"attn_norm-{il}")))
            h = g(f"attn_norm-{il}")
            for n in "qkv":
                nm = f"{n.upper()}cur-{il}"
                y, how = linear(tensor(p + f"attn_{n}.weight"), h)
                results.append(check(f"{nm} ({how})", y, g(nm + "#0")))
                results.append(check(f"{nm} + bias", g(nm + "#0") + vec(p + f"attn_{n}.bias"), g(nm + "#1")))
            theta, _ = rope_thetas(pos0 + T, D, base)
            cs = sincos(theta)
            qr = rope_neox(g(f"Qcur-{il}#1").reshape(T, H, D), cs[pos0:], 1)
            kr = rope_neox(g(f"Kcur-{il}#1").reshape(T, HKV, D), cs[pos0:], 1)
            results.append(check("Qcur rope", qr, g(f"Qcur-{il}")))
            results.append(check("Kcur rope", kr, g(f"Kcur-{il}")))
            cache[il][0].append(f16(g(f"Kcur-{il}").reshape(T, HKV, D)))
            cache[il][1].append(f16(g(f"Vcur-{il}").reshape(T, HKV, D)))
            K, V = np.concatenate(cache[il][0]), np.concatenate(cache[il][1])
            q, scale = g(f"Qcur-{il}").reshape(T, H, D), np.float32(1 / np.sqrt(D))
            n_kv = max(256, -(-(pos0 + T) // 256) * 256)  # the KV view: used cells padded to 256
            if T == 1 and n_kv >= 512:  # split-KV over the 2 threads; the reduce's a*b + c*d contracted as fmaf(a, b, c*d)
                name = "fa_splitkv"
                att = np.concatenate([fa_splitkv(q[0, hh], K[:, hh // (H // HKV)], V[:, hh // (H // HKV)], n_kv, 2, scale,
                                                 1 | 4) for hh in range(H)])
            else:  # >= 64 query rows: tiled kernel; fewer: the one-row kernel (S = S*ms + vs contracted)
                fa, opts = (fa_tiled, 0) if T >= 64 else (fa_onechunk, 1)
                name = fa.__name__
                att = np.concatenate([fa(q[:, hh], K[:, hh // (H // HKV)], V[:, hh // (H // HKV)], scale, opts)
                                      for hh in range(H)], axis=1)
            results.append(check(f"kqv_out ({name}, GQA)", att, g(f"kqv_out-{il}")))
            o, how = linear(tensor(p + "attn_output.weight"), g(f"kqv_out-{il}"))
            results.append(check(f"attn_output ({how})", o, after(f"{b}/kqv_out-{il}")))
            n_out = g(f"ffn_inp-{il}").shape[0]  # last layer: only the output row is kept after attention
            o, x = o[-n_out:], x[-n_out:]
            results.append(check("ffn_inp (residual)", o + x, g(f"ffn_inp-{il}")))
            h2 = g(f"ffn_norm-{il}")
            results.append(check("ffn_norm", rms_norm_rows(g(f"ffn_inp-{il}"), vec(p + "ffn_norm.weight"), eps), h2))
            for n in ("gate", "up"):
                y, how = linear(tensor(p + f"ffn_{n}.weight"), h2)
                results.append(check(f"ffn_{n} ({how})", y, g(f"ffn_{n}-{il}")))
            results.append(check("ffn_swiglu", swiglu(g(f"ffn_gate-{il}"), g(f"ffn_up-{il}")), g(f"ffn_swiglu-{il}")))
            y, how = linear(tensor(p + "ffn_down.weight"), g(f"ffn_swiglu-{il}"))
            results.append(check(f"ffn_out ({how})", y, g(f"ffn_out-{il}")))
            results.append(check("l_out (residual)", g(f"ffn_out-{il}") + g(f"ffn_inp-{il}"), g(f"l_out-{il}")))
        out_norm = rms_norm_rows(g(f"l_out-{n_layers - 1}"), vec("output_norm.weight"), eps)
        results.append(check("result_norm", out_norm, g("result_norm")))
        logits, how = linear(tensor("output.weight"), g("result_norm"))  # untied output head
        results.append(check(f"result_output ({how})", logits, g("result_output")))
        n_ok, n_all = n_ok + sum(results), n_all + len(results)
        pos0 += T
    print(f"{n_ok} of {n_all} op checks exact")


if __name__ == "__main__":
    main()
