import struct

import gguf
import numpy as np
import pytest

from kamado.quants import read_imatrix
from kamado.quants.imatrix import ImatrixError


def _write_gguf_imatrix(path, entries, metadata=True):
    """entries: name -> (in_sum2 (n_expert, n) float32, counts (n_expert,) float32)."""
    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    if metadata:
        writer.add_array("imatrix.datasets", ["calibration.txt"])
        writer.add_uint32("imatrix.chunk_count", 4)
        writer.add_uint32("imatrix.chunk_size", 512)
    for name, (sums, counts) in entries.items():
        writer.add_tensor(f"{name}.in_sum2", np.asarray(sums, dtype=np.float32))
        writer.add_tensor(f"{name}.counts", np.asarray(counts, dtype=np.float32).reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_legacy_imatrix(path, entries, trailer=True):
    """entries: name -> (ncall, values)."""
    out = struct.pack("<i", len(entries))
    for name, (ncall, values) in entries.items():
        encoded = name.encode()
        values = np.asarray(values, dtype="<f4")
        out += struct.pack("<i", len(encoded)) + encoded + struct.pack("<ii", ncall, values.size) + values.tobytes()
    if trailer:
        out += struct.pack("<i", 4) + struct.pack("<i", 8) + b"data.txt"
    path.write_bytes(out)


def test_gguf_values_are_sums_over_counts_per_expert(tmp_path):
    sums = np.array([[3.0, 6.0, 9.0], [1.0, 2.0, 7.0], [5.0, 5.0, 5.0]], dtype=np.float32)
    counts = np.array([3.0, 0.0, 2.0], dtype=np.float32)  # the second expert was never routed to
    _write_gguf_imatrix(tmp_path / "m.gguf", {"blk.0.ffn_up_exps.weight": (sums, counts), "blk.0.attn_q.weight": ([[2.0, 4.0]], [4.0])})
    values = read_imatrix(tmp_path / "m.gguf")
    assert values["blk.0.ffn_up_exps.weight"].tolist() == [1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 2.5, 2.5, 2.5]
    assert values["blk.0.attn_q.weight"].tolist() == [0.5, 1.0]
    assert values["blk.0.attn_q.weight"].dtype == np.float32


def test_legacy_values_are_divided_by_the_call_count(tmp_path):
    _write_legacy_imatrix(tmp_path / "m.dat", {"a.weight": (4, [8.0, 2.0]), "b.weight": (0, [3.0])})
    values = read_imatrix(tmp_path / "m.dat")
    assert values["a.weight"].tolist() == [2.0, 0.5]
    assert values["b.weight"].tolist() == [3.0]  # a call count of 0 leaves the values as stored


def test_legacy_trailer_is_optional(tmp_path):
    _write_legacy_imatrix(tmp_path / "m.dat", {"a.weight": (2, [8.0])}, trailer=False)
    assert read_imatrix(tmp_path / "m.dat")["a.weight"].tolist() == [4.0]


def test_reference_files_give_the_same_weights_in_both_formats(shared):
    from_gguf = read_imatrix(shared / "reference" / "imatrix-seed001.gguf")
    from_dat = read_imatrix(shared / "reference" / "imatrix-seed001.dat")
    assert from_gguf.keys() == from_dat.keys() and len(from_gguf) == 126
    for name in from_gguf:
        assert np.array_equal(from_gguf[name], from_dat[name]), name


def test_reference_gguf_matches_gguf_py_reading(shared):
    path = shared / "reference" / "imatrix-seed001.gguf"
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in gguf.GGUFReader(path).tensors}
    values = read_imatrix(path)
    name = "blk.3.ffn_down.weight"
    expected = tensors[f"{name}.in_sum2"] / np.float32(round(float(tensors[f"{name}.counts"][0])))
    assert values[name].shape == (2048,)
    assert np.array_equal(values[name], expected)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "truncated"),
        (struct.pack("<i", 0), "entry count 0"),
        (struct.pack("<i", 2) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 1, 1) + b"\0\0\x80\x3f", "truncated"),
        (struct.pack("<i", 1) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 1, 1 << 30), "truncated"),
        (struct.pack("<i", 1) + struct.pack("<i", -5), "negative length"),
        (struct.pack("<i", 1) + struct.pack("<i", 1) + b"a" + struct.pack("<ii", 1, 0), "0 values"),
    ],
    ids=["empty", "no-entries", "missing-entry", "huge-count", "negative-length", "no-values"],
)
def test_bad_legacy_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.dat"
    path.write_bytes(content)
    with pytest.raises(ImatrixError, match=message) as err:
        read_imatrix(path)
    assert str(path) in str(err.value)


def test_gguf_without_metadata_is_refused_like_llama_quantize(tmp_path):
    _write_gguf_imatrix(tmp_path / "m.gguf", {"a.weight": ([[1.0]], [1.0])}, metadata=False)
    with pytest.raises(ImatrixError, match="imatrix.datasets"):
        read_imatrix(tmp_path / "m.gguf")


def test_gguf_with_sums_but_no_counts_is_refused(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), arch="imatrix")
    writer.add_array("imatrix.datasets", ["x"])
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_uint32("imatrix.chunk_size", 1)
    writer.add_tensor("a.weight.in_sum2", np.ones((1, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ImatrixError, match="a.weight has no counts"):
        read_imatrix(tmp_path / "m.gguf")


def test_corrupt_gguf_and_missing_file_name_the_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 7)
    with pytest.raises(ImatrixError, match="broken.gguf"):
        read_imatrix(path)
    with pytest.raises(ImatrixError, match="absent.dat"):
        read_imatrix(tmp_path / "absent.dat")
