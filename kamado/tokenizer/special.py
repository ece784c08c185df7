"""Split text around special-token text the way llama.cpp does (tokenizer_st_partition): special tokens are taken
longest first, and every occurrence of each in the still-raw text becomes that token (leftmost first, not overlapping);
LSTRIP/RSTRIP tokens eat the whitespace beside them. Control and unknown tokens are only recognised when parse_special is
true; user-defined tokens always are.

llama.cpp rescans the text once per special token; with thousands of them (Gemma's <unusedN>) that is slow in Python,
so we first find every position where any special token starts (one regex pass), then replay llama.cpp's order on
those occurrences only, keeping a mask of the characters already taken."""

from __future__ import annotations

import re

from kamado.tokenizer.vocab import Attr, Vocab

# C isspace(): the whitespace llama.cpp strips beside LSTRIP/RSTRIP tokens
_C_SPACE = " \t\n\v\f\r"


class _Matcher:
    def __init__(self, specials: list[tuple[str, int, int]]):
        self.rank = {text: (k, tid, attr) for k, (text, tid, attr) in enumerate(specials)}  # k: llama.cpp's order
        self.lengths = sorted({len(t) for t, _, _ in specials}, reverse=True)
        texts = sorted(self.rank, key=len, reverse=True)
        self.starts = re.compile(_trie_regex(texts)) if texts else None

    def occurrences(self, text: str) -> dict[int, list[int]]:
        """llama.cpp order index -> every start position (overlapping ones included) of that token in `text`."""
        found: dict[int, list[int]] = {}
        if self.starts is None:
            return found
        # search() restarted one character after each hit finds overlapping starts too, and unlike a lookahead it keeps
        # the regex engine's fast scan for the tokens' first characters.
        m = self.starts.search(text)
        while m is not None:
            q = m.start()
            m = self.starts.search(text, q + 1)
            for n in self.lengths:
                hit = self.rank.get(text[q:q + n])
                if hit is not None:
                    found.setdefault(hit[0], []).append(q)
        return found


def _trie_regex(texts: list[str]) -> str:
    """A regex matching any of `texts`, with shared prefixes factored out so that each position costs one walk down a
    trie instead of one comparison per token (thousands for Gemma)."""
    trie: dict = {}
    for t in texts:
        node = trie
        for ch in t:
            node = node.setdefault(ch, {})
        node[""] = {}

    def walk(node: dict) -> str:
        branches = [re.escape(ch) + walk(child) for ch, child in node.items() if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return "(?:" + body + ")?" if "" in node else body

    return walk(trie)


_TOKEN, _STRIPPED = 1, 2


class SpecialSplitter:
    def __init__(self, vocab: Vocab):
        specials = [(vocab.tokens[i], i, vocab.attrs[i]) for i in vocab.special_ids]
        self._all = _Matcher(specials)
        self._user_defined = _Matcher([s for s in specials if not s[2] & (Attr.CONTROL | Attr.UNKNOWN)])

    def split(self, text: str, parse_special: bool) -> list[str | int]:
        """Pieces of `text` in order: str for raw text, int for a special token id."""
        matcher = self._all if parse_special else self._user_defined
        occurrences = matcher.occurrences(text)
        if not occurrences:
            return [text] if text else []
        by_order = {k: (t, tid, attr) for t, (k, tid, attr) in matcher.rank.items()}
        taken = bytearray(len(text))
        accepted: list[tuple[int, int, int]] = []  # (start, end, id)
        for k in sorted(occurrences):
            tok, tid, attr = by_order[k]
            n = len(tok)
            next_free = 0  # llama.cpp resumes its search after the previous match (and what it stripped)
            for q in occurrences[k]:
                if q < next_free or any(taken[q:q + n]):
                    continue
                taken[q:q + n] = bytes([_TOKEN]) * n
                accepted.append((q, q + n, tid))
                end = q + n
                if attr & Attr.RSTRIP:
                    while end < len(text) and not taken[end] and text[end] in _C_SPACE:
                        taken[end] = _STRIPPED
                        end += 1
                if attr & Attr.LSTRIP:
                    start = q
                    while start > 0 and not taken[start - 1] and text[start - 1] in _C_SPACE:
                        taken[start - 1] = _STRIPPED
                        start -= 1
                next_free = end
        accepted.sort()
        pieces: list[str | int] = []
        pos = 0
        for q, end, tid in [*accepted, (len(text), len(text), None)]:
            s, e = pos, q  # raw text between tokens, less the whitespace stripped at its edges
            while s < e and taken[s] == _STRIPPED:
                s += 1
            while e > s and taken[e - 1] == _STRIPPED:
                e -= 1
            if s < e:
                pieces.append(text[s:e])
            if tid is not None:
                pieces.append(tid)
            pos = end
        return pieces
