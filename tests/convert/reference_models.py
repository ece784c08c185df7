"""The tiny reference checkpoints (../shared/reference/convert/hf/NAME) converted to GGUF by kamado, once per session.

Any test can use them:
    from tests.convert.reference_models import converted_model
    path = converted_model(shared, tmp_path_factory.getbasetemp(), "llama-spm", "f32")
or, inside tests/convert/, the `converted(name, outtype)` fixture from conftest.py.
qwen3-bpe gets qwen2-bpe's tokenizer.json copied next to it in a private copy, as the reference README asks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kamado.convert import convert

MODELS = ("gemma2-spm", "gemma3-spm", "llama-spm", "llama3-ropescale-spm", "mixtral-spm", "phi3-spm", "qwen2-bpe", "qwen3-bpe")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_cache: dict[tuple[str, str], Path] = {}


def reference_dir(shared: Path) -> Path:
    path = shared / "reference" / "convert"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def model_dir(shared: Path, name: str, work: Path) -> Path:
    """The checkpoint folder to convert; qwen3-bpe is completed with qwen2-bpe's tokenizer in a private copy."""
    source = reference_dir(shared) / "hf" / name
    if name != "qwen3-bpe":
        return source
    target = work / "hf" / name
    if not target.is_dir():
        shutil.copytree(source, target)
        shutil.copy(source.parent / "qwen2-bpe" / "tokenizer.json", target / "tokenizer.json")
    return target


def converted_model(shared: Path, work: Path, name: str, outtype: str = "f32") -> Path:
    """The GGUF kamado writes for reference model `name` in `outtype`, converted into `work` once per process."""
    key = (name, outtype)
    if key not in _cache or not _cache[key].is_file():
        out = work / f"{name}-{outtype}.gguf"
        _cache[key] = convert(model_dir(shared, name, work), out, outtype)[0]
    return _cache[key]
