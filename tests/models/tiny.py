"""A tiny random decoder (no file): tensors built in memory in the shapes and types a GGUF would hold."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.models import ARCHITECTURES, DecoderModel, ModelConfig
from kamado.quants import quantize


def _tensor(name, values: np.ndarray, qtype: T):
    values = values.astype(np.float32)
    raw = values.view(np.uint8).reshape(*values.shape[:-1], -1) if qtype == T.F32 else quantize(values, qtype)
    return SimpleNamespace(name=name, type=qtype, shape=values.shape, raw=raw)


def tiny_model(arch: str = "qwen2", backend: str = "cpu", qtype: T = T.Q8_0, seed: int = 0, n_vocab: int = 96,
               drop: str | None = None, **overrides) -> DecoderModel:
    rng = np.random.default_rng(seed)
    meta = {
        "general.architecture": arch, f"{arch}.embedding_length": 64, f"{arch}.block_count": 2, f"{arch}.feed_forward_length": 128,
        f"{arch}.attention.head_count": 4, f"{arch}.attention.head_count_kv": 2, f"{arch}.context_length": 256,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
    } | {f"{arch}.{k}": v for k, v in overrides.items()}
    cfg = ModelConfig.from_metadata(meta, n_vocab)
    d, hd = cfg.n_embd, cfg.head_dim
    t = {"token_embd.weight": _tensor("token_embd.weight", rng.normal(0, 1, (n_vocab, d)), qtype),
         "output_norm.weight": _tensor("output_norm.weight", 1 + 0.1 * rng.normal(size=d), T.F32)}
    for il in range(cfg.n_layer):
        p = f"blk.{il}."
        shapes = {"attn_q": (cfg.n_head * hd, d), "attn_k": (cfg.n_head_kv * hd, d), "attn_v": (cfg.n_head_kv * hd, d),
                  "attn_output": (d, cfg.n_head * hd), "ffn_gate": (cfg.n_ff, d), "ffn_up": (cfg.n_ff, d), "ffn_down": (d, cfg.n_ff)}
        for name, shape in shapes.items():
            t[p + name + ".weight"] = _tensor(p + name + ".weight", rng.normal(0, shape[1] ** -0.5, shape), qtype)
        for name in ("attn_norm", "ffn_norm", "post_attention_norm", "post_ffw_norm"):
            t[p + name + ".weight"] = _tensor(p + name + ".weight", 1 + 0.1 * rng.normal(size=d), T.F32)
        for name in ("attn_q_norm", "attn_k_norm"):
            t[p + name + ".weight"] = _tensor(p + name + ".weight", 1 + 0.1 * rng.normal(size=hd), T.F32)
        for name, n in (("attn_q", cfg.n_head * hd), ("attn_k", cfg.n_head_kv * hd), ("attn_v", cfg.n_head_kv * hd)):
            t[p + name + ".bias"] = _tensor(p + name + ".bias", 0.1 * rng.normal(size=n), T.F32)
    t.pop(drop, None)
    return DecoderModel(cfg, ARCHITECTURES[arch], t, backend, "test")
