"""Qwen3: Llama layout with per-head RMSNorm on queries and keys (attn_q_norm / attn_k_norm), NEOX rotary."""

from kamado.models.decoder import ArchSpec

ARCHS = {"qwen3": ArchSpec("qwen3")}
