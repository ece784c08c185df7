"""Phi-3 / Phi-3.5: fused attn_qkv and gate_up (ffn_up holds both halves), NEOX rotary with longrope factors
(rope_factors_long / _short tensors, long beyond the original context) and the attention factor from metadata."""

from kamado.models.decoder import ArchSpec

ARCHS = {"phi3": ArchSpec("phi3", scale_queries=True)}
