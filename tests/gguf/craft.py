"""Hand-made GGUF bytes, built from the format description (not with kamado's writer), so tests can make
files that are valid, subtly broken or hostile."""

from __future__ import annotations

import struct

from gguf import GGUFValueType as VT

# value type -> struct format of one scalar
SCALAR_FORMATS = {VT.UINT8: "B", VT.INT8: "b", VT.UINT16: "H", VT.INT16: "h", VT.UINT32: "I", VT.INT32: "i", VT.FLOAT32: "f",
                  VT.BOOL: "?", VT.UINT64: "Q", VT.INT64: "q", VT.FLOAT64: "d"}


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def scalar(vtype: VT, value) -> bytes:
    """Type tag + value, as a metadata value."""
    return struct.pack("<I", vtype) + (string(value) if vtype == VT.STRING else struct.pack("<" + SCALAR_FORMATS[vtype], value))


def array(item: VT, values) -> bytes:
    """Type tag ARRAY + element type + count + elements (strings, scalars, or already-encoded inner arrays)."""
    body = struct.pack("<IIQ", VT.ARRAY, item, len(values))
    for v in values:
        if item == VT.STRING:
            body += string(v)
        elif item == VT.ARRAY:
            body += v[4:]  # an inner array is encoded without its own ARRAY tag
        else:
            body += struct.pack("<" + SCALAR_FORMATS[item], v)
    return body


def kv(key: str | bytes, value: bytes) -> bytes:
    return string(key) + value


def tensor_info(name: str, ne: list[int], ttype: int, offset: int) -> bytes:
    return string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ttype, offset)


def gguf_file(kvs: list[bytes] = (), infos: list[bytes] = (), data: bytes = b"", *, version: int = 3, alignment: int = 32,
              n_tensors: int | None = None, n_kv: int | None = None, magic: bytes = b"GGUF") -> bytes:
    """A whole file: header, metadata, tensor infos, padding to `alignment`, then `data`."""
    head = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % alignment) + data
