"""Fixtures of the quantization tests: single tensors checked against llama-quantize's reference hashes."""

import hashlib
import json

import numpy as np
import pytest

from kamado.gguf.reader import GGUFReader
from kamado.quants import quantize, read_imatrix
from tests.quants.common import reference_dequantize


@pytest.fixture(scope="module")
def llamacpp_hashes(shared):
    files = json.loads((shared / "reference" / "quantize-llamacpp-hashes.json").read_text())
    return {(f, t["name"]): t for f, entry in files.items() for t in entry["tensors"]}


@pytest.fixture(scope="module")
def source_tensor(gemma_path, llamacpp_hashes):
    """The tensor llama-quantize started from: Gemma dequantized to f32 (out-*) or its F16 file (f16-out-*)."""
    reader = GGUFReader(gemma_path)

    def load(file_name: str, name: str) -> np.ndarray:
        info = reader.tensors[name]
        x = reference_dequantize(np.asarray(info.raw), info.type)
        if file_name.startswith("f16-"):
            f16 = x.astype(np.float16)
            assert hashlib.sha256(f16.tobytes()).hexdigest() == llamacpp_hashes[("out-F16.gguf", name)]["sha256"]
            x = f16.astype(np.float32)
        return x

    return load


def imatrix_for(shared, file_name: str):
    if "imatrix" not in file_name:
        return None
    suffix = "dat" if file_name.endswith("-dat.gguf") else "gguf"
    return read_imatrix(shared / "reference" / f"imatrix-seed001.{suffix}")


@pytest.fixture(scope="module")
def llamacpp_tensor_check(shared, llamacpp_hashes, source_tensor):
    """check(file, tensor, type): quantizing the tensor's source as llama-quantize did gives its sha256."""

    def check(file_name: str, name: str, type_name: str) -> None:
        expected = llamacpp_hashes[(file_name, name)]
        assert expected["type"] == type_name
        imatrix = imatrix_for(shared, file_name)
        q = quantize(source_tensor(file_name, name), type_name, None if imatrix is None else imatrix[name])
        assert hashlib.sha256(q.tobytes()).hexdigest() == expected["sha256"]

    return check
