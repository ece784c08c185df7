"""The vocabulary as llama.cpp reads it from GGUF metadata (tokenizer.ggml.*): tokens, scores, attributes,
special ids, add_bos/add_eos/add_sep and the end-of-generation set (llama_vocab::impl::load in llama-vocab.cpp)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class TokenizerError(ValueError):
    """The tokenizer metadata is missing, malformed or of a kind we do not support; the message names it."""


class Attr:
    """llama_token_attr bit flags: what a token is (several may be set). Plain ints: 262k enum objects load slowly."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8


# tokenizer.ggml.token_type values (llama_token_type) -> attributes
_TYPE_TO_ATTR = np.array([Attr.UNDEFINED, Attr.NORMAL, Attr.UNKNOWN, Attr.CONTROL, Attr.USER_DEFINED, Attr.UNUSED, Attr.BYTE], np.int64)

# Tokens llama.cpp recognises by their text (it has no other way to know them).
_EOT_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
              "<｜end▁of▁sentence｜>", "<end_of_utterance>"}
_EOM_TEXTS = {"<|eom_id|>"}
_FIM_TEXTS = {
    "fim_pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
    "fim_rep": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
    "fim_sep": {"<|file_sep|>"},
}
_EOG_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>",
              "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
              "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~["}
_ALWAYS_RENDERED = {"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"}  # gpt-oss: llama.cpp makes them user-defined

# Per vocab type: (type name, default bos, eos, unk, sep, pad, add_bos, add_eos, add_sep, add_space_prefix, clean_spaces)
_MODEL_DEFAULTS = {
    "llama": ("spm", 1, 2, 0, None, None, True, False, False, True, False),
    "bert": ("wpm", 101, None, 100, 102, 0, True, False, True, False, True),
    "gpt2": ("bpe", 11, 11, None, None, None, False, False, False, False, True),
    "t5": ("ugm", None, 1, 2, None, 0, False, True, False, True, False),
}


@dataclass
class Vocab:
    model: str  # "spm" | "bpe" | "wpm" | "ugm"
    tokens: list[str]
    scores: np.ndarray  # float32
    attrs: list[int]  # Attr flags per token
    token_to_id: dict[str, int]
    pre: str = ""
    merges: list[str] = field(default_factory=list)
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    eom_id: int | None = None
    unk_id: int | None = None
    sep_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_sep: bool = False
    add_space_prefix: bool = False
    remove_extra_whitespaces: bool = False
    clean_spaces: bool = False
    escape_whitespaces: bool = True
    precompiled_charsmap: bytes = b""  # ugm: SentencePiece's normalisation rules
    eog_ids: frozenset[int] = frozenset()
    special_ids: list[int] = field(default_factory=list)  # control/user-defined/unknown, longest text first

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)


def _array(md: dict, key: str, n: int, dtype) -> np.ndarray | None:
    value = md.get(key)
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 1 or len(arr) < n:
        raise TokenizerError(f"{key} has {arr.size} entries, fewer than the {n} tokens")
    return arr[:n].astype(dtype)


def _bytes(md: dict, key: str, source: str) -> bytes:
    value = md.get(key)
    if value is None:
        return b""
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or (arr.size and (arr.min() < -128 or arr.max() > 255)):
        raise TokenizerError(f"{source}: {key} must be an array of bytes (int8/uint8)")
    return arr.astype(np.int64).astype(np.uint8).tobytes()


def _special_id(md: dict, key: str, default: int | None, n: int) -> int | None:
    if default is not None and default >= n:
        default = None
    value = md.get(key)
    if value is None:
        return default
    value = int(value)
    return value if 0 <= value < n else default


def load_vocab(md: dict, source: str = "GGUF metadata") -> Vocab:
    """Build the vocabulary from tokenizer.ggml.* metadata exactly as llama.cpp does; `source` names the file in errors."""
    model_name = md.get("tokenizer.ggml.model")
    if model_name is None:
        raise TokenizerError(f"{source}: no tokenizer.ggml.model (the file carries no tokenizer)")
    if model_name not in _MODEL_DEFAULTS:
        raise TokenizerError(f"{source}: unsupported tokenizer.ggml.model {model_name!r} (supported: {', '.join(_MODEL_DEFAULTS)})")
    kind, bos, eos, unk, sep, pad, add_bos, add_eos, add_sep, add_space_prefix, clean_spaces = _MODEL_DEFAULTS[model_name]

    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens[:1]):
        raise TokenizerError(f"{source}: tokenizer.ggml.tokens is missing or not a list of strings")
    n = len(tokens)
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    token_to_id = {t: i for i, t in enumerate(tokens)}
    if len(token_to_id) != n:
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise TokenizerError(f"{source}: duplicate token in vocabulary: {t!r} has ids {seen[t]} and {i}")
            seen[t] = i

    scores = _array(md, "tokenizer.ggml.scores", n, np.float32)
    scores = np.zeros(n, np.float32) if scores is None else scores
    types = _array(md, "tokenizer.ggml.token_type", n, np.int64)
    if types is None:
        attrs = [Attr.NORMAL] * n
    else:
        attrs = np.where((types >= 0) & (types < len(_TYPE_TO_ATTR)), _TYPE_TO_ATTR[np.clip(types, 0, len(_TYPE_TO_ATTR) - 1)], 0).tolist()

    pre = md.get("tokenizer.ggml.pre") or ""
    v = Vocab(model=kind, tokens=tokens, scores=scores, attrs=attrs, token_to_id=token_to_id, pre=pre)
    v.add_bos, v.add_eos, v.add_sep, v.add_space_prefix, v.clean_spaces = add_bos, add_eos, add_sep, add_space_prefix, clean_spaces
    if kind == "bpe":
        merges = md.get("tokenizer.ggml.merges")
        if not isinstance(merges, list):
            raise TokenizerError(f"{source}: BPE vocabulary without tokenizer.ggml.merges")
        v.merges = merges
        v.add_space_prefix, v.escape_whitespaces = False, False
        from kamado.tokenizer.pretokenize import pre_tokenizer_for

        spec = pre_tokenizer_for(pre or "default", source)
        v.clean_spaces = spec.clean_spaces
        v.add_bos = v.add_bos or spec.add_bos
        v.add_sep = v.add_sep or spec.add_sep
        if spec.no_bos:
            bos = None
    if kind == "ugm":
        v.precompiled_charsmap = _bytes(md, "tokenizer.ggml.precompiled_charsmap", source)
    v.add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", v.add_space_prefix))
    v.remove_extra_whitespaces = bool(md.get("tokenizer.ggml.remove_extra_whitespaces", False))

    v.bos_id = _special_id(md, "tokenizer.ggml.bos_token_id", bos, n)
    v.eos_id = _special_id(md, "tokenizer.ggml.eos_token_id", eos, n)
    v.eot_id = _special_id(md, "tokenizer.ggml.eot_token_id", None, n)
    v.eom_id = _special_id(md, "tokenizer.ggml.eom_token_id", None, n)
    v.unk_id = _special_id(md, "tokenizer.ggml.unknown_token_id", unk, n)
    v.sep_id = _special_id(md, "tokenizer.ggml.seperator_token_id", sep, n)
    v.pad_id = _special_id(md, "tokenizer.ggml.padding_token_id", pad, n)
    fim = {name: _special_id(md, f"tokenizer.ggml.{name}_token_id", None, n) for name in _FIM_TEXTS}
    for key, attr in (("add_bos_token", "add_bos"), ("add_eos_token", "add_eos"), ("add_sep_token", "add_sep")):
        if f"tokenizer.ggml.{key}" in md:
            setattr(v, attr, bool(md[f"tokenizer.ggml.{key}"]))
    for flag, tok, key in ((v.add_bos, v.bos_id, "bos"), (v.add_eos, v.eos_id, "eos"), (v.add_sep, v.sep_id, "seperator")):
        if flag and tok is None:
            raise TokenizerError(f"{source}: tokenizer.ggml.add_{key[:3]}_token is true, but tokenizer.ggml.{key}_token_id is not set")

    _detect_special_tokens(v, fim)
    _apply_model_attrs(v, md)
    special = np.nonzero(np.asarray(v.attrs) & (Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN))[0].tolist()
    v.special_ids = sorted(special, key=lambda i: -len(tokens[i].encode()))
    return v


def _detect_special_tokens(v: Vocab, fim: dict[str, int | None]) -> None:
    """llama.cpp finds EOT/EOM/FIM and end-of-generation tokens by their text and forces them to be control tokens."""
    attrs = v.attrs
    for text in sorted(_EOT_TEXTS | _EOM_TEXTS | _EOG_TEXTS | set().union(*_FIM_TEXTS.values()) | _ALWAYS_RENDERED):
        i = v.token_to_id.get(text)
        if i is None:
            continue
        if v.eot_id is None and text in _EOT_TEXTS:
            v.eot_id = i
            attrs[i] |= Attr.CONTROL
        if v.eom_id is None and text in _EOM_TEXTS:
            v.eom_id = i
            attrs[i] |= Attr.CONTROL
        for name, texts in _FIM_TEXTS.items():
            if fim[name] is None and text in texts:
                fim[name] = i
                attrs[i] |= Attr.CONTROL
    for i in np.nonzero(np.asarray(attrs) & Attr.CONTROL)[0].tolist():
        if "unused" in v.tokens[i]:
            attrs[i] |= Attr.UNUSED
    eog = {i for i in fim.values() if i is not None}
    for text in _EOG_TEXTS:
        i = v.token_to_id.get(text)
        if i is not None:
            eog.add(i)
            attrs[i] |= Attr.CONTROL
    for text in _ALWAYS_RENDERED:
        i = v.token_to_id.get(text)
        if i is not None:
            attrs[i] = Attr.USER_DEFINED
    eog |= {i for i in (v.eos_id, v.eot_id, v.eom_id) if i is not None}
    texts = {v.tokens[i]: i for i in eog}
    # o200k_harmony / solar-open: "<|end|>" ends a message, not the generation
    if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts) or ({"<|calls|>", "<|flush|>"} <= texts.keys())):
        eog.discard(texts["<|end|>"])
        attrs[texts["<|end|>"]] = Attr.USER_DEFINED
    if "<|tool_response>" in texts and "</s>" in texts:  # gemma4: </s> is an ordinary token there
        eog.discard(texts["</s>"])
        attrs[texts["</s>"]] = Attr.NORMAL
    v.eog_ids = frozenset(eog)


def _apply_model_attrs(v: Vocab, md: dict) -> None:
    """Per-model strip attributes that llama.cpp sets by model name (they are not stored in GGUF)."""
    name = str(md.get("general.name", "")).lower()
    arch = str(md.get("general.architecture", ""))
    if any(s in v.pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
        if "<mask>" in v.token_to_id:
            v.attrs[v.token_to_id["<mask>"]] |= Attr.LSTRIP
    elif "phi-3" in name or "phi3" in name:
        for i in np.nonzero(np.asarray(v.attrs) & (Attr.CONTROL | Attr.USER_DEFINED | Attr.UNKNOWN))[0].tolist():
            v.attrs[i] |= Attr.RSTRIP
        for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
            if text in v.token_to_id:
                i = v.token_to_id[text]
                v.attrs[i] = v.attrs[i] | Attr.RSTRIP if on else v.attrs[i] & ~Attr.RSTRIP
    elif "modern-bert" in name and "[MASK]" in v.token_to_id:
        v.attrs[v.token_to_id["[MASK]"]] |= Attr.LSTRIP
