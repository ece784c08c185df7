"""Llama 1/2/3 (rope scaling linear/llama3/yarn), Mistral and Mixtral MoE: GGUF architecture `llama`.

The converter permutes Q/K for GPT-J style ("normal") rotary pairs; Mixtral's experts arrive as
`ffn_*_exps` tensors with `llama.expert_count`.
"""

from kamado.models.decoder import ArchSpec

ARCHS = {"llama": ArchSpec("llama", rope_neox=False), "mistral": ArchSpec("mistral", rope_neox=False)}
