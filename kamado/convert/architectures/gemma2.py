"""Gemma 2 (llama.cpp's Gemma2Model): norms stored as weight - 1, soft-capping, sliding window, tied output."""

from __future__ import annotations

import torch

from kamado.convert import vocab
from kamado.convert.architectures.base import LAYER_NAMES, Architecture
from kamado.convert.metadata import Metadata

GEMMA_LAYER_NAMES = {
    **LAYER_NAMES,
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def shift_norm(hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    # Gemma's RMSNorm multiplies by (1 + weight); GGML's multiplies by weight.
    return tensor + 1 if hf_name.endswith("norm.weight") else tensor


class Gemma2(Architecture):
    gguf_arch = "gemma2"
    hf_architectures = ("Gemma2ForCausalLM",)
    layer_names = GEMMA_LAYER_NAMES
    skipped_tensors = ("lm_head.weight",)  # the output projection is tied to token_embd

    def add_parameters(self, md: Metadata, file_type: int) -> None:
        head_dim = self.need("head_dim")
        md.u32(self.key("context_length"), self.need("max_position_embeddings"))
        md.u32(self.key("embedding_length"), self.need("hidden_size"))
        md.u32(self.key("block_count"), self.block_count)
        md.u32(self.key("feed_forward_length"), self.need("intermediate_size"))
        md.u32(self.key("attention.head_count"), self.need("num_attention_heads"))
        md.u32(self.key("attention.head_count_kv"), self.find("num_key_value_heads", "num_attention_heads"))
        md.f32(self.key("attention.layer_norm_rms_epsilon"), self.need("rms_norm_eps"))
        md.u32(self.key("attention.key_length"), head_dim)
        md.u32(self.key("attention.value_length"), head_dim)
        md.u32("general.file_type", file_type)
        md.f32(self.key("attn_logit_softcapping"), self.need("attn_logit_softcapping"))
        md.f32(self.key("final_logit_softcapping"), self.need("final_logit_softcapping"))
        md.u32(self.key("attention.sliding_window"), self.need("sliding_window"))

    def add_vocab(self, md: Metadata) -> None:
        vocab.add_sentencepiece(md, self.model_dir, self.config.get("vocab_size"))
        md.boolean("tokenizer.ggml.add_space_prefix", False)

    def modify(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        return shift_norm(hf_name, tensor)
