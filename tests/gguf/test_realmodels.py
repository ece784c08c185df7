"""The reader and writer on the real Gemma 3 270M and Qwen2.5-Coder-0.5B files, against gguf-py and the files' own bytes."""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest

from kamado.gguf import GGUFReader, GGUFWriter
from tests import realmodels

pytestmark = pytest.mark.realmodel
MODELS = {"gemma": realmodels.gemma_path, "qwen": realmodels.qwen_path}


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def copy_model(reader: GGUFReader, out, **split) -> list:
    w = GGUFWriter(out, alignment=reader.alignment)
    w.add_fields_from(reader.fields)
    for t in reader.tensors.values():
        w.add_tensor(t.name, t.type, t.shape, t.raw)
    return w.write(**split)


@pytest.mark.slow  # gguf-py takes ~10 s per model to parse the vocabulary
@pytest.mark.parametrize("model", list(MODELS))
def test_reader_agrees_with_gguf_py(model):
    path = MODELS[model]()
    ours = GGUFReader(path)
    theirs = gguf.GGUFReader(path)
    their_fields = {f.name: f for f in theirs.fields.values() if not f.name.startswith("GGUF.")}
    assert list(ours.fields) == list(their_fields)
    for name, f in ours.fields.items():
        tf = their_fields[name]
        assert tf.types[0] == f.type, name
        if f.item_type is not None:
            assert tf.types[1] == f.item_type, name
        value = f.value.tolist() if isinstance(f.value, np.ndarray) else f.value
        assert value == tf.contents(), name
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for tt in theirs.tensors:
        t = ours.tensors[tt.name]
        assert t.type == tt.tensor_type and t.shape == tuple(int(d) for d in reversed(tt.shape)), t.name
        assert t.offset == tt.data_offset and t.nbytes == tt.n_bytes, t.name
        assert np.array_equal(t.raw.reshape(-1), tt.data.view(np.uint8).reshape(-1)), t.name


@pytest.mark.parametrize("model", list(MODELS))
def test_rewrite_is_byte_identical(model, tmp_path):
    """Every field and tensor read back and written again gives llama.cpp's file, byte for byte."""
    path = MODELS[model]()
    (out,) = copy_model(GGUFReader(path), tmp_path / "copy.gguf")
    assert out.stat().st_size == path.stat().st_size
    assert sha256(out) == sha256(path)


def test_split_real_model_opens_as_one(gemma_path, tmp_path):
    original = GGUFReader(gemma_path)
    paths = copy_model(original, tmp_path / "gemma.gguf", split_max_size=64 * 10**6)
    assert len(paths) > 2
    for p in paths[1:]:  # shards are valid GGUF files for gguf-py too (the first is slow for it: the vocabulary)
        assert {f.name for f in gguf.GGUFReader(p).fields.values()} >= {"split.no", "split.count", "split.tensors.count"}
    split = GGUFReader(paths[-1])
    assert len(split.shards) == len(paths)
    assert {k: f.type for k, f in split.fields.items() if not k.startswith("split.")} == {k: f.type for k, f in original.fields.items()}
    assert split.get("tokenizer.ggml.tokens") == original.get("tokenizer.ggml.tokens")
    assert list(split.tensors) == list(original.tensors)
    for name, t in original.tensors.items():
        assert split.tensors[name].type == t.type and np.array_equal(split.tensors[name].raw, t.raw), name
    # size rule of gguf-split: a shard's padded tensor data stays under the limit unless it holds a single tensor
    for shard in split.shards:
        data = sum(-(-t.nbytes // 32) * 32 for t in shard.tensors.values())
        assert data <= 64 * 10**6 or len(shard.tensors) == 1
