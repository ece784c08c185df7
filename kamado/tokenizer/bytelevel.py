"""GPT-2's byte-level alphabet: every byte as a printable character, so byte-level BPE tokens are plain strings."""

from __future__ import annotations


def _byte_to_char() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_TO_CHAR = _byte_to_char()
_CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def byte_level_to_bytes(text: str) -> bytes:
    """The bytes a byte-level token stands for; a character outside the alphabet is written as llama.cpp does
    ("[UNK_BYTE_0x..]" followed by the token text)."""
    out = bytearray()
    for ch in text:
        b = _CHAR_TO_BYTE.get(ch)
        if b is None:
            out += ("[UNK_BYTE_0x" + ch.encode().hex() + text + "]").encode()
        else:
            out.append(b)
    return bytes(out)
