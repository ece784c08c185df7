"""Fast tokenization of raw text pieces (special tokens already split off), built on the `tokenizers` (Rust) library.

BPE (gpt2): llama.cpp splits the text with its pre-tokenizer regexes, maps bytes to GPT-2's printable characters and
applies the merges by rank; `tokenizers` does the same with a Sequence of isolated Splits, ByteLevel without its own
regex, and a BPE model holding the GGUF merges.

SPM (llama): llama.cpp repeatedly merges the adjacent pair whose concatenation is the vocabulary token with the highest
score (leftmost first on ties), over the whole piece, and spells characters no token covers as <0xXX> byte tokens.
That is byte-pair encoding whose merge list is every (a, b) with a, b and a+b in the vocabulary, ranked by the score of
a+b, with byte fallback: we build exactly that list. (Only tokens of equal score can be ordered differently than llama.cpp
orders them; real SentencePiece vocabularies give normal tokens distinct scores.)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from kamado.tokenizer.pretokenize import PreTokenizer
from kamado.tokenizer.vocab import Vocab


def build_bpe(vocab: Vocab, pre: PreTokenizer) -> Tokenizer:
    ids = vocab.token_to_id
    merges = []
    for line in vocab.merges:
        pos = line.find(" ", 1)
        if pos < 0:
            continue
        a, b = line[:pos], line[pos + 1:]
        # llama.cpp would merge into a string it cannot look up and then spell it byte by byte; no real vocabulary
        # has such merges, and `tokenizers` refuses them, so they are dropped.
        if a in ids and b in ids and a + b in ids:
            merges.append((a, b))
    model = models.BPE(vocab=ids, merges=merges, ignore_merges=pre.ignore_merges)
    tok = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return tok


def spm_merges(vocab: Vocab) -> np.ndarray:
    """(a_id, b_id) for every a, b with a+b a token, best score of a+b first (ties: lower id of a+b, then shorter a)."""
    ids = vocab.token_to_id
    found = [(tid, cut, ids[text[:cut]], ids[text[cut:]])
             for tid, text in enumerate(vocab.tokens) for cut in range(1, len(text))
             if text[:cut] in ids and text[cut:] in ids]
    if not found:
        return np.zeros((0, 2), np.int32)
    arr = np.array(found, np.int64)
    order = np.lexsort((arr[:, 1], arr[:, 0], -vocab.scores[arr[:, 0]].astype(np.float64)))
    return arr[order][:, 2:].astype(np.int32)


def _cached_spm_merges(vocab: Vocab) -> np.ndarray:
    """spm_merges, kept in ~/.cache/kamado/tokenizer keyed by the vocabulary's content (finding them takes seconds)."""
    h = hashlib.sha256(b"spm-merges-v1\0")
    h.update("\0".join(vocab.tokens).encode())
    h.update(np.ascontiguousarray(vocab.scores, np.float32).tobytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kamado" / "tokenizer" / f"{h.hexdigest()[:32]}.npy"
    try:
        merges = np.load(cache)
        if merges.ndim == 2 and merges.shape[1] == 2 and (merges.size == 0 or (0 <= merges.min() and merges.max() < vocab.n_vocab)):
            return merges
    except (OSError, ValueError):
        pass
    merges = spm_merges(vocab)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, merges)
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home only costs the next load some time
    return merges


def build_spm(vocab: Vocab) -> Tokenizer:
    toks = vocab.tokens
    merges = [(toks[a], toks[b]) for a, b in _cached_spm_merges(vocab).tolist()]
    return Tokenizer(models.BPE(vocab=vocab.token_to_id, merges=merges, byte_fallback=True))
