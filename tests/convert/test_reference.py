"""Every tiny reference model in every outtype against llama.cpp's converter output (llamacpp-gguf-hashes.json)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from kamado.gguf.reader import GGUFReader
from tests.convert.reference_models import MODELS, OUTTYPES, reference_dir


@pytest.fixture(scope="module")
def reference(shared):
    return json.loads((reference_dir(shared) / "llamacpp-gguf-hashes.json").read_text())


def _same_value(ours, theirs) -> bool:
    if isinstance(theirs, float):  # the JSON holds float32 values widened to float64
        return isinstance(ours, float) and np.float32(ours) == np.float32(theirs)
    return ours == theirs


@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_matches_llamacpp_converter(converted, reference, name, outtype):
    expected = reference[f"{name}-{outtype}.gguf"]
    path = converted(name, outtype)
    reader = GGUFReader(path)

    tensors = [(t.name, t.type.name, list(reversed(t.shape)), hashlib.sha256(t.raw.tobytes()).hexdigest()) for t in reader.tensors.values()]
    assert tensors == [(t["name"], t["type"], t["shape"], t["sha256"]) for t in expected["tensors"]]

    ours = {k: v for k, v in reader.metadata.items() if not k.startswith("tokenizer.ggml.")}
    assert list(ours) == list(expected["metadata"])  # same keys, same order
    different = {k: (ours[k], v) for k, v in expected["metadata"].items() if not _same_value(ours[k], v)}
    assert not different

    # The tokenizer arrays are left out of the JSON; the whole-file hash covers them (and the layout).
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected["file_sha256"]
