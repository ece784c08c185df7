"""dequantize (numpy and torch) equals gguf-py's on the real models' tensors, for every type they hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kamado.gguf.reader import GGUFReader
from kamado.quants import DEQUANTIZE, DEQUANTIZE_TORCH, dequantize, dequantize_torch
from tests.quants.common import assert_same_floats, reference_dequantize

TENSORS_PER_TYPE = 3


def _sample_by_type(path) -> dict:
    """Up to TENSORS_PER_TYPE tensors of each type, the smallest first (the checks stay fast)."""
    tensors = sorted(GGUFReader(path).tensors.values(), key=lambda t: t.raw.size)
    by_type: dict = {}
    for t in tensors:
        if len(by_type.setdefault(t.type, [])) < TENSORS_PER_TYPE:
            by_type[t.type].append(t)
    return by_type


@pytest.mark.realmodel
@pytest.mark.parametrize("model", ["gemma_path", "qwen_path"])
def test_real_tensors_match_gguf(model, request):
    checked = 0
    for qtype, tensors in _sample_by_type(request.getfixturevalue(model)).items():
        if qtype not in DEQUANTIZE:
            continue  # a type another family has not registered yet
        for t in tensors:
            raw = np.asarray(t.raw)
            expected = reference_dequantize(raw, qtype).reshape(t.shape)
            assert_same_floats(dequantize(raw, qtype), expected)
            if qtype in DEQUANTIZE_TORCH:
                assert_same_floats(dequantize_torch(torch.from_numpy(raw.copy()), qtype).numpy(), expected)
            checked += 1
    assert checked >= 6  # at least F32, Q5_0 and Q8_0 tensors
