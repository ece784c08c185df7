"""Llama 1/2/3 (rope scaling linear/llama3/yarn), Mistral and Mixtral MoE: GGUF architecture `llama`.

llama.cpp's converter writes Mistral and Mixtral checkpoints as `llama` too (there is no `mistral` GGUF
architecture; `mistral3` is a different model). The converter permutes Q/K for GPT-J style ("normal")
rotary pairs; Llama 3.1's rope scaling arrives as a `rope_freqs` tensor; Mixtral's experts arrive as
`ffn_*_exps` tensors with `llama.expert_count`.
"""

from kamado.models.decoder import ArchSpec

ARCHS = {"llama": ArchSpec("llama", rope_neox=False)}
