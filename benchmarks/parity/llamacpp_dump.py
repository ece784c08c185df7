"""Dump every float32 tensor that a local llama.cpp build computes for one token sequence (research tool).

Needs a llama.cpp build with shared libraries (docs/NUMERICS.md, session 4: which flags reproduce the references)
and the ctypes bindings of the llama-cpp-python sdist it came from (its `llama_cpp/` folder, with an empty
`__init__.py` so that the high-level module and its dependencies are not imported).

    GGML_CPU_TILED_MM=0 LLAMA_CPP_LIB_PATH=$BUILD/bin LD_LIBRARY_PATH=$BUILD/bin LLAMACPP_PY=$PYLIB \\
        python3 llamacpp_dump.py MODEL OUT.npz 2,818,5279 --batches 2,1 [--decode 3]

Tokens are evaluated as consecutive batches of the given sizes (llama-server evaluates a Gemma 3 prompt as
(n - 4) + 4 tokens), then --decode greedy steps of one token. Tensor k of batch b is saved as "b{b}/{name}"
(names repeat across layers with the layer suffix llama.cpp gives them, e.g. "attn_norm-0"; a name given again
within a batch keeps its last tensor, the earlier ones become "name#0", "name#1", ...)."""
import argparse
import ctypes
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.environ["LLAMACPP_PY"])
import llama_cpp.llama_cpp as L  # noqa: E402


class GgmlTensor(ctypes.Structure):  # ggml.h `struct ggml_tensor` (GGML_MAX_DIMS 4, MAX_SRC 10, MAX_NAME 64)
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("tokens", help="comma-separated token ids")
    ap.add_argument("--batches", default="", help="comma-separated batch sizes (default: one batch)")
    ap.add_argument("--decode", type=int, default=0)
    ap.add_argument("--kv-only", type=int, default=0, help="save only K and V (Kcur-*, Vcur-*) of the first N "
                    "batches (a long prompt whose later batches or decode steps are checked)")
    a = ap.parse_args()
    toks = [int(t) for t in a.tokens.split(",")]
    sizes = [int(s) for s in a.batches.split(",")] if a.batches else [len(toks)]
    if sum(sizes) != len(toks):
        sys.exit(f"--batches {a.batches} does not add up to the {len(toks)} tokens")

    dumped, batch_no = {}, [0]
    kv = re.compile(r"^[KV]cur-")

    def observe(t_ptr, ask, _ud):
        t = GgmlTensor.from_address(t_ptr)
        if ask:
            return True
        if t.type != 0:  # GGML_TYPE_F32 only
            return True
        if batch_no[0] < a.kv_only and not kv.search(t.name.decode()):
            return True
        ne = [t.ne[i] for i in range(4)]
        contiguous = t.nb[0] == 4 and all(t.nb[i] == t.nb[i - 1] * ne[i - 1] for i in range(1, 4))
        if contiguous and t.data:
            n = ne[0] * ne[1] * ne[2] * ne[3]
            arr = np.ctypeslib.as_array((ctypes.c_float * n).from_address(t.data)).copy()
            key = f"b{batch_no[0]}/{t.name.decode()}"
            if key in dumped:  # a name given twice (Qwen's "Qcur" after the product, the bias, RoPE): keep each
                dumped[f"{key}#{sum(k.startswith(key + '#') for k in dumped)}"] = dumped[key]
            dumped[key] = arr.reshape(ne[::-1])
        return True

    quiet = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(lambda *_: None)
    L.llama_log_set(quiet, None)
    L.llama_backend_init()
    model = L.llama_model_load_from_file(a.model.encode(), L.llama_model_default_params())
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 4096, 2048, 512, 2, 2
    cp.swa_full = False
    cb = L.ggml_backend_sched_eval_callback(observe)
    cp.cb_eval = cb
    ctx = L.llama_init_from_model(model, cp)

    def decode(ids):
        arr = (L.llama_token * len(ids))(*ids)
        if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(ids))) != 0:
            sys.exit("llama_decode failed")
        batch_no[0] += 1
        return int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))))

    pos = 0
    for s in sizes:
        nxt = decode(toks[pos:pos + s])
        pos += s
    for _ in range(a.decode):
        nxt = decode([nxt])
    np.savez(a.out, **dumped)
    print(f"{len(dumped)} tensors from {batch_no[0]} batches -> {a.out}")


if __name__ == "__main__":
    main()
