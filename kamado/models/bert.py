"""BERT, the encoder llama.cpp runs for embeddings (src/models/bert.cpp, arch "bert").

Token + token-type (always type 0, "sentence A", as llama.cpp) + learned position embeddings, a LayerNorm, then
post-norm layers: non-causal attention with biases (separate q/k/v or a fused attn_qkv), residual, LayerNorm, a GELU
feed-forward with biases, residual, LayerNorm. The last layer's output is what gets pooled: there is no final norm
and no output projection, so an encoder cannot generate text (kamado.models.is_encoder; kamado.llama refuses).

Numerics, by kernel backend: "reference" computes as transformers does (float32, erf GELU); the others as
llama.cpp's CPU graph does: GELU through ggml's fp16 tanh table (ggml_gelu, which llama.cpp uses for BERT where
transformers uses erf) and keys/values rounded to fp16 (flash attention casts float32 K/V to F16).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kamado.kernels import QuantTensor, embedding_rows, make_linear
from kamado.models.blocks import gelu_tanh
from kamado.models.config import ModelConfig, ModelError

# The backend that computes as transformers does (kamado/models/exact.py).
EXACT_BACKEND = "reference"


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    # ggml_norm: mean and variance summed in double, 1/sqrtf(variance + eps) in float32; then the weight and bias.
    mean = (x.double().sum(-1, keepdim=True) / x.shape[-1]).float()
    centred = x - mean
    variance = (centred.pow(2).double().sum(-1, keepdim=True) / x.shape[-1]).float()
    return centred * (1.0 / torch.sqrt(variance + eps)) * weight + bias


def encoder_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, round_kv: bool) -> torch.Tensor:
    """Every token attends to every token of its sequence: q/k/v (T, H, D) -> (T, H*D)."""
    if round_kv:
        k, v = k.half().float(), v.half().float()
    scores = torch.einsum("thd,shd->hts", q, k) * scale
    out = torch.einsum("hts,shd->thd", torch.softmax(scores, dim=-1), v)
    return out.reshape(q.shape[0], -1)


class _Tensors:
    def __init__(self, tensors: dict, supported: str):
        self.tensors, self.supported = tensors, supported

    def get(self, name: str) -> QuantTensor:
        info = self.tensors.get(name)
        if info is None:
            raise ModelError(f"bert model: tensor {name} is missing ({self.supported})")
        return QuantTensor.from_info(info)

    def optional(self, name: str) -> QuantTensor | None:
        return QuantTensor.from_info(self.tensors[name]) if name in self.tensors else None

    def optional_vector(self, name: str) -> torch.Tensor | None:
        return self.vector(name) if name in self.tensors else None

    def vector(self, name: str) -> torch.Tensor:
        return self.get(name).dequantize().reshape(-1).clone()  # a float tensor's dequantize is a view of the file


class BertLayer:
    def __init__(self, il: int, cfg: ModelConfig, t: _Tensors, backend: str):
        p = f"blk.{il}."
        n_q, n_kv = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        qkv = t.optional(p + "attn_qkv.weight")
        if qkv is not None:
            self.qkv = make_linear(qkv, backend)
            self.qkv_bias = t.optional_vector(p + "attn_qkv.bias")
        else:  # separate projections, joined into one product: q, k, v have the same input
            self.qkv = _Stacked([make_linear(t.get(p + f"attn_{n}.weight"), backend) for n in "qkv"])
            self.qkv_bias = torch.cat([t.vector(p + f"attn_{n}.bias") for n in "qkv"])
        self.split = [n_q, n_kv, n_kv]
        self.o = make_linear(t.get(p + "attn_output.weight"), backend)
        self.o_bias = t.vector(p + "attn_output.bias")
        self.attn_norm = (t.vector(p + "attn_output_norm.weight"), t.vector(p + "attn_output_norm.bias"))
        self.up = make_linear(t.get(p + "ffn_up.weight"), backend)
        self.up_bias = t.vector(p + "ffn_up.bias")
        self.down = make_linear(t.get(p + "ffn_down.weight"), backend)
        self.down_bias = t.vector(p + "ffn_down.bias")
        self.out_norm = (t.vector(p + "layer_output_norm.weight"), t.vector(p + "layer_output_norm.bias"))


class _Stacked:
    """Several linear layers reading the same input, called as one: outputs concatenated."""

    def __init__(self, parts: list):
        self.parts = parts

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


class BertModel:
    """Hidden states of one sequence, as llama.cpp's BERT graph computes them (`encode`)."""

    def __init__(self, cfg: ModelConfig, tensors: dict, backend: str, supported: str, progress=None):
        if cfg.n_head_kv != cfg.n_head:
            raise ModelError(f"bert model: {cfg.n_head_kv} key/value heads for {cfg.n_head} query heads (BERT has one per query head)")
        self.cfg = cfg
        t = _Tensors(tensors, supported)
        self.token_embd = t.get("token_embd.weight")  # rows are looked up from the mmap
        self.position_embd = t.get("position_embd.weight")
        types = t.optional("token_types.weight")
        # Every token is of type 0 ("sentence A"), as in llama.cpp: only the first row is ever added.
        self.type_row = None if types is None else types.dequantize(torch.tensor([0]))[0]
        self.embd_norm = (t.vector("token_embd_norm.weight"), t.vector("token_embd_norm.bias"))
        self.layers = []
        for il in range(cfg.n_layer):
            self.layers.append(BertLayer(il, cfg, t, backend))
            if progress:
                progress(il + 1, cfg.n_layer)
        exact = backend == EXACT_BACKEND
        self.activation = F.gelu if exact else gelu_tanh
        self.round_kv = not exact
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    @property
    def n_positions(self) -> int:
        return self.position_embd.shape[0]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T,) token ids -> (T, n_embd) hidden states of the last layer."""
        cfg = self.cfg
        n = tokens.shape[0]
        if n > self.n_positions:
            raise ValueError(f"bert model: {n} tokens exceed the {self.n_positions} positions it was trained for")
        x = embedding_rows(self.token_embd, tokens)
        if self.type_row is not None:
            x = x + self.type_row
        x = embedding_rows(self.position_embd, torch.arange(n)) + x
        x = layer_norm(x, *self.embd_norm, cfg.eps)
        for layer in self.layers:
            qkv = layer.qkv(x)
            if layer.qkv_bias is not None:
                qkv = qkv + layer.qkv_bias
            q, k, v = (part.reshape(n, -1, cfg.head_dim) for part in qkv.split(layer.split, dim=-1))
            a = layer.o(encoder_attention(q, k, v, self.scale, self.round_kv)) + layer.o_bias
            x = layer_norm(a + x, *layer.attn_norm, cfg.eps)
            f = layer.down(self.activation(layer.up(x) + layer.up_bias)) + layer.down_bias
            x = layer_norm(f + x, *layer.out_norm, cfg.eps)
        return x

