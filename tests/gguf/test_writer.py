"""The writer: value types, round trips (checked with our reader and gguf-py's), atomic output, split shards."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as VT
from hypothesis import given, settings
from hypothesis import strategies as st

from kamado.gguf import GGUFError, GGUFReader, GGUFWriter, NestedArray
from tests.gguf.craft import array, gguf_file, kv, scalar, tensor_info


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gguf_py_fields(path) -> dict:
    """name -> (types, contents) as gguf-py reads them, without its GGUF.* header pseudo-fields."""
    r = gguf.GGUFReader(path)
    return {f.name: (f.types, f.contents()) for f in r.fields.values() if not f.name.startswith("GGUF.")}


def test_inferred_types(tmp_path):
    w = GGUFWriter(tmp_path / "m.gguf")
    values = {
        "s": ("text", VT.STRING, None),
        "b": (True, VT.BOOL, None),
        "u": (7, VT.UINT32, None),
        "u_max": (2**32 - 1, VT.UINT32, None),
        "neg": (-7, VT.INT32, None),
        "big": (2**32, VT.INT64, None),
        "very_neg": (-(2**31) - 1, VT.INT64, None),
        "huge": (2**63, VT.UINT64, None),
        "f": (0.1, VT.FLOAT32, None),
        "np16": (np.uint16(9), VT.UINT16, None),
        "np64": (np.float64(0.1), VT.FLOAT64, None),
        "strs": (["a", "b"], VT.ARRAY, VT.STRING),
        "ints": ([1, 2], VT.ARRAY, VT.UINT32),
        "mixed_ints": ([-1, 2], VT.ARRAY, VT.INT32),
        "u64s": ([0, 2**63 + 1], VT.ARRAY, VT.UINT64),
        "floats": ([1, 2.5], VT.ARRAY, VT.FLOAT32),
        "bools": ([True, False], VT.ARRAY, VT.BOOL),
        "arr_i8": (np.array([1, -2], np.int8), VT.ARRAY, VT.INT8),
        "arr_f64": (np.array([0.5]), VT.ARRAY, VT.FLOAT64),
        "arr_bool": (np.array([True]), VT.ARRAY, VT.BOOL),
        "nested": ([[1, 2], ["x"]], VT.ARRAY, VT.ARRAY),
    }
    for name, (value, _, _) in values.items():
        w.add_field(name, value)
    (path,) = w.write()
    r = GGUFReader(path)
    assert list(r.fields) == list(values)
    for name, (_, vtype, item) in values.items():
        f = r.fields[name]
        assert (f.type, f.item_type) == (vtype, item), name
    m = r.metadata
    assert m["u_max"] == 2**32 - 1 and m["big"] == 2**32 and m["huge"] == 2**63 and m["very_neg"] == -(2**31) - 1
    assert m["u64s"].tolist() == [0, 2**63 + 1]
    assert m["f"] == float(np.float32(0.1)) and m["np64"] == 0.1
    assert m["nested"][0].tolist() == [1, 2] and m["nested"][0].dtype == np.uint32
    assert m["nested"][1] == ["x"] and m["nested"][1].item_type == VT.STRING


def test_explicit_types_round_trip_through_gguf_py(tmp_path):
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_field("u8", 255, VT.UINT8)
    w.add_field("i16", -2, VT.INT16)
    w.add_field("u64", 5, VT.UINT64)
    w.add_field("f64", 0.1, VT.FLOAT64)
    w.add_field("ids", [1, 2, 3], item_type=VT.INT32)
    w.add_field("scores", np.array([0.5, 1.5], np.float32))
    w.add_field("empty", [], item_type=VT.STRING)
    w.add_field("nested", [np.array([1, 2], np.uint8), NestedArray(["a"], VT.STRING)], item_type=VT.ARRAY)
    (path,) = w.write()
    theirs = gguf_py_fields(path)
    assert theirs["u8"] == ([VT.UINT8], 255)
    assert theirs["i16"] == ([VT.INT16], -2)
    assert theirs["u64"] == ([VT.UINT64], 5)
    assert theirs["f64"] == ([VT.FLOAT64], 0.1)
    assert theirs["ids"] == ([VT.ARRAY, VT.INT32], [1, 2, 3])
    assert theirs["scores"] == ([VT.ARRAY, VT.FLOAT32], [0.5, 1.5])
    assert theirs["empty"][1] == [] and GGUFReader(path).fields["empty"].item_type == VT.STRING  # gguf-py omits the type of []
    assert theirs["nested"][0][:2] == [VT.ARRAY, VT.ARRAY]


def test_bytes_identical_to_gguf_py_writer(tmp_path):
    """gguf-py (maintained with llama.cpp) writing the same content must produce the same bytes, split or not."""
    rng = np.random.default_rng(0)
    tensors = [("a.weight", Q.F32, rng.standard_normal((3, 64)).astype(np.float32)),
               ("b", Q.F32, rng.standard_normal(5).astype(np.float32)),
               ("c", Q.F16, rng.standard_normal((2, 2, 32)).astype(np.float16)), ("d", Q.I32, np.arange(7, dtype=np.int32)),
               ("e", Q.F32, rng.standard_normal(33).astype(np.float32))]
    for split in (0, 2):
        ref = gguf.GGUFWriter(tmp_path / "ref.gguf", "llama", split_max_tensors=split)
        ref.add_uint32("x.u", 5)
        ref.add_string("x.s", "héllo")
        ref.add_array("x.arr", ["a", "bb"])
        ref.add_float32("x.f", 0.5)
        ref.add_bool("x.b", True)
        for name, _, a in tensors:
            ref.add_tensor(name, a)
        ref.write_header_to_file()
        ref.write_kv_data_to_file()
        ref.write_tensors_to_file()
        ref.close()

        w = GGUFWriter(tmp_path / "ours.gguf")
        fields = [("general.architecture", "llama"), ("x.u", 5), ("x.s", "héllo"), ("x.arr", ["a", "bb"]), ("x.f", 0.5), ("x.b", True)]
        for name, value in fields:
            w.add_field(name, value)
        for name, qtype, a in tensors:
            w.add_tensor(name, qtype, a.shape, a)
        ours = w.write(split_max_tensors=split or None)
        refs = sorted(tmp_path.glob("ref*.gguf")) if split else [tmp_path / "ref.gguf"]
        assert [p.name.replace("ours", "ref") for p in ours] == [p.name for p in refs]
        assert [sha(p) for p in ours] == [sha(p) for p in refs]
        for p in list(tmp_path.iterdir()):
            p.unlink()


def test_tensor_round_trip_and_alignment(tmp_path):
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (3, 2 * 18), dtype=np.uint8)  # 3 rows of two Q4_0 blocks
    f = rng.standard_normal((2, 5)).astype(np.float32)
    bf = rng.integers(0, 2**16, 7, dtype=np.uint16)
    for alignment in (32, 64, 1):
        w = GGUFWriter(tmp_path / f"a{alignment}.gguf", alignment=alignment)
        w.add_field("general.architecture", "llama")
        w.add_tensor("q", Q.Q4_0, (3, 64), q)
        w.add_tensor("f", Q.F32, (2, 5), f)
        w.add_tensor("bf", Q.BF16, (7,), bf)
        (path,) = w.write()
        r = GGUFReader(path)
        assert ("general.alignment" in r.fields) == (alignment != 32)
        assert r.alignment == alignment
        assert r.tensors["q"].type == Q.Q4_0 and r.tensors["q"].shape == (3, 64)
        assert np.array_equal(r.tensors["q"].raw, q)
        assert np.array_equal(r.tensors["f"].raw.view(np.float32), f)
        assert np.array_equal(r.tensors["bf"].raw.view(np.uint16), bf)
        assert all(t.offset % alignment == 0 for t in r.tensors.values())
        theirs = gguf.GGUFReader(path)  # an independent reader agrees on layout and bytes
        assert {t.name: bytes(t.data.tobytes()) for t in theirs.tensors} == {n: t.raw.tobytes() for n, t in r.tensors.items()}


def test_copy_fields_keeps_exact_types(tmp_path):
    kvs = [kv("u8", scalar(VT.UINT8, 3)), kv("i64", scalar(VT.INT64, 3)), kv("f64", scalar(VT.FLOAT64, 3.0)),
           kv("bools", array(VT.BOOL, [True, False])), kv("u16s", array(VT.UINT16, [1, 2])), kv("empty", array(VT.FLOAT32, [])),
           kv("bad_utf8", array(VT.STRING, [b"\xff", b"ok"])),
           kv("nested", array(VT.ARRAY, [array(VT.ARRAY, [array(VT.INT16, [1]), array(VT.STRING, [])]), array(VT.UINT64, [])]))]
    src = tmp_path / "src.gguf"
    src.write_bytes(gguf_file(kvs))
    w = GGUFWriter(tmp_path / "copy.gguf")
    w.add_fields_from(GGUFReader(src).fields)
    (path,) = w.write()
    assert sha(path) == sha(src)


def test_field_set_again_moves_to_the_end(tmp_path):
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_field("a", 1)
    w.add_field("b", 2)
    w.add_field("a", "three")
    (path,) = w.write()
    r = GGUFReader(path)
    assert list(r.fields) == ["b", "a"] and r.get("a") == "three"


def test_lazy_tensor_data_is_produced_at_write_time(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return np.ones(4, np.float32)

    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_tensor("t", Q.F32, (4,), make)
    assert calls == []
    (path,) = w.write()
    assert calls == [1]
    assert GGUFReader(path).tensors["t"].raw.view(np.float32).tolist() == [1, 1, 1, 1]


def test_tensor_data_in_pieces(tmp_path):
    data = np.arange(40, dtype=np.float32)
    pieces = np.frombuffer(data.tobytes(), np.uint8)
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_tensor("t", Q.F32, (40,), lambda: iter([pieces[:24], pieces[24:100], pieces[100:]]))
    (path,) = w.write()
    assert np.array_equal(GGUFReader(path).tensors["t"].raw.view(np.float32), data)


@pytest.mark.parametrize("pieces", [[np.zeros(8, np.uint8)], [np.zeros(16, np.uint8), np.zeros(1, np.uint8)], [np.zeros(4, np.float32)]])
def test_tensor_pieces_of_the_wrong_size_or_type(tmp_path, pieces):
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_tensor("t", Q.F32, (4,), lambda: iter(pieces))
    with pytest.raises(GGUFError, match="tensor 't': data pieces must be uint8 arrays adding up to 16 bytes"):
        w.write()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda w: w.add_field("", 1), "non-empty"),
        (lambda w: w.add_field("k", 300, VT.UINT8), "300 does not fit in UINT8"),
        (lambda w: w.add_field("k", -1, VT.UINT32), "-1 does not fit in UINT32"),
        (lambda w: w.add_field("k", 2**64), "does not fit in 64 bits"),
        (lambda w: w.add_field("k", 2**70, VT.UINT64), "does not fit in UINT64"),
        (lambda w: w.add_field("k", 1e300, VT.FLOAT32), "does not fit in FLOAT32"),
        (lambda w: w.add_field("k", 1, VT.BOOL), "must be booleans"),
        (lambda w: w.add_field("k", [[1, 2], [3]], item_type=VT.UINT8), "UINT8 value expected, got list"),
        (lambda w: w.add_field("k", np.zeros((2, 2), np.uint8), item_type=VT.UINT8), "flat sequence"),
        (lambda w: w.add_field("k", [2**63, 1], item_type=VT.INT64), "does not fit in INT64"),
        (lambda w: w.add_field("k", []), "empty array"),
        (lambda w: w.add_field("k", [1, "a"]), "mixed types"),
        (lambda w: w.add_field("k", {"a": 1}), "cannot infer"),
        (lambda w: w.add_field("k", 1.5, VT.INT32), "must be integers"),
        (lambda w: w.add_field("k", 5, VT.STRING), "must be a str"),
        (lambda w: w.add_field("k", 5, 99), "unknown value type 99"),
        (lambda w: w.add_field("general.alignment", 64), "aligns to 32"),
        (lambda w: w.add_tensor("t", Q.F32, (4,), np.ones(3, np.float32)), "needs 16"),
        (lambda w: w.add_tensor("t", Q.F16, (4,), np.ones(4, np.float32)), "F16 data must be uint8 bytes or float16"),
        (lambda w: w.add_tensor("t", Q.Q4_0, (32,), np.ones(18, np.int8)), "Q4_0 data must be uint8 bytes"),
        (lambda w: w.add_tensor("t", Q.Q4_0, (48,), np.zeros(27, np.uint8)), "block size 32"),
        (lambda w: w.add_tensor("t", 36, (4,), np.zeros(4, np.uint8)), "unknown tensor type"),
        (lambda w: w.add_tensor("t", Q.F32, (), np.zeros(4, np.uint8)), "positive dimensions"),
        (lambda w: w.add_tensor("t", Q.F32, (1, 1, 1, 1, 1), np.zeros(4, np.uint8)), "positive dimensions"),
        (lambda w: w.add_tensor("t", Q.F32, (0,), np.zeros(0, np.uint8)), "positive dimensions"),
        (lambda w: w.add_tensor("x" * 64, Q.F32, (1,), np.zeros(4, np.uint8)), "longer than 63 bytes"),
        (lambda w: w.write(split_max_size=10, split_max_tensors=1), "not both"),
        (lambda w: w.write(split_max_tensors=0), "positive integer"),
    ],
)
def test_bad_input_names_the_problem(tmp_path, call, words):
    w = GGUFWriter(tmp_path / "m.gguf")
    with pytest.raises(GGUFError) as e:
        call(w)
    assert words in str(e.value) and str(tmp_path / "m.gguf") in str(e.value)


def test_duplicate_tensor(tmp_path):
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_tensor("t", Q.F32, (1,), np.zeros(1, np.float32))
    with pytest.raises(GGUFError, match="'t' added twice"):
        w.add_tensor("t", Q.F32, (1,), np.zeros(1, np.float32))


@pytest.mark.parametrize("alignment", [0, 3, 48, 2**32])
def test_bad_alignment(tmp_path, alignment):
    with pytest.raises(GGUFError, match="power of two"):
        GGUFWriter(tmp_path / "m.gguf", alignment=alignment)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, GGUFError, OSError])
@pytest.mark.parametrize("split", [None, 1])
def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path, failure, split):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"old model")

    def boom():
        if failure is GGUFError:
            return np.zeros(3, np.float32)  # wrong size: the writer refuses it
        raise failure("stop")

    w = GGUFWriter(target)
    w.add_field("general.architecture", "llama")
    w.add_tensor("a", Q.F32, (4,), np.zeros(4, np.float32))
    w.add_tensor("b", Q.F32, (4,), boom)
    with pytest.raises(GGUFError if failure is OSError else failure):
        w.write(split_max_tensors=split)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert target.read_bytes() == b"old model"


def test_unwritable_target_names_it(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "m.gguf"
    with pytest.raises(GGUFError, match=f"{target}: cannot write"):
        GGUFWriter(target).write()


def test_output_is_world_readable_as_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        (path,) = GGUFWriter(tmp_path / "m.gguf").write()
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def _model_for_split(tmp_path, sizes):
    w = GGUFWriter(tmp_path / "model.gguf")
    w.add_field("general.architecture", "llama")
    w.add_field("general.name", "split test")
    arrays = {}
    for i, n in enumerate(sizes):
        arrays[f"t{i}"] = np.full(n, i, np.uint8)
        w.add_tensor(f"t{i}", Q.I8, (n,), arrays[f"t{i}"])
    return w, arrays


def test_split_by_tensor_count(tmp_path):
    w, arrays = _model_for_split(tmp_path, [10, 20, 30, 40, 50])
    paths = w.write(split_max_tensors=2)
    assert [p.name for p in paths] == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for i, p in enumerate(paths):
        theirs = gguf_py_fields(p)
        assert theirs["split.no"] == ([VT.UINT16], i)
        assert theirs["split.count"] == ([VT.UINT16], 3)
        assert theirs["split.tensors.count"] == ([VT.INT32], 5)
        assert ("general.name" in theirs) == (i == 0)  # metadata in the first shard only
        assert list(theirs)[-3:] == ["split.no", "split.count", "split.tensors.count"]
    assert [len(GGUFReader(p).shards[i].tensors) for i, p in enumerate(paths)] == [2, 2, 1]
    for p in paths:  # any shard opens the whole model
        r = GGUFReader(p)
        assert r.get("general.name") == "split test"
        assert {n: t.raw.tobytes() for n, t in r.tensors.items()} == {n: a.tobytes() for n, a in arrays.items()}


def test_split_by_size_like_gguf_split(tmp_path):
    # gguf-split counts tensor data padded to 32 bytes: 40 -> 64, 20 -> 32, 100 -> 128
    w, _ = _model_for_split(tmp_path, [40, 20, 20, 100, 10])
    paths = w.write(split_max_size=128)
    shards = GGUFReader(paths[0]).shards
    assert [list(s.tensors) for s in shards] == [["t0", "t1", "t2"], ["t3"], ["t4"]]


def test_tensor_larger_than_split_size_gets_its_own_shard(tmp_path):
    w, _ = _model_for_split(tmp_path, [10, 1000, 10])
    shards = GGUFReader(w.write(split_max_size=100)[0]).shards
    assert [list(s.tensors) for s in shards] == [["t0"], ["t1"], ["t2"]]


def test_split_into_one_shard_writes_a_plain_file(tmp_path):
    w, _ = _model_for_split(tmp_path, [10, 20])
    (path,) = w.write(split_max_tensors=10)
    assert path.name == "model.gguf"
    assert not any(k.startswith("split.") for k in GGUFReader(path).fields)


def test_copied_split_keys_are_replaced(tmp_path):
    w, _ = _model_for_split(tmp_path, [10, 20])
    w.add_field("split.count", 7, VT.UINT16)  # stale, e.g. copied from a split source
    (path,) = w.write()
    assert "split.count" not in GGUFReader(path).fields


def test_alignment_written_in_every_shard(tmp_path):
    w = GGUFWriter(tmp_path / "model.gguf", alignment=64)
    for i in range(3):
        w.add_tensor(f"t{i}", Q.F32, (3,), np.full(3, i, np.float32))
    paths = w.write(split_max_tensors=1)
    for p in paths:
        assert gguf_py_fields(p)["general.alignment"] == ([VT.UINT32], 64)
    r = GGUFReader(paths[1])
    assert [t.raw.view(np.float32)[0] for t in r.tensors.values()] == [0, 1, 2]


def test_missing_shard(tmp_path):
    w, _ = _model_for_split(tmp_path, [10, 20, 30])
    paths = w.write(split_max_tensors=1)
    paths[1].unlink()
    with pytest.raises(GGUFError) as e:
        GGUFReader(paths[0])
    assert str(paths[1]) in str(e.value) and "file not found" in str(e.value) and "shard 2 of 3" in str(e.value)


def test_shard_with_wrong_split_number(tmp_path):
    w, _ = _model_for_split(tmp_path, [10, 20])
    paths = w.write(split_max_tensors=1)
    paths[0].rename(tmp_path / "x.gguf")
    paths[1].rename(paths[0])
    (tmp_path / "x.gguf").rename(paths[1])
    with pytest.raises(GGUFError, match="split.no is 1 but the file name makes it shard 0"):
        GGUFReader(paths[0])


def test_split_count_disagrees_with_file_names(tmp_path):
    w, _ = _model_for_split(tmp_path, [10, 20, 30])
    paths = w.write(split_max_tensors=1)
    renamed = tmp_path / "model.gguf"
    paths[0].rename(renamed)
    with pytest.raises(GGUFError, match="says the model has 3 shards"):
        GGUFReader(renamed)
    for i, p in enumerate(paths[1:], 1):
        p.rename(tmp_path / f"model-0000{i}-of-00002.gguf")
    renamed.rename(tmp_path / "model-00000-of-00002.gguf")
    with pytest.raises(GGUFError, match="shard number 0 of 2"):
        GGUFReader(tmp_path / "model-00000-of-00002.gguf")


def test_split_tensor_total_checked(tmp_path):
    kvs = [kv("split.no", scalar(VT.UINT16, 0)), kv("split.count", scalar(VT.UINT16, 2)), kv("split.tensors.count", scalar(VT.INT32, 3))]
    (tmp_path / "m-00001-of-00002.gguf").write_bytes(gguf_file(kvs, [tensor_info("a", [1], Q.I8, 0)], bytes(32)))
    kvs2 = [kv("split.no", scalar(VT.UINT16, 1)), kv("split.count", scalar(VT.UINT16, 2)), kv("split.tensors.count", scalar(VT.INT32, 3))]
    (tmp_path / "m-00002-of-00002.gguf").write_bytes(gguf_file(kvs2, [tensor_info("b", [1], Q.I8, 0)], bytes(32)))
    with pytest.raises(GGUFError, match="split.tensors.count is 3 but the 2 shards hold 2 tensors"):
        GGUFReader(tmp_path / "m-00002-of-00002.gguf")


_INT_RANGES = {VT.UINT8: (0, 2**8 - 1), VT.INT8: (-(2**7), 2**7 - 1), VT.UINT16: (0, 2**16 - 1), VT.INT16: (-(2**15), 2**15 - 1),
               VT.UINT32: (0, 2**32 - 1), VT.INT32: (-(2**31), 2**31 - 1), VT.UINT64: (0, 2**64 - 1), VT.INT64: (-(2**63), 2**63 - 1)}


def _scalar_values(vtype):
    if vtype in _INT_RANGES:
        return st.integers(*_INT_RANGES[vtype])
    if vtype == VT.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vtype == VT.FLOAT64:
        return st.floats(allow_nan=False)
    if vtype == VT.BOOL:
        return st.booleans()
    return st.text(max_size=20)


_SCALAR_TYPES = [*_INT_RANGES, VT.FLOAT32, VT.FLOAT64, VT.BOOL, VT.STRING]
_typed_field = st.one_of(
    st.sampled_from(_SCALAR_TYPES).flatmap(lambda t: st.tuples(st.just(t), st.just(None), _scalar_values(t))),
    st.sampled_from(_SCALAR_TYPES).flatmap(lambda t: st.tuples(st.just(VT.ARRAY), st.just(t), st.lists(_scalar_values(t), max_size=5))),
)


@settings(max_examples=150, deadline=None)
@given(fields=st.lists(_typed_field, min_size=1, max_size=8))
def test_any_typed_fields_round_trip(fields):
    with tempfile.TemporaryDirectory() as d:
        w = GGUFWriter(Path(d) / "m.gguf")
        for i, (vtype, item, value) in enumerate(fields):
            w.add_field(f"k{i}", value, vtype, item)
        (path,) = w.write()
        r = GGUFReader(path)
        for i, (vtype, item, value) in enumerate(fields):
            f = r.fields[f"k{i}"]
            assert (f.type, f.item_type) == (vtype, item)
            got = f.value.tolist() if isinstance(f.value, np.ndarray) else f.value
            assert got == value
