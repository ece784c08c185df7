"""Unigram (T5, tokenizer.ggml.model = "t5") as llama.cpp does it (llm_tokenizer_ugm in llama-vocab.cpp).

Normalisation: at each input position the longest user-defined token is kept as is; otherwise the longest key of
SentencePiece's precompiled charsmap (tokenizer.ggml.precompiled_charsmap: an XOR-compressed double-array trie over
UTF-8 bytes, then NUL-terminated replacement strings) is replaced; otherwise one character passes unchanged. Spaces are
then escaped to U+2581, merged when remove_extra_whitespaces is set, and a space is put before the text (or after it
with treat_whitespace_as_suffix) when add_space_prefix is set.

Segmentation: Viterbi over the normalised text, maximising the sum of token scores (user-defined tokens score 0). A
character no token starts with exactly becomes the unknown token with score min(normal scores) - 10, and consecutive
unknown tokens are merged into one. There is no byte fallback.
"""

from __future__ import annotations

import struct

import numpy as np

from kamado.tokenizer.vocab import Attr, TokenizerError, Vocab

_UNKNOWN_PENALTY = 10.0
_END = ""  # trie key marking "a token ends here"; never a character of a token
_CHARSMAP = "tokenizer.ggml.precompiled_charsmap"


class CharsMap:
    """SentencePiece's precompiled normalisation rules: longest matching byte prefix -> replacement bytes."""

    def __init__(self, blob: bytes, source: str = "GGUF metadata"):
        self.source = source
        if len(blob) < 4:
            raise TokenizerError(f"{source}: {_CHARSMAP} has {len(blob)} bytes, too short for its 4-byte header")
        (trie_size,) = struct.unpack_from("<I", blob, 0)
        if trie_size % 4 or 4 + trie_size > len(blob):
            raise TokenizerError(f"{source}: {_CHARSMAP} declares a {trie_size}-byte trie but holds {len(blob) - 4} bytes after the header")
        nodes = np.frombuffer(blob, "<u4", count=trie_size // 4, offset=4).astype(np.int64)
        # Each node packs BASE in bits 10-30 (shifted left by 8 when bit 9 is set), LEAF in bit 8, the label byte
        # (LCHECK) in bits 0-7 with bit 31 set on value nodes, and for value nodes a replacement offset in bits 0-30.
        self._base = ((nodes >> 10) << ((nodes & (1 << 9)) >> 6)).tolist()
        self._lcheck = (nodes & ((1 << 31) | 0xFF)).tolist()
        self._leaf = ((nodes >> 8) & 1).astype(bool).tolist()
        self._value = (nodes & ((1 << 31) - 1)).tolist()
        self._replacements = blob[4 + trie_size:]
        self._cache: dict[int, bytes] = {}

    def _node(self, table: list, index: int):
        if index >= len(table):
            raise TokenizerError(f"{self.source}: {_CHARSMAP} is corrupt: trie index {index} is outside its {len(table)} nodes")
        return table[index]

    def longest_match(self, data: bytes, start: int) -> tuple[int, bytes]:
        """(bytes consumed, replacement) for the longest rule matching data[start:], or (0, b"") when none does."""
        if not self._base:
            return 0, b""
        node = self._base[0]
        matched, value = 0, -1
        for pos in range(start, len(data)):
            c = data[pos]
            if c == 0:
                break
            node ^= c
            if self._node(self._lcheck, node) != c:
                break
            leaf = self._leaf[node]
            node ^= self._base[node]
            if leaf:
                matched, value = pos - start + 1, self._node(self._value, node)
        if not matched:
            return 0, b""
        return matched, self._replacement(value)

    def _replacement(self, offset: int) -> bytes:
        hit = self._cache.get(offset)
        if hit is None:
            end = self._replacements.find(b"\0", offset)
            if offset >= len(self._replacements) or end < 0:
                raise TokenizerError(f"{self.source}: {_CHARSMAP} is corrupt: replacement at offset {offset} is missing or unterminated")
            hit = self._cache[offset] = self._replacements[offset:end]
        return hit


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead >> 5 == 0b110 else 3 if lead >> 4 == 0b1110 else 4 if lead >> 3 == 0b11110 else 1


class Unigram:
    def __init__(self, vocab: Vocab, source: str = "GGUF metadata"):
        if vocab.unk_id is None:
            raise TokenizerError(f"{source}: a unigram (t5) vocabulary needs tokenizer.ggml.unknown_token_id")
        self.vocab = vocab
        self.unk_id = vocab.unk_id
        self.charsmap = CharsMap(vocab.precompiled_charsmap, source) if vocab.precompiled_charsmap else None
        self.treat_whitespace_as_suffix = False  # SentencePiece option llama.cpp keeps but no GGUF key sets
        attrs = vocab.attrs
        normal = [i for i, a in enumerate(attrs) if a & Attr.NORMAL]
        min_score = float(vocab.scores[normal].min()) if normal else float(np.finfo(np.float32).max)
        self.unknown_score = min_score - _UNKNOWN_PENALTY
        self.trie: dict = {}
        user_defined = []
        for i, text in enumerate(vocab.tokens):
            a = attrs[i]
            if not a & (Attr.NORMAL | Attr.USER_DEFINED | Attr.UNUSED):
                continue
            node = self.trie
            for ch in text:
                node = node.setdefault(ch, {})
            # user-defined tokens score 0 so that they win over pieces (normal scores are log probabilities)
            node[_END] = (i, 0.0 if a & Attr.USER_DEFINED else float(vocab.scores[i]))
            if a & Attr.USER_DEFINED:
                user_defined.append(text.encode())
        self.user_defined = set(user_defined)
        self.user_defined_lengths = sorted({len(t) for t in user_defined}, reverse=True)

    # -- normalisation ----------------------------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        data = text.encode("utf-8", "surrogatepass")
        parts: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n:
            consumed, replacement = self._normalize_prefix(data, pos)
            parts.append(replacement)
            pos += consumed
        normalized = b"".join(parts)
        v = self.vocab
        space = "▁".encode() if v.escape_whitespaces else b" "
        prepend = v.add_space_prefix and not self.treat_whitespace_as_suffix
        if v.remove_extra_whitespaces:
            # llama.cpp drops every space and writes one before each run of non-space bytes
            out = b"".join(space + word for word in normalized.split(b" ") if word)
        else:
            rest = normalized.lstrip(b" ")
            lead = space * (len(normalized) - len(rest))
            out = lead + (space if prepend and rest else b"") + rest.replace(b" ", space)
        if v.add_space_prefix and self.treat_whitespace_as_suffix:
            out += space
        return out.decode("utf-8", "replace")

    def _normalize_prefix(self, data: bytes, pos: int) -> tuple[int, bytes]:
        for length in self.user_defined_lengths:
            if data[pos:pos + length] in self.user_defined:
                return length, data[pos:pos + length]
        if self.charsmap is not None:
            consumed, replacement = self.charsmap.longest_match(data, pos)
            if consumed:
                return consumed, replacement
        length = _utf8_length(data[pos])
        char = data[pos:pos + length]
        try:
            char.decode("utf-8")
        except UnicodeDecodeError:
            return 1, "\ufffd".encode()
        return length, char

    # -- segmentation -----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        s = self.normalize(text)
        n = len(s)
        if n == 0:
            return []
        unk, unk_score, trie = self.unk_id, self.unknown_score, self.trie
        score = [float("-inf")] * (n + 1)
        score[0] = 0.0
        token = [unk] * (n + 1)
        start = [0] * (n + 1)
        for i in range(n):
            base = score[i]
            node = trie
            single_char_token = False
            j = i
            while j < n:
                node = node.get(s[j])
                if node is None:
                    break
                j += 1
                hit = node.get(_END)
                if hit is not None:
                    single_char_token = single_char_token or j == i + 1
                    candidate = base + hit[1]
                    if candidate > score[j]:  # strictly better: the earlier start wins ties, as in llama.cpp
                        score[j], token[j], start[j] = candidate, hit[0], i
            if not single_char_token:
                candidate = base + unk_score
                if candidate > score[i + 1]:
                    score[i + 1], token[i + 1], start[i + 1] = candidate, unk, i
        out: list[int] = []
        end, prev_unknown = n, False
        while end > 0:
            tid = token[end]
            is_unknown = tid == unk
            if not (prev_unknown and is_unknown):
                out.append(tid)
            prev_unknown = is_unknown
            end = start[end]
        out.reverse()
        return out
