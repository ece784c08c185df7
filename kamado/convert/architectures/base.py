"""What every architecture shares: llama.cpp's TextModel defaults for metadata, tensor names and tensor planning.

An architecture module subclasses `Architecture`, names the Hugging Face classes it serves, and overrides
only what its llama.cpp model class changes: the tensor-name table, metadata, vocabulary and weight transforms.
Transforms are plain torch functions; the converter first runs them on data-less "meta" tensors to learn the
output shapes (the GGUF header comes before the data), then on the real tensors while writing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from kamado.convert import vocab
from kamado.convert.checkpoint import SourceTensor
from kamado.convert.errors import ConvertError
from kamado.convert.metadata import Metadata

GLOBAL_NAMES = {"model.embed_tokens": "token_embd", "lm_head": "output", "model.norm": "output_norm"}
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
# Buffers some checkpoints carry that llama.cpp recomputes itself.
UNUSED_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Planned:
    """One GGUF tensor: its name, the checkpoint tensors it is made from, and the torch function making it."""

    name: str
    inputs: tuple[SourceTensor, ...]
    compute: Callable[..., torch.Tensor]


class Architecture:
    gguf_arch: str
    hf_architectures: tuple[str, ...]
    layer_names: dict[str, str] = LAYER_NAMES
    skipped_tensors: tuple[str, ...] = ()

    def __init__(self, model_dir: Path, config: dict):
        self.model_dir = model_dir
        self.config = {**config, **config["text_config"]} if isinstance(config.get("text_config"), dict) else config
        self.block_count = self.need("num_hidden_layers", "n_layers", "n_layer", "num_layers")
        self.rope = self._rope_parameters()

    # -- config access -------------------------------------------------------------------------------------------
    def find(self, *keys: str, default=None):
        return next((self.config[k] for k in keys if k in self.config), default)

    def need(self, *keys: str):
        value = self.find(*keys)
        if value is None:
            raise ConvertError(f"{self.model_dir / 'config.json'}: missing {' / '.join(keys)}")
        return value

    def _rope_parameters(self) -> dict:
        rope = dict(self.config.get("rope_parameters") or self.config.get("rope_scaling") or {})
        if "full_attention" in rope or "sliding_attention" in rope:
            return rope
        theta = self.find("global_rope_theta", "rope_global_theta", "rope_theta_global", "rope_theta", "rotary_emb_base")
        local = self.find("local_rope_theta", "rope_local_theta", "rope_theta_local", "swa_rope_theta", "rope_local_base_freq")
        if local is not None:
            rope["sliding_attention"] = {"rope_theta": local}
        if "rope_theta" not in rope and theta is not None:
            rope["rope_theta"] = theta
        if "rope_type" not in rope and rope.get("type") is not None:
            rope["rope_type"] = rope["type"]
        return rope

    @property
    def full_rope(self) -> dict:
        return self.rope.get("full_attention", self.rope)

    def key(self, suffix: str) -> str:
        return f"{self.gguf_arch}.{suffix}"

    # -- metadata -----------------------------------------------------------------------------------------------
    def add_parameters(self, md: Metadata, file_type: int) -> None:
        """llama.cpp's TextModel.set_gguf_parameters: the hyperparameters most architectures share, in its order."""
        md.u32(self.key("block_count"), self.block_count)
        for suffix, keys in (("context_length", ("max_position_embeddings", "n_ctx", "n_positions", "max_length")),
                             ("embedding_length", ("hidden_size", "n_embd", "dim")),
                             ("feed_forward_length", ("intermediate_size", "n_inner", "hidden_dim")),
                             ("attention.head_count", ("num_attention_heads", "n_head", "n_heads")),
                             ("attention.head_count_kv", ("num_key_value_heads", "n_kv_heads"))):
            if (value := self.find(*keys)) is not None:
                md.u32(self.key(suffix), value)
        self._add_rope_scaling(md)
        if (theta := self.full_rope.get("rope_theta")) is not None:
            md.f32(self.key("rope.freq_base"), theta)
        if (local_theta := self.rope.get("sliding_attention", {}).get("rope_theta")) is not None:
            md.f32(self.key("rope.freq_base_swa"), local_theta)
        if (eps := self.find("rms_norm_eps", "norm_eps")) is not None:
            md.f32(self.key("attention.layer_norm_rms_epsilon"), eps)
        if (eps := self.find("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon")) is not None:
            md.f32(self.key("attention.layer_norm_epsilon"), eps)
        if (experts := self.find("num_local_experts", "num_experts")) is not None:
            md.u32(self.key("expert_count"), experts)
        if (used := self.find("num_experts_per_tok", "num_experts_per_token", "top_k_experts")) is not None:
            md.u32(self.key("expert_used_count"), used)
        if (head_dim := self.config.get("head_dim")) is not None:
            md.u32(self.key("attention.key_length"), head_dim)
            md.u32(self.key("attention.value_length"), head_dim)
        md.u32("general.file_type", file_type)

    def _add_rope_scaling(self, md: Metadata) -> None:
        rope = self.full_rope
        rope_type, factor = rope.get("rope_type"), rope.get("factor")
        if rope_type in ("linear", "yarn") and factor is not None:
            md.string(self.key("rope.scaling.type"), rope_type)
            md.f32(self.key("rope.scaling.factor"), factor)
            if rope_type == "yarn":
                md.u32(self.key("rope.scaling.original_context_length"), rope["original_max_position_embeddings"])
                for source, suffix in (("extrapolation_factor", "yarn_ext_factor"), ("attention_factor", "yarn_attn_factor"),
                                       ("beta_fast", "yarn_beta_fast"), ("beta_slow", "yarn_beta_slow")):
                    if rope.get(source) is not None:
                        md.f32(self.key(f"rope.scaling.{suffix}"), rope[source])
        elif rope_type in ("su", "longrope"):
            md.string(self.key("rope.scaling.type"), "longrope")

    def add_vocab(self, md: Metadata) -> None:
        """Default tokenizer export: byte-level BPE from tokenizer.json (TextModel._set_vocab_gpt2)."""
        vocab.add_bpe(md, self.model_dir, self.config.get("vocab_size"))

    def add_vocab_sentencepiece_or_bpe(self, md: Metadata) -> None:
        if (self.model_dir / "tokenizer.model").is_file():
            vocab.add_sentencepiece(md, self.model_dir, self.find("vocab_size_per_layer_input", "vocab_size"))
        elif (self.model_dir / "tokenizer.json").is_file():
            vocab.add_bpe(md, self.model_dir, self.config.get("vocab_size"))
        else:
            raise ConvertError(f"{self.model_dir}: no tokenizer (expected tokenizer.model or tokenizer.json)")

    # -- tensors ------------------------------------------------------------------------------------------------
    def extra_tensors(self, md: Metadata) -> Iterable[Planned]:
        """Tensors llama.cpp computes from the config (e.g. rope_freqs); written before the checkpoint's own."""
        return ()

    def map_name(self, hf_name: str) -> str:
        base, dot, suffix = hf_name.rpartition(".")
        if suffix not in ("weight", "bias"):
            base, dot, suffix = hf_name, "", ""
        if (match := _LAYER_RE.match(base)) and (name := self.layer_names.get(match.group(2))):
            return f"blk.{match.group(1)}.{name}{dot}{suffix}"
        if name := GLOBAL_NAMES.get(base):
            return f"{name}{dot}{suffix}"
        raise ConvertError(f"tensor {hf_name!r} has no GGUF name for architecture {self.gguf_arch}")

    def modify(self, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Per-tensor weight transform; identity unless the architecture needs one."""
        return tensor

    def plan(self, source: SourceTensor, bid: int | None) -> Iterable[Planned]:
        yield Planned(self.map_name(source.name), (source,), partial(self.modify, source.name))

    def plan_all(self, sources: list[SourceTensor], md: Metadata) -> list[Planned]:
        planned = list(self.extra_tensors(md))
        for source in sources:
            if source.name in self.skipped_tensors or source.name.endswith(UNUSED_SUFFIXES):
                continue
            bid = next((int(p) for p in source.name.split(".") if p.isdecimal()), None)
            planned.extend(self.plan(source, bid))
        return planned
