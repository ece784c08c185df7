"""BERT encoders for embeddings (llama.cpp's BertModel): learned positions and token types, LayerNorms with biases,
non-causal attention, pooling from a sentence-transformers Pooling module, WordPiece vocabulary in phantom-space form.

The pooler and the masked-LM / next-sentence heads are dropped (kamado computes embeddings only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import partial

from kamado.convert import vocab
from kamado.convert.architectures.base import Architecture, Planned
from kamado.convert.checkpoint import SourceTensor, read_json
from kamado.convert.errors import ConvertError
from kamado.convert.metadata import I32, STR, Metadata

BERT_GLOBAL_NAMES = {
    "embeddings.word_embeddings": "token_embd",
    "embeddings.token_type_embeddings": "token_types",
    "embeddings.position_embeddings": "position_embd",
    "embeddings.LayerNorm": "token_embd_norm",
}
BERT_LAYER_NAMES = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
# Tensors kamado does not use: the pooler (sentence embeddings pool the last hidden states instead) and the training heads.
DROPPED = re.compile(r"^(embeddings\.position_ids|pooler\..*|cls\.(predictions|seq_relationship)\..*)$")
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
# gguf's PoolingType: what sentence-transformers' Pooling config asks for.
POOLING_MODES = (("pooling_mode_mean_tokens", 1), ("pooling_mode_cls_token", 2), ("pooling_mode_lasttoken", 3))


def canonical_name(hf_name: str) -> str:
    """BertForMaskedLM's `bert.` prefix and TF-era gamma/beta LayerNorm names, as llama.cpp's filter_tensors renames them."""
    name = hf_name.removeprefix("bert.")
    if name.endswith(".gamma"):
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


def phantom_space(token: str, token_type: int) -> str:
    """llama.cpp's WPM vocabulary marks word starts with U+2581 instead of marking continuations with ##."""
    if token_type == vocab.CONTROL:
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


class Bert(Architecture):
    gguf_arch = "bert"
    hf_architectures = ("BertModel", "BertForMaskedLM")

    def add_parameters(self, md: Metadata, file_type: int) -> None:
        super().add_parameters(md, file_type)
        md.boolean(self.key("attention.causal"), False)
        if (pooling := self._pooling_type()) is not None:
            md.u32(self.key("pooling_type"), pooling)

    def _pooling_type(self) -> int | None:
        modules_file = self.model_dir / "modules.json"
        if not modules_file.is_file():
            return None
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConvertError(f"{modules_file}: not valid JSON ({e})") from None
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise ConvertError(f"{modules_file}: expected a list of sentence-transformers modules")
        path = next((m.get("path") for m in modules if m.get("type") == "sentence_transformers.models.Pooling"), None)
        if path is None:
            return None
        pooling = read_json(self.model_dir / path / "config.json")
        for key, pooling_type in POOLING_MODES:
            if pooling.get(key):
                return pooling_type
        raise ConvertError(f"{self.model_dir / path / 'config.json'}: only mean, CLS and last-token pooling are supported")

    def add_vocab(self, md: Metadata) -> None:
        if not (self.model_dir / "tokenizer.json").is_file():
            raise ConvertError(f"{self.model_dir}: no tokenizer.json (BERT's WordPiece vocabulary is read from it)")
        # llama.cpp's WPM tokenizer ignores tokenizer.ggml.pre, so a vocabulary it does not know by hash is written as "default".
        tokens, types, pre = vocab.bpe_vocab(self.model_dir, self.config.get("vocab_size"), unknown_pre="default")
        md.u32("tokenizer.ggml.token_type_count", self.config.get("type_vocab_size", 1))
        md.string("tokenizer.ggml.model", "bert")
        md.string("tokenizer.ggml.pre", pre)
        md.array("tokenizer.ggml.tokens", [phantom_space(t, k) for t, k in zip(tokens, types, strict=True)], STR)
        md.array("tokenizer.ggml.token_type", types, I32)
        vocab.add_special_vocab(md, self.model_dir, len(tokens), load_merges=False)

    def map_name(self, hf_name: str) -> str:
        base, dot, suffix = canonical_name(hf_name).rpartition(".")
        if (match := _LAYER_RE.match(base)) and (name := BERT_LAYER_NAMES.get(match.group(2))):
            return f"blk.{match.group(1)}.{name}{dot}{suffix}"
        if name := BERT_GLOBAL_NAMES.get(base):
            return f"{name}{dot}{suffix}"
        raise ConvertError(f"tensor {hf_name!r} has no GGUF name for architecture {self.gguf_arch}")

    def plan(self, source: SourceTensor, bid: int | None) -> Iterable[Planned]:
        if DROPPED.match(canonical_name(source.name)):
            return
        yield Planned(self.map_name(source.name), (source,), partial(self.modify, source.name))
