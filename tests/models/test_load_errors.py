"""Model files kamado cannot run: the error names the file and what is wrong, and lists the supported architectures."""

from __future__ import annotations

import numpy as np
import pytest

from kamado.cli.main import main as kamado_main
from kamado.gguf import GGUFReader, GGUFWriter
from kamado.models import ARCHITECTURES, ModelError, load_model


def _rewrite(source, target, architecture: str | None = "llama", drop_tensor: str | None = None):
    """A copy of a GGUF file with general.architecture replaced (None: removed) and one tensor left out."""
    reader = GGUFReader(source)
    writer = GGUFWriter(target)
    for field in reader.fields.values():
        if field.name == "general.architecture":
            if architecture is not None:
                writer.add_field(field.name, architecture, field.type)
        else:
            writer.add_field(field.name, field.value, field.type, field.item_type)
    for tensor in reader.tensors.values():
        if tensor.name != drop_tensor:
            writer.add_tensor(tensor.name, tensor.type, tensor.shape, np.asarray(tensor.raw))
    writer.write()
    return target


@pytest.fixture(scope="module")
def llama_gguf(reference_gguf):
    return reference_gguf("llama-spm")


def _assert_lists_supported(message: str) -> None:
    assert all(name in message for name in ARCHITECTURES), message


def test_unknown_architecture(llama_gguf, tmp_path):
    path = _rewrite(llama_gguf, tmp_path / "mamba.gguf", architecture="mamba")
    with pytest.raises(ModelError, match="unknown architecture 'mamba'") as caught:
        load_model(GGUFReader(path))
    assert str(path) in str(caught.value)
    _assert_lists_supported(str(caught.value))


def test_missing_architecture_key(llama_gguf, tmp_path):
    path = _rewrite(llama_gguf, tmp_path / "anonymous.gguf", architecture=None)
    with pytest.raises(ModelError, match="metadata key general.architecture is missing") as caught:
        load_model(GGUFReader(path))
    _assert_lists_supported(str(caught.value))


@pytest.mark.parametrize("tensor", ["blk.1.ffn_down.weight", "token_embd.weight", "output_norm.weight"])
def test_missing_tensor(llama_gguf, tmp_path, tensor):
    path = _rewrite(llama_gguf, tmp_path / "incomplete.gguf", drop_tensor=tensor)
    with pytest.raises(ModelError, match=f"llama model: tensor {tensor} is missing") as caught:
        load_model(GGUFReader(path))
    assert str(path) in str(caught.value)
    _assert_lists_supported(str(caught.value))


def test_the_run_command_reports_it_in_one_line(llama_gguf, tmp_path, capsys):
    path = _rewrite(llama_gguf, tmp_path / "mamba.gguf", architecture="mamba")
    with pytest.raises(SystemExit) as caught:
        kamado_main(["run", "-m", str(path), "-p", "Hello", "-n", "1", "-no-cnv"])
    assert caught.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kamado: error:") and "unknown architecture 'mamba'" in err[0]
    _assert_lists_supported(err[0])
