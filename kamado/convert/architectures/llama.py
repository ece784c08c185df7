"""Llama, Mistral and Mixtral (llama.cpp's LlamaModel): q/k row permutation, llama3 rope_freqs, merged experts."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch

from kamado.convert.architectures.base import LAYER_NAMES, Architecture, Planned
from kamado.convert.checkpoint import SourceTensor, read_optional_json
from kamado.convert.metadata import Metadata

_EXPERT_NAMES = {"w1": "ffn_gate_exps", "w2": "ffn_down_exps", "w3": "ffn_up_exps"}


def permute_rows(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF stores q/k rotary halves split per head; GGML's rope wants them interleaved (llama.cpp's permute)."""
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _stack(*experts: torch.Tensor) -> torch.Tensor:
    return torch.stack(experts, dim=0)


class Llama(Architecture):
    gguf_arch = "llama"
    hf_architectures = ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM")
    layer_names = {**LAYER_NAMES, "block_sparse_moe.gate": "ffn_gate_inp"}

    def __init__(self, model_dir, config):
        super().__init__(model_dir, config)
        self.n_head = self.need("num_attention_heads", "n_heads")
        self.n_kv_head = self.find("num_key_value_heads", "n_kv_heads", default=self.n_head)
        self._experts: dict[int, dict[str, SourceTensor]] = {}

    @property
    def head_dim(self) -> int:
        return self.config.get("head_dim") or self.need("hidden_size") // self.n_head

    def add_parameters(self, md: Metadata, file_type: int) -> None:
        super().add_parameters(md, file_type)
        md.u32(self.key("vocab_size"), self.need("vocab_size"))
        md.u32(self.key("rope.dimension_count"), self.head_dim)

    def add_vocab(self, md: Metadata) -> None:
        tokenizer_config = read_optional_json(self.model_dir / "tokenizer_config.json") or {}
        if isinstance(tokenizer_config.get("add_prefix_space"), bool):
            md.boolean("tokenizer.ggml.add_space_prefix", tokenizer_config["add_prefix_space"])
        self.add_vocab_sentencepiece_or_bpe(md)

    def extra_tensors(self, md: Metadata) -> Iterable[Planned]:
        rope = self.full_rope
        if rope.get("rope_type", "").lower() == "llama3":
            yield Planned("rope_freqs.weight", (), partial(llama3_rope_factors, rope, self.config, self.head_dim))

    def modify(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_rows(tensor, self.n_head)
        if hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_rows(tensor, self.n_kv_head)
        return tensor

    def plan(self, source: SourceTensor, bid: int | None) -> Iterable[Planned]:
        if "block_sparse_moe.experts" not in source.name:
            yield from super().plan(source, bid)
            return
        # Experts arrive one matrix at a time; llama.cpp writes one 3-D tensor per kind once a layer has them all.
        n_experts = self.need("num_local_experts")
        layer = self._experts.setdefault(bid, {})
        layer[source.name] = source
        if len(layer) < n_experts * 3:
            return
        for kind, gguf_name in _EXPERT_NAMES.items():
            parts = tuple(layer.pop(f"model.layers.{bid}.block_sparse_moe.experts.{x}.{kind}.weight") for x in range(n_experts))
            yield Planned(f"blk.{bid}.{gguf_name}.weight", parts, _stack)


def llama3_rope_factors(rope: dict, config: dict, dim: int) -> torch.Tensor:
    """Per-frequency divisors of Llama 3.1's rope scaling, computed in float32 exactly as llama.cpp's converter does."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor = rope.get("factor", 8.0)
    low_freq_factor = rope.get("low_freq_factor", 1.0)
    high_freq_factor = rope.get("high_freq_factor", 4.0)
    old_context_len = rope.get("original_max_position_embeddings", config.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)
