"""Qwen2 / Qwen2.5: Llama layout with biases on Q/K/V and NEOX rotary pairs (biases are found by name)."""

from kamado.models.decoder import ArchSpec

ARCHS = {"qwen2": ArchSpec("qwen2")}
