"""Gemma 3 text (llama.cpp's Gemma3Model): +1 norms, local/global rope bases, embedding rows cut to the vocabulary."""

from __future__ import annotations

from functools import cached_property

import torch

from kamado.convert import vocab
from kamado.convert.architectures.base import Architecture
from kamado.convert.architectures.gemma2 import GEMMA_LAYER_NAMES, shift_norm
from kamado.convert.checkpoint import read_json
from kamado.convert.errors import ConvertError
from kamado.convert.metadata import Metadata


class Gemma3(Architecture):
    gguf_arch = "gemma3"
    hf_architectures = ("Gemma3ForCausalLM",)
    layer_names = GEMMA_LAYER_NAMES
    skipped_tensors = ("lm_head.weight",)

    def add_parameters(self, md: Metadata, file_type: int) -> None:
        super().add_parameters(md, file_type)
        head_dim = self.config.get("head_dim", 256)
        md.u32(self.key("context_length"), self.config.get("max_position_embeddings", 131072))
        md.u32(self.key("attention.head_count"), self.config.get("num_attention_heads", 8))
        md.f32(self.key("attention.layer_norm_rms_epsilon"), self.config.get("rms_norm_eps", 1e-6))
        md.u32(self.key("attention.key_length"), head_dim)
        md.u32(self.key("attention.value_length"), head_dim)
        md.f32(self.key("rope.freq_base"), self.full_rope.get("rope_theta", 1_000_000.0))
        if self.config.get("attn_logit_softcapping") is not None:
            raise ConvertError(f"{self.model_dir / 'config.json'}: Gemma 3 has no attn_logit_softcapping, but it is set")
        if final_softcap := self.config.get("final_logit_softcapping"):
            md.f32(self.key("final_logit_softcapping"), final_softcap)
        if self.config.get("sliding_window_pattern") != 1:
            md.u32(self.key("attention.sliding_window"), self.need("sliding_window"))
        md.u32(self.key("attention.head_count_kv"), self.config.get("num_key_value_heads", 4))

    def add_vocab(self, md: Metadata) -> None:
        self.add_vocab_sentencepiece_or_bpe(md)
        if (self.model_dir / "tokenizer.model").is_file():
            md.boolean("tokenizer.ggml.add_space_prefix", False)

    @cached_property
    def n_vocab_real(self) -> int:
        if (self.model_dir / "tokenizer.model").is_file():
            return len(vocab.sentencepiece_vocab(self.model_dir, self.find("vocab_size_per_layer_input", "vocab_size"))[0])
        tokenizer = read_json(self.model_dir / "tokenizer.json")
        return len(tokenizer["model"]["vocab"]) + len(tokenizer["added_tokens"])

    def modify(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        if "embed_tokens.weight" in hf_name:  # drop rows past the real vocabulary
            tensor = tensor[: self.n_vocab_real]
        return shift_norm(hf_name, tensor)
