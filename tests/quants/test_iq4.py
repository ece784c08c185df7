
import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.quants import dequantize, dequantize_torch, quantize
from kamado.quants.iq4 import KVALUES, best_index
from tests.quants.common import assert_same_floats, random_blocks, realistic_rows, reference_dequantize

IQ4 = [Q.IQ4_NL, Q.IQ4_XS]


@pytest.mark.parametrize("qtype", IQ4, ids=lambda q: q.name)
def test_dequantize_random_blocks_matches_gguf(qtype):
    raw = random_blocks(np.random.default_rng(30), qtype, blocks_per_row=4)
    with np.errstate(all="ignore"):
        assert_same_floats(dequantize(raw, qtype), reference_dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", IQ4, ids=lambda q: q.name)
def test_torch_twin_matches_numpy(qtype):
    raw = random_blocks(np.random.default_rng(31), qtype, blocks_per_row=4)
    with np.errstate(all="ignore"):
        assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype).numpy(), dequantize(raw, qtype))


def _best_index_by_search(x: np.float32) -> int:
    # ggml's best_index_int8, written as its plain branchless binary search over kvalues_iq4nl
    x2 = np.float32(x) + np.float32(x)
    idx, step = 0, 8
    while step:
        j = idx + step
        if x2 >= np.float32(int(KVALUES[j - 1]) + int(KVALUES[j])):
            idx = j
        step //= 2
    return idx


def test_best_index_matches_ggml_search_at_and_around_every_midpoint():
    halves = (np.arange(-260, 260) / np.float32(2)).astype(np.float32)
    x = np.concatenate(
        [
            halves,
            np.nextafter(halves, np.float32(-1e9)),
            np.nextafter(halves, np.float32(1e9)),
            np.random.default_rng(32).uniform(-150, 150, 2000).astype(np.float32),
            np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], np.float32),
        ]
    )
    assert best_index(x).tolist() == [_best_index_by_search(v) for v in x]


@pytest.mark.parametrize("qtype", IQ4, ids=lambda q: q.name)
def test_quantize_roundtrip_error_is_small(qtype):
    x = realistic_rows(np.random.default_rng(33), 8, 512)
    y = dequantize(quantize(x, qtype), qtype)
    rel = np.sqrt(np.mean((y - x) ** 2, axis=1) / np.mean(x**2, axis=1))
    assert np.all(rel < 0.12), rel


def test_zero_block_keeps_level_of_zero():
    # ggml stores d = 0 and, for each value, the level nearest 0 (index 8, value +1): bytes 0x88
    q = quantize(np.zeros((1, 64), np.float32), Q.IQ4_NL)
    assert q.reshape(2, 18)[:, :2].tolist() == [[0, 0], [0, 0]]
    assert (q.reshape(2, 18)[:, 2:] == 0x88).all()


@pytest.mark.parametrize("qtype", IQ4, ids=lambda q: q.name)
def test_importance_weights_lower_weighted_error(qtype):
    rng = np.random.default_rng(34)
    x = rng.standard_normal((32, 256)).astype(np.float32)
    imatrix = (np.float32(10) ** rng.uniform(-3, 1, 256)).astype(np.float32)
    plain, weighted = quantize(x, qtype), quantize(x, qtype, imatrix)

    def weighted_error(q):
        return float(np.sum(imatrix * (dequantize(q, qtype) - x) ** 2))

    assert weighted_error(weighted) < weighted_error(plain)


HASH_CASES = [
    ("out-IQ4_NL.gguf", "blk.0.attn_k.weight", "IQ4_NL"),
    ("f16-out-IQ4_NL.gguf", "blk.9.attn_output.weight", "IQ4_NL"),
    ("f16-out-IQ4_XS-imatrix.gguf", "blk.1.attn_q.weight", "IQ4_NL"),
    ("out-IQ4_XS.gguf", "blk.3.attn_output.weight", "IQ4_XS"),
    ("f16-out-IQ4_XS-imatrix.gguf", "blk.4.ffn_down.weight", "IQ4_XS"),
]


@pytest.mark.realmodel
@pytest.mark.parametrize(("file_name", "name", "type_name"), HASH_CASES, ids=lambda v: str(v))
def test_quantize_matches_llama_quantize(llamacpp_tensor_check, file_name, name, type_name):
    llamacpp_tensor_check(file_name, name, type_name)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", IQ4, ids=lambda q: q.name)
def test_torch_twin_on_cuda_matches_numpy(qtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    raw = random_blocks(np.random.default_rng(35), qtype, blocks_per_row=4)
    with np.errstate(all="ignore"):
        assert_same_floats(dequantize_torch(torch.from_numpy(raw).cuda(), qtype).cpu().numpy(), dequantize(raw, qtype))
