"""Checkpoint formats (sharded safetensors, PyTorch .bin) and clear errors for bad input folders."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from kamado.convert import ConvertError, convert, plan, supported_architectures
from tests.convert.reference_models import reference_dir


@pytest.fixture
def llama_copy(shared, tmp_path):
    """A writable copy of the llama-spm reference checkpoint."""
    target = tmp_path / "llama-spm"
    shutil.copytree(reference_dir(shared) / "hf" / "llama-spm", target)
    for p in target.iterdir():
        p.chmod(0o644)
    return target


def _tensor_hashes(path):
    from kamado.gguf.reader import GGUFReader

    return [(t.name, t.type, hashlib.sha256(t.raw.tobytes()).hexdigest()) for t in GGUFReader(path).tensors.values()]


def _shard(folder):
    """Split model.safetensors into two files with an index, as Hugging Face saves large models."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, folder / file, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in halves.items() for n in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return halves


def test_sharded_safetensors_give_the_same_file(converted, llama_copy, tmp_path):
    _shard(llama_copy)
    out = convert(llama_copy, tmp_path / "sharded.gguf", "f16")[0]
    assert out.read_bytes() == converted("llama-spm", "f16").read_bytes()


def test_pytorch_bin_gives_the_same_tensors(converted, llama_copy, tmp_path):
    tensors = load_file(llama_copy / "model.safetensors")
    (llama_copy / "model.safetensors").unlink()
    torch.save(tensors, llama_copy / "pytorch_model.bin")
    out = convert(llama_copy, tmp_path / "bin.gguf", "q8_0")[0]
    assert _tensor_hashes(out) == _tensor_hashes(converted("llama-spm", "q8_0"))


def test_missing_shard_is_named(llama_copy):
    halves = _shard(llama_copy)
    missing = sorted(halves)[1]
    (llama_copy / missing).unlink()
    with pytest.raises(ConvertError, match=missing):
        plan(llama_copy)


def test_index_disagreeing_with_shards_is_reported(llama_copy):
    _shard(llama_copy)
    index_path = llama_copy / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConvertError, match=r"model\.safetensors\.index\.json.*model\.layers\.9\.mlp\.up_proj\.weight"):
        plan(llama_copy)


def test_corrupt_safetensors_header_names_the_file(llama_copy):
    data = (llama_copy / "model.safetensors").read_bytes()
    (llama_copy / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ConvertError, match=r"model\.safetensors.*corrupt safetensors header"):
        plan(llama_copy)


def test_truncated_safetensors_names_the_tensor(llama_copy):
    path = llama_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConvertError, match=r"model\.safetensors: tensor 'model\.norm\.weight'"):
        plan(llama_copy)


def test_missing_config_and_weights(tmp_path, llama_copy):
    with pytest.raises(ConvertError, match=r"config\.json: file not found"):
        plan(tmp_path)
    (llama_copy / "model.safetensors").unlink()
    with pytest.raises(ConvertError, match="no weights found"):
        plan(llama_copy)


def test_unsupported_architecture_lists_the_supported_ones(llama_copy):
    config = json.loads((llama_copy / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (llama_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match="GPTNeoXForCausalLM") as err:
        plan(llama_copy)
    assert all(name in str(err.value) for name in supported_architectures())
    assert "Qwen3ForCausalLM" in str(err.value)


def test_pickle_that_is_not_weights_only_is_refused(llama_copy):
    (llama_copy / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(2), "callback": print}, llama_copy / "pytorch_model.bin")
    with pytest.raises(ConvertError, match=r"pytorch_model\.bin: cannot load"):
        plan(llama_copy)
