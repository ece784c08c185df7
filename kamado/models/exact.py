"""Plain float32 arithmetic, as Hugging Face transformers computes a model: what the "reference" backend runs.

blocks.py reproduces llama.cpp's CPU numerics (fp16 GELU table, queries/keys/values rounded to fp16 as an
F16 KV cache holds them), which moves logits by up to ~1e-2 against exact float32. A model loaded with
backend="reference" uses these twins instead, so that architecture math can be checked against
transformers to 1e-3 (tests/models/test_transformers_parity.py). The engine's paged cache stores fp16
keys/values whatever the backend; `solo_attend` honours the choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"silu": F.silu, "gelu": gelu_tanh}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    scale: float,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:
    """blocks.attention's contract (q (T, H, D), k/v (S, Hkv, D*) -> (T, H*Dv)) in float32 throughout."""
    n_tok, n_head, n_kv = q.shape[0], q.shape[1], k.shape[1]
    qg = q.float().reshape(n_tok, n_kv, n_head // n_kv, q.shape[2])
    scores = torch.einsum("tkgd,skd->kgts", qg, k.float()) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    delta = q_pos[:, None] - k_pos[None, :]
    visible = delta >= 0
    if window:
        visible &= delta < window
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    out = torch.einsum("kgts,skd->tkgd", probs, v.float())
    return out.reshape(n_tok, n_head * v.shape[2])
