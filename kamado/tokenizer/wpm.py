"""WordPiece (BERT) as llama.cpp does it (llm_tokenizer_wpm_session): normalise, split on whitespace and punctuation,
then take the longest vocabulary match at each position of "▁" + word; a word with no full match becomes [UNK]."""

from __future__ import annotations

import unicodedata

from kamado.tokenizer.vocab import Vocab

# llama.cpp's whitespace table (the Unicode White_Space property)
_WHITESPACE = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000])
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF),
               (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


class WordPiece:
    def __init__(self, vocab: Vocab, lowercase: bool = True, strip_accents: bool = True):
        self.vocab = vocab
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.max_len = max(len(t) for t in vocab.tokens)

    def words(self, text: str) -> list[str]:
        if self.strip_accents:
            text = unicodedata.normalize("NFD", text)
        words = [""]
        for ch in text:
            cp = ord(ch)
            if cp in _WHITESPACE:
                if words[-1]:
                    words.append("")
                continue
            cat = unicodedata.category(ch)
            if cp == 0 or cp == 0xFFFD or (cat[0] == "C" and cat != "Cn"):
                continue
            if self.strip_accents and cat[0] == "M":
                continue
            s = ch.lower() if self.lowercase else ch
            if cat[0] == "P" or (cp < 0x7F and cat[0] == "S") or _is_cjk(cp):
                if words[-1]:
                    words.append("")
                words[-1] = s
                words.append("")
            else:
                words[-1] += s
        if not words[-1]:
            words.pop()
        return words

    def encode(self, text: str) -> list[int]:
        ids = self.vocab.token_to_id
        out: list[int] = []
        for word in self.words(text):
            word = "▁" + word
            start = len(out)
            i, n = 0, len(word)
            while i < n:
                for j in range(min(n, i + self.max_len + 1), i, -1):
                    tid = ids.get(word[i:j])
                    if tid is not None:
                        out.append(tid)
                        i = j
                        break
                else:
                    del out[start:]
                    break
            if len(out) == start:
                out.append(self.vocab.unk_id)
        return out
