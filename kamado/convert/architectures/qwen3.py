"""Qwen3 (llama.cpp's Qwen3Model): Qwen2's conversion plus per-head q/k RMSNorm and an explicit head_dim."""

from __future__ import annotations

from kamado.convert.architectures.qwen2 import Qwen2


class Qwen3(Qwen2):
    gguf_arch = "qwen3"
    hf_architectures = ("Qwen3ForCausalLM",)
