"""`Tokenizer`: llama.cpp-identical tokenization and detokenization from a GGUF file's tokenizer.ggml.* metadata."""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterable

import numpy as np

from kamado.tokenizer.bytelevel import byte_level_to_bytes
from kamado.tokenizer.special import SpecialSplitter
from kamado.tokenizer.vocab import Attr, TokenizerError, Vocab, load_vocab

_RENDERED_ONLY_IF_SPECIAL = Attr.CONTROL | Attr.UNKNOWN


class Tokenizer:
    """Encode/decode exactly as llama.cpp's llama_tokenize / llama_detokenize do for this vocabulary.

    `token_to_piece(id)` returns bytes: a piece may be part of a UTF-8 character (byte-fallback and byte-level
    tokens), so only a sequence of pieces can be decoded to text; `decode` and `stream()` do that safely.
    """

    def __init__(self, vocab: Vocab, source: str = "GGUF metadata"):
        self.vocab = vocab
        self._special = SpecialSplitter(vocab)
        self._pieces: list[bytes | None] = [None] * vocab.n_vocab
        self._suppressed = (np.asarray(vocab.attrs) & _RENDERED_ONLY_IF_SPECIAL).astype(bool).tolist()
        self._engine = self._build_engine(source)

    @classmethod
    def from_gguf(cls, path_or_reader) -> Tokenizer:
        """Build from a GGUF path or an open kamado.gguf.GGUFReader (only tokenizer.ggml.* and general.name are read)."""
        from kamado.gguf.reader import GGUFReader

        if isinstance(path_or_reader, GGUFReader):
            return cls.from_metadata(path_or_reader.metadata, source=str(getattr(path_or_reader, "path", "GGUF file")))
        with GGUFReader(path_or_reader) as reader:
            return cls.from_metadata(reader.metadata, source=os.fspath(path_or_reader))

    @classmethod
    def from_metadata(cls, metadata: dict, source: str = "GGUF metadata") -> Tokenizer:
        return cls(load_vocab(metadata, source), source)

    def _build_engine(self, source: str):
        v = self.vocab
        if v.model == "bpe":
            from kamado.tokenizer.engines import build_bpe
            from kamado.tokenizer.pretokenize import pre_tokenizer_for

            return build_bpe(v, pre_tokenizer_for(v.pre or "default", source))
        if v.model == "spm":
            from kamado.tokenizer.engines import build_spm

            return build_spm(v)
        if v.model == "wpm":
            from kamado.tokenizer.wpm import WordPiece

            return WordPiece(v)
        if v.model == "ugm":
            from kamado.tokenizer.ugm import Unigram

            return Unigram(v, source)
        raise TokenizerError(f"{source}: tokenizer type {v.model!r} (tokenizer.ggml.model) is not supported by kamado yet")

    # -- properties -------------------------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.vocab.n_vocab

    @property
    def bos_id(self) -> int | None:
        return self.vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.vocab.eos_id

    @property
    def eog_ids(self) -> frozenset[int]:
        """Tokens that end generation (EOS, EOT, <|im_end|>, <end_of_turn>, ...), as llama.cpp's llama_vocab_is_eog."""
        return self.vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self.vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self.vocab.add_eos

    @property
    def add_sep(self) -> bool:
        return self.vocab.add_sep

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.vocab.eog_ids

    # -- encode -----------------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`; add_special adds BOS/EOS (and CLS/SEP for BERT) as the vocabulary asks;
        parse_special turns control-token text such as "<start_of_turn>" into its id (user-defined tokens always are)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, not {type(text).__name__}")
        v = self.vocab
        pieces = self._special.split(text, parse_special)
        out: list[int] = []
        if v.model == "wpm":
            if add_special:
                out.append(v.bos_id)
            for p in pieces:
                out.extend(self._engine.encode(p) if isinstance(p, str) else (p,))
            if add_special:
                out.append(v.sep_id)
            return out
        if add_special and v.add_bos:
            out.append(v.bos_id)
        if v.model == "ugm":
            for p in pieces:
                out.extend(self._engine.encode(p) if isinstance(p, str) else (p,))
            if add_special and v.add_eos:
                out.append(v.eos_id)
            return out
        texts: list[str] = []
        prev_special = True
        for p in pieces:
            if isinstance(p, str):
                if v.model == "spm":
                    p = (" " + p if v.add_space_prefix and prev_special else p).replace(" ", "▁")
                texts.append(p)
            prev_special = not isinstance(p, str)
        encoded = iter(self._engine.encode_batch_fast(texts, add_special_tokens=False) if texts else ())
        for p in pieces:
            out.extend(next(encoded).ids if isinstance(p, str) else (p,))
        if add_special and v.add_eos:
            out.append(v.eos_id)
        return out

    # -- decode -----------------------------------------------------------------------------------------------------
    def token_to_piece(self, token_id: int, special: bool = True) -> bytes:
        """The bytes token `token_id` stands for (llama_token_to_piece); control/unknown tokens give b"" unless `special`."""
        if not 0 <= token_id < self.vocab.n_vocab:
            raise TokenizerError(f"token id {token_id} is out of range for a vocabulary of {self.vocab.n_vocab} tokens")
        if not special and self._suppressed[token_id]:
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._pieces[token_id] = self._make_piece(token_id)
        return piece

    def _make_piece(self, token_id: int) -> bytes:
        v = self.vocab
        text, attr = v.tokens[token_id], v.attrs[token_id]
        if attr & (_RENDERED_ONLY_IF_SPECIAL | Attr.USER_DEFINED):
            return text.encode()
        if attr & Attr.NORMAL:
            if v.model == "bpe":
                return byte_level_to_bytes(text)
            return text.replace("▁", " ").encode()
        if attr & Attr.BYTE:
            if v.model == "bpe" or v.model == "wpm":
                return byte_level_to_bytes(text) if v.model == "bpe" else b""
            return bytes([int(text[3:5], 16)])
        return b""

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        """llama_detokenize(remove_special=skip_special, unparse_special=not skip_special), as bytes."""
        v = self.vocab
        ids = list(ids)
        remove_space = v.add_space_prefix
        if skip_special and v.add_bos and ids and ids[0] == v.bos_id:
            remove_space = False
            ids = ids[1:]
        if skip_special and v.add_eos and ids and ids[-1] == v.eos_id:
            ids = ids[:-1]
        parts = [self.token_to_piece(i, special=not skip_special) for i in ids]
        if remove_space and parts and parts[0].startswith(b" "):
            parts[0] = parts[0][1:]
        return b"".join(parts)

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Text of `ids` (invalid UTF-8, e.g. a cut-off character, becomes U+FFFD); skip_special drops a leading BOS,
        a trailing EOS and the text of control tokens, as llama.cpp does."""
        text = self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")
        return clean_spaces(text) if self.vocab.clean_spaces else text

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        """A detokenizer fed one id at a time; its output, concatenated, equals decode() of all the ids."""
        return StreamDecoder(self, skip_special)


def clean_spaces(text: str) -> str:
    """llama.cpp's clean-up for BPE vocabularies: " ?" " !" " ." " ," lose the space, " ' " becomes "'", and the space
    before 's 'm 're 've goes."""
    if len(text) < 2:
        return text
    out = [text[0]]
    for i in range(1, len(text)):
        if text[i - 1] == " " and text[i] in "?!.,":
            out.pop()
        out.append(text[i])
    text = "".join(out)
    out = [text[0]]
    i, prev = 1, text[0]
    while i < len(text):
        x = text[i]
        if x == "'" and i + 1 < len(text) and prev == " " and text[i + 1] == " ":
            out.pop()
            i += 1  # llama.cpp overwrites the skipped space with NUL, so it no longer counts as the previous char
            x_prev = "\0"
        else:
            x_prev = x
        out.append(x)
        prev = x_prev
        i += 1
    text = "".join(out)
    out = [text[0]]
    for i in range(1, len(text)):
        x = text[i]
        if text[i - 1] == " " and x == "'" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in "sm" or (i + 2 < len(text) and text[i + 1:i + 3] in ("re", "ve")):
                out.pop()
        out.append(x)
    return "".join(out)


class StreamDecoder:
    """Incremental detokenizer: `feed(id)` returns the text that is now final, never half a UTF-8 character;
    `flush()` returns the rest. Their concatenation equals Tokenizer.decode(all ids, skip_special)."""

    def __init__(self, tok: Tokenizer, skip_special: bool = False):
        self._tok = tok
        self._skip = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._remove_space = tok.vocab.add_space_prefix
        self._held_eos = b""  # with skip_special, a final EOS is dropped: hold its piece until another token comes
        self._pending = ""  # decoded text not yet emitted because clean-up may still change it

    def feed(self, token_id: int) -> str:
        v = self._tok.vocab
        piece = self._tok.token_to_piece(token_id, special=not self._skip)
        if self._first:
            self._first = False
            if self._skip and v.add_bos and token_id == v.bos_id:
                self._remove_space = False
                return ""
            if self._remove_space and piece.startswith(b" "):
                piece = piece[1:]
        data, self._held_eos = self._held_eos, b""
        if self._skip and v.add_eos and token_id == v.eos_id:
            self._held_eos = piece
        else:
            data += piece
        return self._emit(self._utf8.decode(data), final=False)

    def flush(self) -> str:
        return self._emit(self._utf8.decode(b"", final=True), final=True)

    def _emit(self, text: str, final: bool) -> str:
        if not self._tok.vocab.clean_spaces:
            return text
        pending = self._pending + text
        # Clean-up rules look at a space and at most the 3 characters after it, and only remove spaces, so text before
        # a cut k can be cleaned alone when pending[k] and the 4 characters before it are not spaces.
        cut = len(pending) if final else self._safe_cut(pending)
        self._pending = pending[cut:]
        return clean_spaces(pending[:cut])

    @staticmethod
    def _safe_cut(s: str) -> int:
        for k in range(len(s) - 1, 3, -1):
            if " " not in s[k - 4:k + 1]:
                return k
        return 0
