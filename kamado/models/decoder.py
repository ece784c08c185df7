"""The decoder-only transformer every supported family is an instance of, driven by an ArchSpec + ModelConfig.

The model never sees batches or caches: `forward` gets a flat row of tokens (from any number of
sequences) with their positions and an `attend` callback supplied by the engine, which stores the
new keys/values and returns each row's attention output. That keeps the paged KV cache, batching
and devices in kamado.engine and the math here.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kamado.kernels import QuantTensor, embedding_rows, make_fused_linear, make_linear
from kamado.models import exact, ggml_ops
from kamado.models.blocks import ACTIVATIONS, Rope, RopeSpec, add_rms_norm, attention, rms_norm, top_k_routing
from kamado.models.config import ModelConfig, ModelError
from kamado.models.ggml_ops import GgmlRope

# The kernel backend whose models also compute activations and attention in plain float32 (kamado/models/exact.py).
EXACT_BACKEND = "reference"
# The backend whose models also compute RoPE and attention in ggml-cpu's float order (kamado/models/ggml_ops.py).
GGML_BACKEND = "ggml"
# Backends whose layers also use exact.ACTIVATIONS: ggml's fp16 GELU table is a CPU lookup (ggml-cuda computes GELU in float32).
EXACT_ACTIVATION_BACKENDS = {EXACT_BACKEND, "cuda"}


@dataclass(frozen=True)
class Offload:
    """Which layers run where: the first `n_layers` on `device` with kernel `backend`, the rest on the CPU.

    The output layer goes to the device only when every layer does (llama.cpp's -ngl >= n_layer + 1 is
    "all of it" for us). backend "reference" with device "cpu" exercises the same placement code on a CPU.
    """

    n_layers: int = 0
    device: str = "cuda"
    backend: str = "cuda"


@dataclass(frozen=True)
class ArchSpec:
    """What distinguishes one family's graph (llama.cpp src/models/*.cpp) from the generic decoder."""

    name: str
    rope_neox: bool = True
    embed_scale: bool = False  # multiply token embeddings by sqrt(n_embd) (Gemma)
    post_norms: bool = False  # post_attention_norm / post_ffw_norm before the residual add (Gemma 2/3)
    activation: str = "silu"
    swa_pattern: int = 0  # 0: every layer uses the window (if any); n: layer il is local unless il % n == n - 1
    swa_rope_base: float = 0.0  # local layers' rope base when the file has no rope.freq_base_swa (Gemma 3), 0 = same as global
    big_attention_scale_layers: int = 0  # layer count of the variant scaling queries by 1/sqrt(n_embd/n_head) (Gemma 27B)
    # llama.cpp multiplies Q by the attention scale before attending (kq_scale 1; Gemma, Phi-3): the same product, but
    # ggml-cpu's one-row attention rounds Q to fp16, and small scaled values round differently from unscaled ones
    scale_queries: bool = False


@dataclass(frozen=True)
class LayerAttention:
    """What `attend` needs to know about one layer."""

    index: int
    scale: float
    window: int
    softcap: float
    exact: bool = False  # plain float32 (exact.attention) rather than llama.cpp's fp16 K/V numerics
    ggml_order: bool = False  # ggml-cpu's flash-attention kernels' float order (ggml_ops.attention, the "ggml" backend)
    q_scale: float = 1.0  # multiplies the queries before `attend` (ArchSpec.scale_queries; `scale` is then 1)


AttendFn = Callable[[LayerAttention, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class _Tensors:
    def __init__(self, tensors: dict, arch: str, supported: str):
        self.tensors, self.arch, self.supported = tensors, arch, supported
        self.mappings = set()  # the file mappings of the tensors handed out

    def get(self, name: str, required: bool = True) -> QuantTensor | None:
        info = self.tensors.get(name)
        if info is None:
            if required:
                raise ModelError(f"{self.arch} model: tensor {name} is missing ({self.supported})")
            return None
        tensor = QuantTensor.from_info(info)
        if tensor.mapping is not None:
            self.mappings.add(tensor.mapping)
        return tensor

    def release_pages(self) -> None:
        """Drop the file pages that reading the weights mapped (repacked weights never read them again). Each tensor's
        repacking releases its own rows, but a read maps the whole page-cache folio around it (up to 2 MiB), neighbours'
        rows included: without this, a layer-by-layer load kept ~100 MiB of Gemma 3 270M's file resident at its peak."""
        for mapping in self.mappings:
            mapping.madvise(mmap.MADV_DONTNEED)

    def vector(self, name: str, required: bool = True) -> torch.Tensor | None:
        """A norm, bias or factor vector, copied out of the file (a float tensor's dequantize is a view of the mapping,
        which would keep the file's pages around it resident)."""
        t = self.get(name, required)
        return None if t is None else t.dequantize().reshape(-1).clone()


class Layer:
    def __init__(self, il: int, cfg: ModelConfig, arch: ArchSpec, t: _Tensors, backend: str, device: str = "cpu"):
        p = f"blk.{il}."
        self.device = torch.device(device)
        self.attn_norm = t.vector(p + "attn_norm.weight")
        qkv = t.get(p + "attn_qkv.weight", required=False)
        if qkv is not None:
            self.qkv = make_linear(qkv, backend)
        else:
            weights = [t.get(p + f"attn_{n}.weight") for n in "qkv"]
            self.qkv = make_fused_linear(weights, backend)
            self.q, self.k, self.v = (None, None, None) if self.qkv else (make_linear(w, backend) for w in weights)
        widths = (cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim, cfg.n_head_kv * cfg.head_dim_v)
        biases = [t.vector(p + f"attn_{n}.bias", required=False) for n in "qkv"]
        # one add over q|k|v (a missing bias adds zeros: x + 0 is x)
        self.qkv_bias = None if all(b is None for b in biases) else torch.cat(
            [torch.zeros(w) if b is None else b for b, w in zip(biases, widths, strict=True)])
        q_norm = t.vector(p + "attn_q_norm.weight", required=False)
        k_norm = t.vector(p + "attn_k_norm.weight", required=False)
        # q and k heads are normed and rotated together, as one (T, n_head + n_head_kv, head_dim) tensor
        self.qk_norm = None if q_norm is None else torch.cat([q_norm.expand(cfg.n_head, -1), k_norm.expand(cfg.n_head_kv, -1)])
        self.o = make_linear(t.get(p + "attn_output.weight"), backend)
        self.post_attn_norm = t.vector(p + "post_attention_norm.weight", required=arch.post_norms)
        self.ffn_norm = t.vector(p + "ffn_norm.weight")
        self.post_ffn_norm = t.vector(p + "post_ffw_norm.weight", required=arch.post_norms)
        self.activation = arch.activation
        if backend in EXACT_ACTIVATION_BACKENDS:
            self.act = exact.ACTIVATIONS[arch.activation]
        else:
            self.act = (ggml_ops.ACTIVATIONS if backend == GGML_BACKEND else ACTIVATIONS)[arch.activation]
        if cfg.n_expert:
            self.router = make_linear(t.get(p + "ffn_gate_inp.weight"), backend)
            self.experts = [
                [_expert_linear(t.get(p + f"ffn_{n}_exps.weight"), e, backend) for n in ("gate", "up", "down")]
                for e in range(cfg.n_expert)
            ]
        else:
            gate, up = t.get(p + "ffn_gate.weight", required=False), t.get(p + "ffn_up.weight")
            fused = make_fused_linear([gate, up], backend) if gate is not None else None
            self.gate = None if gate is None or fused else make_linear(gate, backend)
            self.up = fused or make_linear(up, backend)  # fused: gate is the first half, as Phi-3's gate_up
            self.down = make_linear(t.get(p + "ffn_down.weight"), backend)
        for name, value in list(vars(self).items()):  # norm and bias vectors live beside the layer's weights
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(self.device))

    def qkv_out(self, h: torch.Tensor) -> torch.Tensor:
        """q|k|v side by side (T, widths), biases added."""
        out = self.qkv(h) if self.qkv is not None else torch.cat([self.q(h), self.k(h), self.v(h)], dim=-1)
        return out if self.qkv_bias is None else out + self.qkv_bias

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is None:  # fused gate_up (Phi-3): gate is the first half
            g, u = self.up(x).chunk(2, dim=-1)
        else:
            g, u = self.gate(x), self.up(x)
        if g.is_cuda:  # one fused kernel, exact float32 like exact.ACTIVATIONS
            from kamado.kernels.triton import ops

            return self.down(ops.gated(g, u, self.activation))
        return self.down(self.act(g) * u)

    def moe(self, x: torch.Tensor, n_used: int) -> torch.Tensor:
        weights, experts = top_k_routing(self.router(x), n_used)
        out = torch.zeros_like(x)
        for e in experts.unique().tolist():
            rows, slot = (experts == e).nonzero(as_tuple=True)
            gate, up, down = self.experts[e]
            xe = x[rows]
            out.index_add_(0, rows, down(self.act(gate(xe)) * up(xe)) * weights[rows, slot, None])
        return out


def _expert_linear(t: QuantTensor, e: int, backend: str):
    return make_linear(QuantTensor(f"{t.name}[{e}]", t.qtype, t.shape[1:], t.raw[e]), backend)


class DecoderModel(torch.nn.Module):
    def __init__(self, cfg: ModelConfig, arch: ArchSpec, tensors: dict, backend: str, supported: str, progress=None,
                 offload: Offload = Offload()):
        super().__init__()
        self.cfg, self.arch = cfg, arch
        t = _Tensors(tensors, cfg.arch, supported)
        self.token_embd = t.get("token_embd.weight")  # rows are looked up on the CPU, from the mmap
        self.layers = []
        for il in range(cfg.n_layer):
            on_device = il < offload.n_layers
            self.layers.append(Layer(il, cfg, arch, t, offload.backend if on_device else backend, offload.device if on_device else "cpu"))
            t.release_pages()
            if progress:
                progress(il + 1, cfg.n_layer)
        output_on_device = offload.n_layers >= cfg.n_layer
        self.output_device = torch.device(offload.device if output_on_device else "cpu")
        self.output_norm = t.vector("output_norm.weight").to(self.output_device)
        out = t.get("output.weight", required=False) or self.token_embd  # tied embeddings
        self.output = make_linear(out, offload.backend if output_on_device else backend, logits=True)
        self.embed_scale = math.sqrt(cfg.n_embd) if arch.embed_scale else 1.0
        self.ggml_order = backend == GGML_BACKEND  # the engine then batches rows as llama.cpp does (engine.py)
        self._build_attention(t, exact_math=backend == EXACT_BACKEND, ggml_order=self.ggml_order)

    def _build_attention(self, t: _Tensors, exact_math: bool, ggml_order: bool) -> None:
        cfg, arch = self.cfg, self.arch
        if arch.big_attention_scale_layers and cfg.n_layer == arch.big_attention_scale_layers:
            scale = 1.0 / math.sqrt(cfg.n_embd / cfg.n_head)
        else:
            scale = 1.0 / math.sqrt(cfg.head_dim)
        freq_factors = t.vector("rope_freqs.weight", required=False)
        if freq_factors is None:  # Phi-3 longrope: long factors beyond the original context
            name = "rope_factors_long.weight" if cfg.extra.get("n_ctx", 0) > cfg.rope_orig_ctx else "rope_factors_short.weight"
            freq_factors = t.vector(name, required=False)
        scaling = cfg.rope_scaling
        freq_scale = 1.0 / cfg.rope_scale_factor if scaling in ("linear", "yarn") else 1.0
        rope_class = GgmlRope if ggml_order else Rope
        global_rope = rope_class(
            RopeSpec(
                cfg.rope_dims,
                cfg.rope_base,
                arch.rope_neox,
                freq_scale=freq_scale,
                ext_factor=1.0 if scaling == "yarn" else 0.0,
                attn_factor=cfg.rope_attn_factor,
                n_ctx_orig=cfg.rope_orig_ctx or cfg.n_ctx_train,
            ),
            freq_factors,
        )
        local_base = cfg.rope_base_swa or arch.swa_rope_base
        local_rope = rope_class(RopeSpec(cfg.rope_dims, local_base, arch.rope_neox)) if local_base else global_rope
        self.attn, self.ropes = [], []
        for il in range(cfg.n_layer):
            local = bool(cfg.sliding_window) and (not arch.swa_pattern or il % arch.swa_pattern != arch.swa_pattern - 1)
            kq_scale, q_scale = (1.0, scale) if arch.scale_queries else (scale, 1.0)
            self.attn.append(LayerAttention(il, kq_scale, cfg.sliding_window if local else 0, cfg.attn_softcap, exact_math, ggml_order,
                                            q_scale))
            self.ropes.append(local_rope if local else global_rope)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = embedding_rows(self.token_embd, tokens)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    @property
    def layer_devices(self) -> list[torch.device]:
        """Where each layer computes (its KV cache belongs there too)."""
        return [layer.device for layer in self.layers]

    def hidden(self, tokens: torch.Tensor | None, positions: torch.Tensor, attend: AttendFn, trig: dict | None = None,
               x: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states (T, n_embd) of all rows.

        A CUDA graph (kamado/engine/cuda_graph.py) passes the embeddings `x` and the rope tables `trig`
        ({(id(rope), device): (cos, sin)}) in static device buffers instead of `tokens`, so no CPU work is captured.
        """
        cfg = self.cfg
        x = self.embed(tokens) if x is None else x
        n = x.shape[0]
        trig = {} if trig is None else trig
        tables = {}  # rope.tables of each trig entry, built once per step (CPU layers)
        pending = None  # the last layer's FFN output: added to x together with the next norm (one kernel on the GPU)
        for layer, spec, rope in zip(self.layers, self.attn, self.ropes, strict=True):
            if x.device != layer.device:  # crosses devices once per CPU/GPU boundary (a device test costs less than a no-op .to)
                x = x.to(layer.device)
                pending = None if pending is None else pending.to(layer.device)
            key = (id(rope), layer.device)
            if key not in trig:  # rope tables are computed on the CPU (float32 as ggml), then moved once per step
                trig[key] = tuple(c.to(layer.device) for c in rope.cos_sin(positions))
            x, h = add_rms_norm(x, pending, layer.attn_norm, cfg.eps)
            qkv = layer.qkv_out(h)
            n_qk = (cfg.n_head + cfg.n_head_kv) * cfg.head_dim
            qk = qkv[:, :n_qk].reshape(n, cfg.n_head + cfg.n_head_kv, cfg.head_dim)
            v = qkv[:, n_qk:].reshape(n, cfg.n_head_kv, cfg.head_dim_v)
            if qk.is_cuda:  # q/k norm and rotation in one kernel
                from kamado.kernels.triton import ops

                qk = ops.rope(qk, *trig[key], rope.spec.neox, layer.qk_norm, cfg.eps)
            else:
                if layer.qk_norm is not None:
                    qk = rms_norm(qk, layer.qk_norm, cfg.eps)
                if key not in tables:
                    tables[key] = rope.tables(*trig[key], cfg.head_dim)
                qk = rope.rotate(qk, *tables[key])
            q, k = qk[:, : cfg.n_head], qk[:, cfg.n_head :]
            if spec.q_scale != 1.0:
                q = q * spec.q_scale  # float32 q: the scale rounded to float32, as a 0-dim tensor of it would be
            a = layer.o(attend(spec, q, k, v))
            if layer.post_attn_norm is not None:
                a = rms_norm(a, layer.post_attn_norm, cfg.eps)
            x, h = add_rms_norm(x, a, layer.ffn_norm, cfg.eps)
            pending = layer.moe(h, cfg.n_expert_used) if cfg.n_expert else layer.mlp(h)
            if layer.post_ffn_norm is not None:
                pending = rms_norm(pending, layer.post_ffn_norm, cfg.eps)
        return add_rms_norm(x.to(self.output_device), pending.to(self.output_device), self.output_norm, cfg.eps)[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.output(hidden)
        if self.cfg.final_softcap:
            out = torch.tanh(out / self.cfg.final_softcap) * self.cfg.final_softcap
        return out

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, attend: AttendFn, output_rows: torch.Tensor | None = None):
        h = self.hidden(tokens, positions, attend)
        return self.logits(h if output_rows is None else h[output_rows])


def attention_of(spec: LayerAttention):
    """The attention function (blocks.attention's contract) of a layer's backend."""
    return exact.attention if spec.exact else ggml_ops.attention if spec.ggml_order else attention


def solo_attend(n_layer: int) -> AttendFn:
    """An `attend` for one sequence without a paged cache (tests, simple callers): keeps K/V in lists per layer."""
    keys: list = [None] * n_layer
    values: list = [None] * n_layer

    def attend(spec: LayerAttention, q, k, v):
        il = spec.index
        keys[il] = k if keys[il] is None else torch.cat([keys[il], k])
        values[il] = v if values[il] is None else torch.cat([values[il], v])
        k_pos = torch.arange(keys[il].shape[0])
        q_pos = k_pos[-q.shape[0] :]
        return attention_of(spec)(q, keys[il], values[il], q_pos, k_pos, spec.scale, spec.window, spec.softcap)

    return attend
