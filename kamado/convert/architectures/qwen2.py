"""Qwen2 / Qwen2.5 (llama.cpp's Qwen2Model): the shared decoder layout with q/k/v biases; byte-level BPE vocabulary."""

from __future__ import annotations

from kamado.convert.architectures.base import Architecture
from kamado.convert.metadata import Metadata


class Qwen2(Architecture):
    gguf_arch = "qwen2"
    hf_architectures = ("Qwen2ForCausalLM",)

    def add_vocab(self, md: Metadata) -> None:
        self.add_vocab_sentencepiece_or_bpe(md)
