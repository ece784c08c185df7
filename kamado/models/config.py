"""Hyper-parameters of a decoder model, read from GGUF metadata (`{arch}.*` keys) as llama.cpp reads them.

Like llama.cpp's common loader, the supported architectures take YaRN's beta_fast/beta_slow as 32/1 and its
attention factor as 0.1*ln(factor)+1 whatever rope.scaling.yarn_* keys the file holds (llama.cpp reads those
only for a few other architectures), so a file gives the same logits here as in llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


class ModelError(ValueError):
    """A model file kamado cannot run (unknown architecture, missing tensor or metadata)."""


@dataclass
class ModelConfig:
    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    head_dim_v: int
    n_ff: int
    eps: float
    n_ctx_train: int
    rope_base: float
    rope_dims: int
    rope_base_swa: float = 0.0  # sliding-window layers' own rope base (Gemma 3), 0 = the architecture's default
    rope_scaling: str = "none"
    rope_scale_factor: float = 1.0
    rope_orig_ctx: int = 0
    rope_attn_factor: float = 1.0
    sliding_window: int = 0
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    n_expert: int = 0
    n_expert_used: int = 0
    pooling: str = "none"
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, meta: dict, n_vocab: int) -> ModelConfig:
        arch = meta.get("general.architecture")

        def get(key, default=None, required=False):
            value = meta.get(f"{arch}.{key}", default)
            if required and value is None:
                raise ModelError(f"{arch} model: metadata key {arch}.{key} is missing")
            if isinstance(value, list):
                if len(set(value)) != 1:
                    raise ModelError(f"{arch} model: per-layer {arch}.{key} values are not supported")
                value = value[0]
            return value

        n_embd = int(get("embedding_length", required=True))
        n_head = int(get("attention.head_count", required=True))
        head_dim = int(get("attention.key_length", n_embd // n_head))
        return cls(
            arch=arch,
            n_vocab=int(get("vocab_size", n_vocab)),
            n_embd=n_embd,
            n_layer=int(get("block_count", required=True)),
            n_head=n_head,
            n_head_kv=int(get("attention.head_count_kv", n_head)),
            head_dim=head_dim,
            head_dim_v=int(get("attention.value_length", head_dim)),
            n_ff=int(get("feed_forward_length", 0)),
            eps=float(get("attention.layer_norm_rms_epsilon", get("attention.layer_norm_epsilon", 1e-5))),  # RMS or LayerNorm (BERT)
            n_ctx_train=int(get("context_length", 2048)),
            rope_base=float(get("rope.freq_base", 10000.0)),
            rope_dims=int(get("rope.dimension_count", head_dim)),
            rope_base_swa=float(get("rope.freq_base_swa", 0.0) or 0.0),
            rope_scaling=str(get("rope.scaling.type", "none")),
            rope_scale_factor=float(get("rope.scaling.factor", 1.0) or 1.0),
            rope_orig_ctx=int(get("rope.scaling.original_context_length", 0) or 0),
            rope_attn_factor=float(get("rope.scaling.attn_factor", 1.0) or 1.0),
            sliding_window=int(get("attention.sliding_window", 0) or 0),
            attn_softcap=float(get("attn_logit_softcapping", 0.0) or 0.0),
            final_softcap=float(get("final_logit_softcapping", 0.0) or 0.0),
            n_expert=int(get("expert_count", 0) or 0),
            n_expert_used=int(get("expert_used_count", 0) or 0),
            pooling=POOLING.get(int(get("pooling_type", 0) or 0), "none"),
        )
