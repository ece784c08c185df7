"""Gemma 3 (text): Gemma 2's layout plus qk-norm, five local layers (window, rope base 10000) per global one
(the model's rope base and scaling), no soft-capping."""

from kamado.models.decoder import ArchSpec

ARCHS = {
    "gemma3": ArchSpec(
        "gemma3", embed_scale=True, post_norms=True, activation="gelu", swa_pattern=6, swa_rope_base=10000.0, big_attention_scale_layers=62,
        scale_queries=True,
    )
}
