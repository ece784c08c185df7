"""Fuzz the reader: mutated valid files must give GGUFError or a usable model, never anything else."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as VT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kamado.gguf import GGUFError, GGUFReader
from tests.gguf.craft import array, gguf_file, kv, scalar, tensor_info


def _seed_file() -> bytes:
    kvs = [
        kv("general.architecture", scalar(VT.STRING, "llama")),
        kv("n", scalar(VT.UINT32, 7)),
        kv("tokens", array(VT.STRING, ["a", "bc", "<s>"])),
        kv("scores", array(VT.FLOAT32, [0.5, -1.0, 2.0])),
        kv("nested", array(VT.ARRAY, [array(VT.INT8, [1, 2]), array(VT.STRING, ["x"])])),
    ]
    infos = [tensor_info("a", [4], Q.F32, 0), tensor_info("q", [32, 2], Q.Q4_0, 32)]
    return gguf_file(kvs, infos, bytes(range(16)) + bytes(16) + bytes(36) + bytes(28))


SEED = _seed_file()
# values that stress length, count and offset fields when written over 4 or 8 bytes
INTERESTING = [0, 1, 31, 32, 255, 2**31, 2**32 - 1, 2**60, 2**63, 2**64 - 1]

mutation = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, len(SEED) - 1), st.integers(0, 255)),
    st.tuples(st.just("u32"), st.integers(0, len(SEED) - 4), st.sampled_from([v for v in INTERESTING if v < 2**32])),
    st.tuples(st.just("u64"), st.integers(0, len(SEED) - 8), st.sampled_from(INTERESTING)),
)


def _mutate(blob: bytes, mutations, cut: int | None) -> bytes:
    b = bytearray(blob)
    for kind, pos, value in mutations:
        if kind == "byte":
            b[pos] = value
        else:
            struct.pack_into("<I" if kind == "u32" else "<Q", b, pos, value)
    return bytes(b[:cut] if cut is not None else b)


def test_seed_file_is_valid():
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "seed.gguf"
        p.write_bytes(SEED)
        r = GGUFReader(p)
        assert set(r.tensors) == {"a", "q"} and r.get("n") == 7


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(mutation, min_size=1, max_size=4), cut=st.none() | st.integers(0, len(SEED)))
def test_mutated_files_give_gguf_error_or_a_usable_model(mutations, cut):
    blob = _mutate(SEED, mutations, cut)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.gguf"
        p.write_bytes(blob)
        try:
            r = GGUFReader(p)
        except GGUFError as e:
            assert str(p) in str(e)
            return
        # what was accepted must be usable: every value present and every tensor view inside the file
        for f in r.fields.values():
            assert f.value is not None
        for t in r.tensors.values():
            assert t.raw.nbytes == t.nbytes and t.offset + t.nbytes <= len(blob)
            int(np.asarray(t.raw, dtype=np.uint64).sum())
        r.close()
