"""Tokenizer export: SentencePiece (tokenizer.model) and byte-level BPE (tokenizer.json) vocabularies,
special tokens, add_bos/add_eos and the chat template, written as llama.cpp's converter writes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kamado.convert.checkpoint import read_json, read_optional_json
from kamado.convert.errors import ConvertError
from kamado.convert.metadata import F32, I32, STR, Metadata

# Token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp identifies a BPE pre-tokenizer by hashing how the tokenizer splits this text (convert_hf_to_gguf.py).
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 "
    "333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)
# sha256 of str(token ids of CHECK_TEXT) -> tokenizer.ggml.pre, for the seed model families (values from llama.cpp).
PRE_TOKENIZER_BY_HASH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3 / 3.1 / 3.2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5 / Qwen3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "bert-bge",  # BAAI/bge-small-en-v1.5 (WordPiece)
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",  # BAAI/bge-large-zh-v1.5 (WordPiece)
}

SPECIAL_TOKEN_KEYS = {  # special-token kind -> GGUF key
    "bos": "tokenizer.ggml.bos_token_id", "eos": "tokenizer.ggml.eos_token_id", "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id", "pad": "tokenizer.ggml.padding_token_id", "cls": "tokenizer.ggml.cls_token_id",
    "mask": "tokenizer.ggml.mask_token_id", "eot": "tokenizer.ggml.eot_token_id", "eom": "tokenizer.ggml.eom_token_id",
}
ADD_TOKEN_KEYS = {"bos": "tokenizer.ggml.add_bos_token", "eos": "tokenizer.ggml.add_eos_token", "sep": "tokenizer.ggml.add_sep_token"}
_SPECIAL_KINDS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def looks_special(token: str) -> bool:
    """Added tokens some models forget to flag as special (llama.cpp's does_token_look_special)."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def sentencepiece_vocab(model_dir: Path, vocab_size: int | None, phi3_rules: bool = False) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types from tokenizer.model, padded to the config's vocab size, with added tokens applied.

    phi3_rules: Phi-3's converter also reads tokenizer.json's added tokens and does not guess special-looking tokens.
    """
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{path}: not a SentencePiece model ({e})") from None
    n = vocab_size or processor.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, processor.vocab_size())):
        tokens[i] = processor.IdToPiece(i)
        scores[i] = processor.GetScore(i)
        types[i] = (UNKNOWN if processor.IsUnknown(i) else CONTROL if processor.IsControl(i)
                    else UNUSED if processor.IsUnused(i) else BYTE if processor.IsByte(i) else NORMAL)

    added = read_optional_json(model_dir / "added_tokens.json") or {}
    for text, i in added.items():
        if isinstance(i, int) and i < n:
            tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED

    decoder = (read_optional_json(model_dir / "tokenizer_config.json") or {}).get("added_tokens_decoder", {})
    entries = [(int(i), d) for i, d in decoder.items()]
    if phi3_rules:
        entries += [(int(d["id"]), d) for d in (read_optional_json(model_dir / "tokenizer.json") or {}).get("added_tokens", [])]
    for i, data in entries:
        if i >= n:
            continue
        text = data["content"]
        if phi3_rules:
            types[i] = CONTROL if data.get("special") else USER_DEFINED
        elif data.get("special") or looks_special(text):
            types[i] = CONTROL
        else:
            text = text.replace("\u2581", " ")  # llama.cpp expects user-defined tokens pre-normalized
            types[i] = USER_DEFINED
        tokens[i], scores[i] = text, -1000.0
    return tokens, scores, types


def pre_tokenizer_name(tokenizer, unknown: str | None = None) -> str:
    """The llama.cpp name of the tokenizer's pre-tokenizer; `unknown` (if given) for a hash llama.cpp does not list."""
    ids = tokenizer.encode(CHECK_TEXT, add_special_tokens=True).ids
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    name = PRE_TOKENIZER_BY_HASH.get(digest, unknown)
    if name is None:
        known = ", ".join(sorted(set(PRE_TOKENIZER_BY_HASH.values())))
        raise ConvertError(f"unrecognised BPE pre-tokenizer (chkhsh {digest}); known: {known}")
    return name


def bpe_vocab(model_dir: Path, vocab_size: int | None, unknown_pre: str | None = None) -> tuple[list[str], list[int], str]:
    """Tokens, types and pre-tokenizer name from tokenizer.json (llama.cpp's get_vocab_base); an unrecognised
    pre-tokenizer is an error unless `unknown_pre` names what to write instead."""
    from tokenizers import Tokenizer

    path = model_dir / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library reports every parse problem as a generic Exception
        raise ConvertError(f"{path}: cannot load ({e})") from None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    n = vocab_size or len(vocab)
    if max(vocab.values()) >= n:
        raise ConvertError(f"{path}: token id {max(vocab.values())} does not fit vocab_size {n} of config.json")
    pre = pre_tokenizer_name(tokenizer, unknown_pre)
    added = {t.content: t for t in tokenizer.get_added_tokens_decoder().values()}
    reverse = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        if token in added:
            info = added[token]
            if not info.normalized:  # llama.cpp stores added tokens pre-normalized
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            types.append(CONTROL if info.special or looks_special(token) else USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return tokens, types, pre


def bpe_merges(tokenizer_json: dict) -> list[str]:
    merges = tokenizer_json.get("model", {}).get("merges") or []
    if merges and isinstance(merges[0], list):  # transformers >= 4.45 stores pairs; spaces inside are shifted by 256
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair) for pair in merges]
    return list(merges)


def add_special_vocab(md: Metadata, model_dir: Path, n_vocab: int | None, load_merges: bool) -> None:
    """Merges, special-token ids, add_bos/add_eos and the chat template (gguf-py's SpecialVocab)."""
    tokenizer_json = read_optional_json(model_dir / "tokenizer.json")
    config = read_optional_json(model_dir / "tokenizer_config.json")
    ids: dict[str, int] = {}
    add: dict[str, bool] = {}

    def set_id(kind: str, token_id) -> None:
        in_range = isinstance(token_id, int) and not isinstance(token_id, bool) and (n_vocab is None or 0 <= token_id < n_vocab)
        if in_range and kind not in ids:
            ids[kind] = token_id

    merges = bpe_merges(tokenizer_json) if (load_merges and tokenizer_json) else []
    if load_merges and not merges and (model_dir / "merges.txt").is_file():
        lines = (model_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [" ".join(parts) for line in lines if not line.startswith("#") and len(parts := line.split()) == 2]
    added_tokens = (tokenizer_json or {}).get("added_tokens", [])
    if tokenizer_json and config is not None:
        config = _cls_sep_as_bos_eos(config)
        _read_template_processing(tokenizer_json, config, add)
    if config is not None:
        for kind in _SPECIAL_KINDS:
            if isinstance(config.get(f"add_{kind}_token"), bool):
                add[kind] = config[f"add_{kind}_token"]
            entry = config.get(f"{kind}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                set_id(kind, next((t.get("id") for t in added_tokens if t.get("content") == content), None))
    model_config = read_optional_json(model_dir / "config.json") or {}
    for kind in _SPECIAL_KINDS:
        set_id(kind, model_config.get(f"{kind}_token_id", (model_config.get("text_config") or {}).get(f"{kind}_token_id")))

    if merges:
        md.array("tokenizer.ggml.merges", merges, STR)
    for kind, token_id in ids.items():
        md.u32(SPECIAL_TOKEN_KEYS[kind], token_id)
    for kind, value in add.items():
        if kind in ADD_TOKEN_KEYS:
            md.boolean(ADD_TOKEN_KEYS[kind], value)
    template = chat_template(model_dir, config)
    if template is not None:
        md.string("tokenizer.chat_template", template)


def _cls_sep_as_bos_eos(config: dict) -> dict:
    """gguf-py's SpecialVocab: a tokenizer without BOS/EOS tokens (BERT) uses its CLS/SEP tokens as BOS/EOS."""
    config = dict(config)
    if not config.get("bos_token") and config.get("cls_token"):
        config["bos_token"] = config["cls_token"]
    if not config.get("eos_token") and config.get("sep_token"):
        config["eos_token"] = config["sep_token"]
    return config


def _content(entry) -> str | None:
    return entry if isinstance(entry, str) else (entry or {}).get("content")


def _special_id_of(item: dict) -> str | None:
    return item.get("SpecialToken", {}).get("id")


def _read_template_processing(tokenizer_json: dict, config: dict, add: dict[str, bool]) -> None:
    # The common cases of gguf-py's TemplateProcessing parsing: a leading BOS / trailing EOS in the single template,
    # and a separator between A and B in the pair template (BERT's "[CLS] A [SEP] B [SEP]" adds none).
    post = tokenizer_json.get("post_processor") or {}
    bos, eos, sep = _content(config.get("bos_token")), _content(config.get("eos_token")), _content(config.get("sep_token"))
    for processor in post.get("processors", [post]):
        if processor.get("type") != "TemplateProcessing":
            continue
        single = processor.get("single", [])
        first = last = None
        if len(single) > 1:
            first, last = _special_id_of(single[0]), _special_id_of(single[-1])
            if first:
                add["bos"] = first in (bos, config.get("cls_token"))
            if last:
                add["eos"] = last == eos
        pair = processor.get("pair", [])
        start = 1 if first and pair and _special_id_of(pair[0]) == first else 0
        stop = -1 if last and pair and _special_id_of(pair[-1]) == last else None
        pair = pair[start:stop]
        if pair and pair[0].get("Sequence", {}).get("id") == "A" and pair[-1].get("Sequence", {}).get("id") == "B" and pair[1:-1]:
            middle = [_special_id_of(item) for item in pair[1:-1]]
            add["sep"] = (bool(middle[0]) and middle[0] in (sep, eos) and not last) or (len(middle) == 2 and bool(middle[1])
                                                                                        and middle[1] in (sep, eos))


def chat_template(model_dir: Path, config: dict | None) -> str | None:
    if config is None:
        return None
    fallback = None
    if (model_dir / "chat_template.jinja").is_file():
        fallback = (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    elif (model_dir / "chat_template.json").is_file():
        fallback = read_json(model_dir / "chat_template.json").get("chat_template")
    template = config.get("chat_template", fallback)
    if isinstance(template, list):  # named templates: keep the default one, as llama.cpp reads it first
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def add_sentencepiece(md: Metadata, model_dir: Path, vocab_size: int | None, phi3_rules: bool = False) -> int:
    """Write a SentencePiece vocabulary; returns its size."""
    tokens, scores, types = sentencepiece_vocab(model_dir, vocab_size, phi3_rules)
    md.string("tokenizer.ggml.model", "llama")
    md.string("tokenizer.ggml.pre", "default")
    md.array("tokenizer.ggml.tokens", tokens, STR)
    md.array("tokenizer.ggml.scores", scores, F32)
    md.array("tokenizer.ggml.token_type", types, I32)
    add_special_vocab(md, model_dir, len(tokens), load_merges=False)
    return len(tokens)


def add_bpe(md: Metadata, model_dir: Path, vocab_size: int | None) -> int:
    """Write a byte-level BPE vocabulary (tokenizer.ggml.model = gpt2); returns its size."""
    tokens, types, pre = bpe_vocab(model_dir, vocab_size)
    md.string("tokenizer.ggml.model", "gpt2")
    md.string("tokenizer.ggml.pre", pre)
    md.array("tokenizer.ggml.tokens", tokens, STR)
    md.array("tokenizer.ggml.token_type", types, I32)
    add_special_vocab(md, model_dir, None, load_merges=True)
    return len(tokens)

