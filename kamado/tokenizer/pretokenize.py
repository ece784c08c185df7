"""BPE pre-tokenizers: tokenizer.ggml.pre -> the regular expressions llama.cpp splits text with (llm_tokenizer_bpe in
llama-vocab.cpp) and the flags it sets for that name. Each expression in a list further splits the pieces the previous
ones produced; matches and the text between them both become pieces ("isolated" splitting)."""

from __future__ import annotations

from dataclasses import dataclass

from kamado.tokenizer.vocab import TokenizerError

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_CJK = "[一-龥ࠀ-一가-퟿]+"
_UPPER_LOWER = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + "{c}"
                + r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + "{c}")
_DEEPSEEK3 = [
    r"\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^" + "\r\n" + r"\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[" + "\r\n"
    + r"]*|\s*[" + "\r\n" + r"]+|\s+(?!\S)|\s+",
]
# Cased letters, written as code points: several of them (U+1F7D, U+1FBE, U+2126, U+212A ...) would be changed by
# Unicode normalisation if written literally, silently altering the ranges.
_DEEPSEEK_LLM_LETTERS = (
    r"[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}"
    r"\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}"
    r"\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}"
    r"\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}"
    r"\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}"
    r"\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}"
    r"\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}"
    r"\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}"
    r"\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}"
    r"\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}"
    r"\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+"
)

# regex lists by llama.cpp pre-tokenizer type
_REGEXES = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
    "llama3": [_LLAMA3],
    "jais2": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)"
              r"|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"],
    "deepseek-llm": ["[\r\n]", r"\s?" + _DEEPSEEK_LLM_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", _CJK, r"\p{N}+"],
    "deepseek-v3": _DEEPSEEK3,
    "spark2_5": [r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+",
                 r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^" + "\r\n" + r"\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|["
                 + "\r\n" + r"]|\s+(?!\S)|\s+", r"\p{N}"],
    "youtu": ["[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+",
              r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS
              + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
              + r"?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "deepseek-coder": ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"],
    "starcoder": [r"\p{N}", _GPT2],
    "gpt2": [_GPT2],
    "qwen2": [_QWEN2],
    "qwen35": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "poro": [r" ?[^(\s|.,!?…。，、।۔،)]+"],
    "chatglm4": [_LLAMA3],
    "viking": [r" ?[^(\s|.,!?…。，、।۔،)]+", r"\p{N}"],
    "tekken": [_UPPER_LOWER.replace("{c}", "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "chameleon": ["<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", r"\p{N}",
                  r"[\p{P}!-/:-@\[-`{-~]", _GPT2],
    "gpt4o": [_UPPER_LOWER.replace("{c}", _CONTRACTIONS + "?") + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "granite-emb-multi": [_UPPER_LOWER.replace(r"[\p{L}]", r"[\p{L}\p{M}]").replace("{c}", _CONTRACTIONS + "?")
                          + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "tiny-aya": [r"\d{1,3}(?=(?:\d{3})*\b)",
                 r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS
                 + r"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS
                 + r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "superbpe": [r"\p{N}+", r"(?=(\d{3})+(?!\d))"],
    "bailingmoe": [r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"],
    "seed-coder": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "ufakzeka": [r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "laguna": [r"[^\n]+|[\n]+", _QWEN2],
    "exaone-moe": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"],
    "minicpm5": [r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}


@dataclass(frozen=True)
class PreTokenizer:
    name: str  # the tokenizer.ggml.pre value
    regexes: tuple[str, ...]
    clean_spaces: bool = True
    ignore_merges: bool = False
    add_bos: bool = False
    add_sep: bool = False
    no_bos: bool = False  # chatglm: llama.cpp clears the BOS id


def _entry(kind: str, names: str, **flags) -> dict[str, tuple[str, dict]]:
    return {name: (kind, flags) for name in names.split()}


# tokenizer.ggml.pre value -> (regex list, flags), as llama_vocab::impl::load maps them
_NAMES: dict[str, tuple[str, dict]] = {
    **_entry("default", "default"),
    **_entry("minicpm5", "minicpm5", ignore_merges=True),
    **_entry("llama3", "llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano", ignore_merges=True, add_bos=True),
    **_entry("deepseek-llm", "deepseek-llm", clean_spaces=False),
    **_entry("deepseek-coder", "deepseek-coder", clean_spaces=False),
    **_entry("deepseek-v3", "deepseek-v3 hunyuan-dense hy_v4 joyai-llm", clean_spaces=False),
    **_entry("spark2_5", "spark2_5", clean_spaces=False),
    **_entry("youtu", "youtu", clean_spaces=False, ignore_merges=True),
    **_entry("falcon", "falcon"),
    **_entry("gpt2", "mpt olmo jais exaone4 gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de a.x-4.0 mellum modern-bert"),
    **_entry("gpt2", "trillion granite-docling", clean_spaces=False),
    **_entry("gpt2", "jina-v1-en jina-v2-code roberta-bpe", add_sep=True),
    **_entry("starcoder", "starcoder refact codeshell exaone minerva-7b mellum2"),
    **_entry("starcoder", "command-r smollm", clean_spaces=False),
    **_entry("jais2", "jais-2"),
    **_entry("qwen2", "qwen2 deepseek-r1-qwen kormo f2llmv2 hunyuan solar-open", clean_spaces=False),
    **_entry("qwen2", "megrez stablelm2"),
    **_entry("qwen35", "qwen35", clean_spaces=False),
    **_entry("llama3", "dbrx smaug-bpe"),
    **_entry("poro", "poro-chat", clean_spaces=False),
    **_entry("poro", "bloom gpt3-finnish"),
    **_entry("chatglm4", "glm4 chatglm-bpe", no_bos=True),
    **_entry("viking", "viking", clean_spaces=False),
    **_entry("tekken", "tekken", clean_spaces=False, ignore_merges=True, add_bos=True),
    **_entry("chameleon", "chameleon", clean_spaces=False, add_bos=True),
    **_entry("gpt4o", "gpt-4o llama4 kanana2 talkie minimax-m2", clean_spaces=False),
    **_entry("granite-emb-multi", "granite-embed-multi-97m", clean_spaces=False, ignore_merges=True),
    **_entry("tiny-aya", "tiny_aya cohere2moe", clean_spaces=False),
    **_entry("superbpe", "superbpe", clean_spaces=False),
    **_entry("bailingmoe", "bailingmoe bailingmoe2 llada-moe", clean_spaces=False),
    **_entry("seed-coder", "seed-coder", clean_spaces=False),
    **_entry("ufakzeka", "ufakzeka", clean_spaces=False),
    **_entry("qwen2", "grok-2", clean_spaces=False),
    **_entry("laguna", "laguna", clean_spaces=False),
    **_entry("exaone-moe", "exaone-moe"),
}

# Names llama.cpp handles with hand-written splitters or non-byte-level BPE that kamado does not reproduce yet.
_UNSUPPORTED = {"kimi-k2", "afmoe", "gemma4", "granite-embed-multi-311m", "sarvam-moe", "whitespace"}


def pre_tokenizer_for(name: str, source: str = "GGUF metadata") -> PreTokenizer:
    if name in _UNSUPPORTED:
        raise TokenizerError(f"{source}: BPE pre-tokenizer tokenizer.ggml.pre={name!r} is not supported by kamado yet")
    if name not in _NAMES:
        raise TokenizerError(f"{source}: unknown BPE pre-tokenizer tokenizer.ggml.pre={name!r}")
    kind, flags = _NAMES[name]
    return PreTokenizer(name=name, regexes=tuple(_REGEXES[kind]), **flags)


def known_pre_tokenizers() -> list[str]:
    return sorted(_NAMES)
