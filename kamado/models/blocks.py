"""Building blocks shared by every architecture: norms, rotary embeddings, attention, feed-forward, MoE.

Numerics follow llama.cpp's CPU graph where it matters for parity: float32 activations, RoPE angles
built by repeated float32 multiplication as ggml's rope cache does, attention softmax in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"silu": F.silu, "gelu": gelu_tanh}


@dataclass(frozen=True)
class RopeSpec:
    """One rotary embedding: ggml's rope_ext parameters (freq_factors come from a rope_freqs/rope_factors tensor)."""

    n_dims: int
    base: float
    neox: bool  # rotate (x[i], x[i + n/2]) pairs (NEOX) or (x[2i], x[2i+1]) pairs (NORM)
    freq_scale: float = 1.0
    ext_factor: float = 0.0  # YaRN ramp mix, 0 = off
    attn_factor: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    n_ctx_orig: int = 0


class Rope:
    def __init__(self, spec: RopeSpec, freq_factors: torch.Tensor | None = None):
        self.spec = spec
        half = spec.n_dims // 2
        theta_scale = torch.tensor(spec.base, dtype=torch.float32) ** (-2.0 / spec.n_dims)
        # ggml multiplies theta by theta_scale once per pair, in float32: reproduce that rounding.
        self.steps = torch.full((half,), float(theta_scale), dtype=torch.float32)
        self.freq_factors = None if freq_factors is None else freq_factors.float()
        self.corr_dims = _yarn_corr_dims(spec) if spec.ext_factor else None

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        seq = torch.cat([positions.float()[:, None], self.steps[None, 1:].expand(len(positions), -1)], dim=1)
        theta = torch.cumprod(seq, dim=1)
        if self.freq_factors is not None:
            theta = theta / self.freq_factors
        mscale = s.attn_factor
        theta_interp = s.freq_scale * theta
        if self.corr_dims is None:
            theta = theta_interp
        else:
            i0 = torch.arange(0, s.n_dims, 2, dtype=torch.float32)
            low, high = self.corr_dims
            y = (i0 / 2 - low) / max(0.001, high - low)
            ramp_mix = (1 - y.clamp(0, 1)) * s.ext_factor
            theta = theta_interp * (1 - ramp_mix) + theta * ramp_mix
            mscale *= 1.0 + 0.1 * math.log(1.0 / s.freq_scale)
        return torch.cos(theta) * mscale, torch.sin(theta) * mscale

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (T, heads, head_dim); rotates the first n_dims of each head."""
        n = self.spec.n_dims
        rot, rest = x[..., :n], x[..., n:]
        c, s = cos[:, None, :], sin[:, None, :]
        if self.spec.neox:
            a, b = rot[..., : n // 2], rot[..., n // 2 :]
            out = torch.cat([a * c - b * s, a * s + b * c], dim=-1)
        else:
            a, b = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
        return out if rest.shape[-1] == 0 else torch.cat([out, rest], dim=-1)


def _yarn_corr_dims(s: RopeSpec) -> tuple[float, float]:
    def corr_dim(n_rot: float) -> float:
        return s.n_dims * math.log(s.n_ctx_orig / (n_rot * 2 * math.pi)) / (2 * math.log(s.base))

    low = math.floor(corr_dim(s.beta_fast))
    high = math.ceil(corr_dim(s.beta_slow))
    return max(0.0, low), min(s.n_dims - 1.0, high)


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
    """Causal attention of one sequence: q (T, H, D), k/v (S, Hkv, D*) at positions k_pos -> (T, H*Dv).

    Key j is visible to query i when k_pos[j] <= q_pos[i] and, with a sliding window, q_pos[i] - k_pos[j] < window.
    """
    n_head, n_kv = q.shape[1], k.shape[1]
    group = n_head // n_kv
    qg = q.float().reshape(q.shape[0], n_kv, group, q.shape[2])
    scores = torch.einsum("tkgd,skd->kgts", qg, k.float()) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    delta = q_pos[:, None] - k_pos[None, :]
    visible = delta >= 0
    if window:
        visible &= delta < window
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("kgts,skd->tkgd", probs, v.float())
    return out.reshape(q.shape[0], n_head * v.shape[2])


def top_k_routing(router_logits: torch.Tensor, k: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral-style routing: softmax over experts, keep the k best, renormalise their weights."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, experts = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, experts
