"""Building blocks shared by every architecture: norms, rotary embeddings, attention, feed-forward, MoE.

Numerics follow llama.cpp's CPU graph (ggml-cpu) where it matters for parity: float32 activations,
RMS norm summed in float64, GELU through ggml's fp16 lookup table, RoPE angles built by repeated float32
multiplication as ggml's rope cache does, attention over an F16 KV cache (see `attention`).
docs/NUMERICS.md measures what these change against llama.cpp's recorded outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    if x.is_cuda:  # the numpy steps below are for CPU tensors
        from kamado.kernels.triton import ops

        return ops.rms_norm(x.reshape(-1, x.shape[-1]), weight, eps).reshape(x.shape)
    # ggml: squares in float32 summed in double, mean and 1/sqrtf(mean + eps) in float32, then x * scale.
    # The (rows, 1) steps after the sum run in numpy: its float32 sqrt and reciprocal are IEEE's correctly rounded ones,
    # as sqrtf (torch's float32 sqrt is not always: ~0.6% of values an ulp off, 10 of 2048 rows of Gemma's first norm),
    # and a numpy call on a few values costs a fraction of a torch call (a decode step makes ~90 norms: 14.6 -> 9.7 us
    # each for one row, the same bits as the torch steps through a double sqrt).
    sums = torch.sum(x * x, -1, keepdim=True, dtype=torch.float64)
    if sums.numel() == 1:  # one row (most decode norms): through a Python float, 5 torch calls fewer (10.9 -> 8.7 us)
        y = x * float(_inverse_root_mean(np.float64(sums.item()), x.shape[-1], eps))
    else:
        y = x * torch.from_numpy(_inverse_root_mean(sums.numpy(), x.shape[-1], eps))
    return y if weight is None else y.mul_(weight)


def _inverse_root_mean(sums, n: int, eps: float):
    """1 / sqrtf(mean + eps) in float32 from float64 sums, as ggml's rms_norm (numpy arrays or scalars alike)."""
    return np.reciprocal(np.sqrt((sums / n).astype(np.float32) + np.float32(eps)))


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, rms_norm(s) * weight) with s = x + residual (x itself when residual is None): one pass on the GPU."""
    if x.is_cuda and residual is not None:
        from kamado.kernels.triton import ops

        return ops.rms_norm(x, weight, eps, residual)
    s = x if residual is None else x + residual
    return s, rms_norm(s, weight, eps)


_GELU_TABLE: torch.Tensor | None = None


def _gelu_table() -> torch.Tensor:
    """ggml's table: for every fp16 bit pattern h, fp16(gelu_tanh(h)) computed in float32 (GGML_GELU_FP16), indexed by
    the pattern as an unsigned number.

    As GCC compiles ggml_gelu_f32 (-ffp-contract=fast): 1 + 0.044715*x*x is one fused multiply-add, done here in
    double and rounded once; tanhf is taken as tanh in double rounded to float. Bit for bit glibc's table (all 65536
    entries; float32 torch.tanh and an unfused sum left two entries an fp16 step apart). Entries of h < -10 hold ggml's
    0 for x <= -10 (such h come only from x < -10), so the lookup needs no test for that side; x in [-10.004, -10]
    rounds to h = -10 and gets its entry (-1.2e-6) where ggml gives 0.
    """
    global _GELU_TABLE
    if _GELU_TABLE is None:
        x = torch.arange(1 << 16, dtype=torch.int32).to(torch.uint16).view(torch.float16).float()
        cubic = ((torch.tensor(0.044715) * x).double() * x.double() + 1.0).float()
        inner = torch.tensor(math.sqrt(2.0 / math.pi), dtype=torch.float32) * x * cubic
        table = (0.5 * x * (1.0 + torch.tanh(inner.double()).float())).half().float()
        _GELU_TABLE = torch.where(x < -10.0, 0.0, table)
    return _GELU_TABLE


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """ggml-cpu's GELU: x rounded to fp16 and looked up in the fp16 table; 0 below -10, x itself above 10."""
    # index_select rather than indexing: 16.7 -> 14.4 us for a decode row of 2048, 610 -> 424 us for 128 rows (best of 5)
    looked_up = _gelu_table().index_select(0, x.half().view(torch.uint16).int().reshape(-1)).reshape(x.shape)
    return torch.where(x >= 10.0, x, looked_up)


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
        self.theta_scale = theta_scale
        self.freq_factors = None if freq_factors is None else freq_factors.float()
        self.corr_dims = _yarn_corr_dims(spec) if spec.ext_factor else None
        self._thetas = torch.empty(0, half)  # row p: the angles of position p, grown on demand

    def thetas(self, n_positions: int) -> torch.Tensor:
        """Angles (n_positions, n_dims / 2) as ggml computes them: theta = p, then theta *= theta_scale once per pair, each
        product rounded to float32. (torch.cumprod accumulates in double: a quarter of the angles came out an ulp apart.)"""
        if len(self._thetas) < n_positions:
            n = max(n_positions, 2 * len(self._thetas), 256)
            table = torch.empty(n, self._thetas.shape[1])
            theta = torch.arange(n, dtype=torch.float32)
            for i in range(table.shape[1]):
                table[:, i] = theta
                theta = theta * self.theta_scale
            self._thetas = table
        return self._thetas[:n_positions]

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.spec
        theta = self.thetas(int(positions.max()) + 1 if len(positions) else 0)[positions]
        if self.freq_factors is not None:
            theta = theta / self.freq_factors
        mscale = s.attn_factor
        theta_interp = theta if s.freq_scale == 1.0 else s.freq_scale * theta  # (x * 1.0 is x: one op fewer a step)
        if self.corr_dims is None:
            theta = theta_interp
        else:
            i0 = torch.arange(0, s.n_dims, 2, dtype=torch.float32)
            low, high = self.corr_dims
            y = (i0 / 2 - low) / max(0.001, high - low)
            ramp_mix = (1 - y.clamp(0, 1)) * s.ext_factor
            theta = theta_interp * (1 - ramp_mix) + theta * ramp_mix
            mscale *= 1.0 + 0.1 * math.log(1.0 / s.freq_scale)
        cos, sin = self.trig(theta)
        return (cos, sin) if mscale == 1.0 else (cos * mscale, sin * mscale)

    def trig(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cos(theta), torch.sin(theta)

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: (T, heads, head_dim); rotates the first n_dims of each head (cos/sin from `cos_sin`)."""
        return self.rotate(x, *self.tables(cos, sin, x.shape[-1]))

    def tables(self, cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int]:
        """cos_sin's half-width tables spread over whole heads, for `rotate`: (T, 1, head_dim) factors and each dimension's
        partner, as an index tensor or, for NEOX pairs over the whole head, the shift torch.roll applies (a third of a
        gather's time on a decode row).

        Pair (a, b) becomes (a*c - b*s, b*c + a*s), i.e. x*C + x[partner]*S with S = -s at a and +s at b: the same
        float32 products and sums as rotating pair by pair, in four torch calls for every head of q and k at once.
        Dimensions past n_dims keep C = 1, S = 0 (x*1 + y*0 is x exactly).
        """
        n, half, device = self.spec.n_dims, self.spec.n_dims // 2, cos.device  # built on the device: a CUDA graph captures this
        first = torch.arange(half, device=device) if self.spec.neox else torch.arange(0, n, 2, device=device)  # a's index of each pair
        second = first + half if self.spec.neox else first + 1
        c_full = torch.ones(cos.shape[0], head_dim, dtype=cos.dtype, device=device)
        s_full = torch.zeros_like(c_full)
        c_full[:, first], c_full[:, second] = cos, cos
        s_full[:, first], s_full[:, second] = -sin, sin
        if self.spec.neox and n == head_dim:
            return c_full[:, None, :], s_full[:, None, :], half
        partner = torch.arange(head_dim, device=device)
        partner[first], partner[second] = second, first
        return c_full[:, None, :], s_full[:, None, :], partner

    @staticmethod
    def rotate(x: torch.Tensor, c_full: torch.Tensor, s_full: torch.Tensor, partner: torch.Tensor | int) -> torch.Tensor:
        partnered = x.roll(partner, -1) if isinstance(partner, int) else x.index_select(-1, partner)
        return x * c_full + partnered * s_full


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
    Keys and values are rounded to fp16 as llama.cpp's default F16 KV cache holds them; the rest is float32, as
    ggml-cpu's tiled flash-attention kernel computes it (batches of 64+ query rows). Its one-row kernel (fewer
    rows: every decode step) also rounds queries and the running value sum to fp16; docs/NUMERICS.md says what
    emulating that changed and why it is not done here.
    """
    n_tok, n_head, n_kv = q.shape[0], q.shape[1], k.shape[1]
    group = n_head // n_kv
    # Both products are the batched matmuls torch.einsum("tkgd,skd->kgts") and ("kgts,skd->tkgd") run, called directly:
    # the same results without einsum's planning, which cost as much as the products for one query row.
    qg = q.float().reshape(n_tok, n_kv, group, q.shape[2]).permute(1, 2, 0, 3).reshape(n_kv, group * n_tok, q.shape[2])
    scores = torch.bmm(qg, k.half().float().permute(1, 2, 0)).reshape(n_kv, group, n_tok, k.shape[0])
    scores = torch.tanh(scores * (scale / softcap)) * softcap if softcap else scores * scale
    delta = q_pos[:, None] - k_pos[None, :]
    visible = delta >= 0
    if window:
        visible &= delta < window
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    out = torch.bmm(probs.reshape(n_kv, group * n_tok, k.shape[0]), v.half().float().permute(1, 0, 2))
    return out.reshape(n_kv, group, n_tok, v.shape[2]).permute(2, 0, 1, 3).reshape(n_tok, n_head * v.shape[2])


def top_k_routing(router_logits: torch.Tensor, k: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtral-style routing: softmax over experts, keep the k best, renormalise their weights."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, experts = torch.topk(probs, k, dim=-1)
    if normalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, experts
