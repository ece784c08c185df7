"""Phi-3 / Phi-3.5 (llama.cpp's Phi3MiniModel): fused qkv and gate_up kept whole, LongRoPE factor tensors."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch

from kamado.convert import vocab
from kamado.convert.architectures.base import LAYER_NAMES, Architecture, Planned
from kamado.convert.checkpoint import read_optional_json
from kamado.convert.errors import ConvertError
from kamado.convert.metadata import Metadata

# gate_up_proj stays fused: llama.cpp's phi3 graph splits ffn_up into gate and up itself.
PHI3_LAYER_NAMES = {**LAYER_NAMES, "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}


def _constant(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


class Phi3(Architecture):
    gguf_arch = "phi3"
    hf_architectures = ("Phi3ForCausalLM",)
    layer_names = PHI3_LAYER_NAMES

    def _rope_dims(self) -> int:
        n_embd, n_head = self.need("hidden_size", "n_embd"), self.need("num_attention_heads", "n_head")
        return int(self.rope.get("partial_rotary_factor", 1.0) * n_embd) // n_head

    def _original_context(self) -> int:
        value = self.rope.get("original_max_position_embeddings", self.config.get("original_max_position_embeddings"))
        if value is None:
            raise ConvertError(f"{self.model_dir / 'config.json'}: missing original_max_position_embeddings")
        return value

    def add_parameters(self, md: Metadata, file_type: int) -> None:
        md.u32(self.key("context_length"), self.need("n_positions", "max_position_embeddings"))
        md.u32(self.key("rope.scaling.original_context_length"), self._original_context())
        md.u32(self.key("embedding_length"), self.need("hidden_size", "n_embd"))
        md.u32(self.key("feed_forward_length"), self.need("intermediate_size"))
        md.u32(self.key("block_count"), self.block_count)
        md.u32(self.key("attention.head_count"), self.need("num_attention_heads", "n_head"))
        md.u32(self.key("attention.head_count_kv"), self.need("num_key_value_heads", "n_head_kv"))
        md.f32(self.key("attention.layer_norm_rms_epsilon"), self.need("rms_norm_eps"))
        md.u32(self.key("rope.dimension_count"), self._rope_dims())
        md.f32(self.key("rope.freq_base"), self.full_rope["rope_theta"])
        md.u32("general.file_type", file_type)
        # sliding_window 0 tells Phi-3 apart from Phi-4 in llama.cpp
        md.u32(self.key("attention.sliding_window"), self.config.get("sliding_window") or 0)

    def add_vocab(self, md: Metadata) -> None:
        tokenizer_config = read_optional_json(self.model_dir / "tokenizer_config.json") or {}
        if tokenizer_config.get("tokenizer_class") == "GPT2Tokenizer":  # Phi-4
            vocab.add_bpe(md, self.model_dir, self.config.get("vocab_size"))
            return
        if not (self.model_dir / "tokenizer.model").is_file():
            raise ConvertError(f"{self.model_dir / 'tokenizer.model'}: file not found")
        vocab.add_sentencepiece(md, self.model_dir, self.config.get("vocab_size"), phi3_rules=True)

    def extra_tensors(self, md: Metadata) -> Iterable[Planned]:
        long_factors, short_factors = self.rope.get("long_factor"), self.rope.get("short_factor")
        if not long_factors:
            return
        original = self._original_context()
        scale = self.need("n_positions", "max_position_embeddings") / original
        rope_type = self.rope.get("rope_type", "").lower()
        if rope_type in ("su", "longrope"):
            attn_factor = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0
        elif rope_type == "yarn":
            attn_factor = 0.1 * math.log(scale) + 1.0 if scale > 1.0 else 1.0
        else:
            raise ConvertError(f"{self.model_dir / 'config.json'}: rope scaling type {rope_type!r} is not supported for Phi-3")
        md.f32(self.key("rope.scaling.attn_factor"), attn_factor)
        if not short_factors or len(long_factors) != len(short_factors) or len(long_factors) != self._rope_dims() / 2:
            expected = self._rope_dims() // 2
            raise ConvertError(f"{self.model_dir / 'config.json'}: long_factor/short_factor must both have {expected} entries")
        yield Planned("rope_factors_long.weight", (), partial(_constant, long_factors))
        yield Planned("rope_factors_short.weight", (), partial(_constant, short_factors))
