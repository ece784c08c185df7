"""The reader on valid hand-made files (v2, v3, every value type) and on corrupt and hostile ones."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as VT

from kamado.gguf import GGUFError, GGUFReader, NestedArray
from tests.gguf.craft import array, gguf_file, kv, scalar, tensor_info

HUGE = 1 << 60


def valid_parts():
    """Metadata and two F32 tensors (4 and 8 elements) with their data; the building block of most tests."""
    kvs = [
        kv("general.architecture", scalar(VT.STRING, "llama")),
        kv("u8", scalar(VT.UINT8, 200)),
        kv("i8", scalar(VT.INT8, -5)),
        kv("u16", scalar(VT.UINT16, 60000)),
        kv("i16", scalar(VT.INT16, -300)),
        kv("u32", scalar(VT.UINT32, 4_000_000_000)),
        kv("i32", scalar(VT.INT32, -70000)),
        kv("f32", scalar(VT.FLOAT32, 0.25)),
        kv("b", scalar(VT.BOOL, True)),
        kv("u64", scalar(VT.UINT64, 1 << 63)),
        kv("i64", scalar(VT.INT64, -(1 << 40))),
        kv("f64", scalar(VT.FLOAT64, 1e300)),
        kv("tokens", array(VT.STRING, ["<s>", "héllo", ""])),
        kv("scores", array(VT.FLOAT32, [0.5, -1.0])),
        kv("nested", array(VT.ARRAY, [array(VT.INT32, [1, 2]), array(VT.STRING, ["x"])])),
    ]
    a = np.arange(4, dtype=np.float32)
    b = np.arange(8, dtype=np.float32) * 2
    infos = [tensor_info("a", [4], Q.F32, 0), tensor_info("b", [4, 2], Q.F32, 32)]
    data = a.tobytes() + bytes(16) + b.tobytes()
    return kvs, infos, data, a, b


def write(tmp_path, blob: bytes, name: str = "m.gguf"):
    p = tmp_path / name
    p.write_bytes(blob)
    return p


def expect_error(tmp_path, blob: bytes, *words: str) -> str:
    p = write(tmp_path, blob)
    with pytest.raises(GGUFError) as e:
        GGUFReader(p)
    msg = str(e.value)
    assert str(p) in msg
    for w in words:
        assert w in msg, msg
    return msg


@pytest.mark.parametrize("version", [2, 3])
def test_reads_every_value_type_and_tensors(tmp_path, version):
    kvs, infos, data, a, b = valid_parts()
    r = GGUFReader(write(tmp_path, gguf_file(kvs, infos, data, version=version)))
    assert r.version == version
    m = r.metadata
    assert m["general.architecture"] == "llama"
    assert (m["u8"], m["i8"], m["u16"], m["i16"], m["u32"], m["i32"]) == (200, -5, 60000, -300, 4_000_000_000, -70000)
    assert (m["f32"], m["b"], m["u64"], m["i64"], m["f64"]) == (0.25, True, 1 << 63, -(1 << 40), 1e300)
    assert r.fields["u16"].type == VT.UINT16 and r.fields["b"].type == VT.BOOL
    assert m["tokens"] == ["<s>", "héllo", ""] and r.fields["tokens"].item_type == VT.STRING
    assert m["scores"].dtype == np.float32 and m["scores"].tolist() == [0.5, -1.0]
    nested = m["nested"]
    assert r.fields["nested"].item_type == VT.ARRAY
    assert nested[0].dtype == np.int32 and nested[0].tolist() == [1, 2]
    assert isinstance(nested[1], NestedArray) and nested[1] == ["x"] and nested[1].item_type == VT.STRING
    assert list(r.fields) == [k for k in m]  # file order
    ta, tb = r.tensors["a"], r.tensors["b"]
    assert ta.type == Q.F32 and ta.shape == (4,) and tb.shape == (2, 4)
    assert ta.raw.view(np.float32).tolist() == a.tolist()
    assert np.array_equal(tb.raw.view(np.float32), b.reshape(2, 4))


def test_invalid_utf8_strings_keep_their_bytes(tmp_path):
    blob = gguf_file([kv("tok", array(VT.STRING, [b"\xff\xfe", b"ok"]))])
    tokens = GGUFReader(write(tmp_path, blob)).get("tok")
    assert tokens[0].encode("utf-8", errors="surrogateescape") == b"\xff\xfe"


def test_bad_magic(tmp_path):
    expect_error(tmp_path, gguf_file(magic=b"GGML"), "not a GGUF file", "magic")


def test_empty_file(tmp_path):
    expect_error(tmp_path, b"", "empty file")


@pytest.mark.parametrize("version", [1, 4, 0])
def test_unsupported_version(tmp_path, version):
    expect_error(tmp_path, gguf_file(version=version), f"unsupported GGUF version {version}")


def test_big_endian_file(tmp_path):
    blob = b"GGUF" + struct.pack(">IQQ", 3, 0, 0)
    expect_error(tmp_path, blob, "big-endian")


def test_truncated_at_every_offset(tmp_path):
    kvs, infos, data, *_ = valid_parts()
    blob = gguf_file(kvs, infos, data)
    GGUFReader(write(tmp_path, blob))  # the whole file is fine
    for cut in range(len(blob)):
        p = write(tmp_path, blob[:cut])
        with pytest.raises(GGUFError) as e:
            GGUFReader(p)
        assert str(p) in str(e.value)


def test_tensor_data_past_end(tmp_path):
    kvs, infos, data, *_ = valid_parts()
    expect_error(tmp_path, gguf_file(kvs, infos, data[:-4]), "'b'", "runs past the end of the file")


def test_unaligned_tensor_offset(tmp_path):
    infos = [tensor_info("a", [4], Q.F32, 4)]
    expect_error(tmp_path, gguf_file([], infos, bytes(64)), "'a'", "not aligned to 32")


def test_custom_alignment_is_honoured(tmp_path):
    kvs = [kv("general.alignment", scalar(VT.UINT32, 64))]
    infos = [tensor_info("a", [4], Q.F32, 0), tensor_info("b", [4], Q.F32, 64)]
    r = GGUFReader(write(tmp_path, gguf_file(kvs, infos, bytes(128), alignment=64)))
    assert r.alignment == 64 and all(t.offset % 64 == 0 for t in r.tensors.values())
    bad = [tensor_info("a", [4], Q.F32, 0), tensor_info("b", [4], Q.F32, 32)]
    expect_error(tmp_path, gguf_file(kvs, bad, bytes(128), alignment=64), "not aligned to 64")


@pytest.mark.parametrize("value", [scalar(VT.UINT32, 48), scalar(VT.UINT32, 0), scalar(VT.UINT64, 32), scalar(VT.STRING, "32")])
def test_bad_alignment_field(tmp_path, value):
    expect_error(tmp_path, gguf_file([kv("general.alignment", value)]), "general.alignment")


def test_overlapping_tensors(tmp_path):
    infos = [tensor_info("a", [16], Q.F32, 0), tensor_info("b", [4], Q.F32, 32)]
    expect_error(tmp_path, gguf_file([], infos, bytes(64)), "'a'", "'b'", "overlap")


@pytest.mark.parametrize("ttype", [4, 5, 31, 36, 1000, 2**32 - 1])
def test_unknown_tensor_type(tmp_path, ttype):
    infos = [tensor_info("w", [32], ttype, 0)]
    expect_error(tmp_path, gguf_file([], infos, bytes(1024)), "'w'", f"unknown type {ttype}")


def test_row_not_a_whole_number_of_blocks(tmp_path):
    infos = [tensor_info("w", [48], Q.Q4_0, 0)]
    expect_error(tmp_path, gguf_file([], infos, bytes(64)), "'w'", "block size 32")


def test_duplicate_tensor_names(tmp_path):
    infos = [tensor_info("w", [4], Q.F32, 0), tensor_info("w", [4], Q.F32, 32)]
    expect_error(tmp_path, gguf_file([], infos, bytes(64)), "duplicate tensor name 'w'")


def test_duplicate_keys(tmp_path):
    kvs = [kv("k", scalar(VT.UINT32, 1)), kv("k", scalar(VT.UINT32, 2))]
    expect_error(tmp_path, gguf_file(kvs), "duplicate metadata key 'k'")


@pytest.mark.parametrize("vtype", [13, 1000])
def test_unknown_value_type(tmp_path, vtype):
    blob = gguf_file([kv("k", struct.pack("<I", vtype) + bytes(8))])
    expect_error(tmp_path, blob, "'k'", f"unknown value type {vtype}")


def test_unknown_array_element_type(tmp_path):
    blob = gguf_file([kv("k", struct.pack("<IIQ", VT.ARRAY, 99, 1) + bytes(8))])
    expect_error(tmp_path, blob, "'k'", "unknown array element type 99")


def assert_fails_small(tmp_path, blob: bytes, *words: str) -> None:
    """Fails with GGUFError without allocating anything near the size the header claims."""
    tracemalloc.start()
    try:
        expect_error(tmp_path, blob, *words)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"peak allocation {peak} bytes"


def test_huge_string_length_in_key(tmp_path):
    blob = gguf_file(n_kv=1, alignment=1) + struct.pack("<Q", HUGE) + b"abc"
    assert_fails_small(tmp_path, blob, "metadata key #0")


def test_huge_string_length_in_value(tmp_path):
    blob = gguf_file([kv("k", struct.pack("<IQ", VT.STRING, HUGE) + b"abc")])
    assert_fails_small(tmp_path, blob, "'k'")


@pytest.mark.parametrize("item", [VT.UINT8, VT.FLOAT64, VT.STRING, VT.ARRAY])
def test_huge_array_count(tmp_path, item):
    blob = gguf_file([kv("k", struct.pack("<IIQ", VT.ARRAY, item, HUGE) + bytes(64))])
    assert_fails_small(tmp_path, blob, "'k'", f"array of {HUGE} elements")


def test_huge_count_inside_nested_array(tmp_path):
    inner = struct.pack("<IQ", VT.UINT32, HUGE)
    blob = gguf_file([kv("k", struct.pack("<IIQ", VT.ARRAY, VT.ARRAY, 1) + inner + bytes(16))])
    assert_fails_small(tmp_path, blob, "'k'[0]")


def test_huge_tensor_count(tmp_path):
    assert_fails_small(tmp_path, gguf_file(n_tensors=HUGE), "tensor count")


def test_huge_metadata_count(tmp_path):
    assert_fails_small(tmp_path, gguf_file(n_kv=HUGE), "metadata count")


def test_claimed_counts_larger_than_the_file(tmp_path):
    # plausible counts but no bytes behind them: fails on the first missing entry, no long loop
    assert_fails_small(tmp_path, gguf_file(n_tensors=1000, n_kv=1000), "truncated")


@pytest.mark.parametrize(
    "ne, words",
    [([], "0 dimensions"), ([1, 1, 1, 1, 1], "5 dimensions"), ([0], "absurd dimensions"), ([2**63], "absurd dimensions"),
     ([2**30, 2**30], "absurd dimensions"), ([2**24, 2**24, 2**24, 2**24], "absurd dimensions")],
)
def test_absurd_dimensions(tmp_path, ne, words):
    blob = gguf_file([], [tensor_info("w", ne, Q.F32, 0)], bytes(64))
    assert_fails_small(tmp_path, blob, "'w'", words)


def test_huge_tensor_offset(tmp_path):
    blob = gguf_file([], [tensor_info("w", [4], Q.F32, 2**64 - 32)], bytes(64))
    expect_error(tmp_path, blob, "'w'", "past the end")


def test_arrays_nested_too_deeply(tmp_path):
    value = array(VT.INT32, [1])
    for _ in range(20):
        value = array(VT.ARRAY, [value])
    expect_error(tmp_path, gguf_file([kv("k", value)]), "nested too deeply")


def test_directory_is_not_a_model(tmp_path):
    with pytest.raises(GGUFError, match="not a regular file"):
        GGUFReader(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="file not found"):
        GGUFReader(tmp_path / "nope.gguf")
