"""Gemma 2: scaled embeddings, post-norms, GELU-tanh GeGLU, attention and final soft-capping (from metadata),
sliding window on every other layer (even layers local, as llama.cpp's swa pattern 2)."""

from kamado.models.decoder import ArchSpec

ARCHS = {"gemma2": ArchSpec("gemma2", embed_scale=True, post_norms=True, activation="gelu", swa_pattern=2, big_attention_scale_layers=46,
                             scale_queries=True)}
