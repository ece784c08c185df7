import numpy as np
import pytest
import torch
from gguf import quants as gguf_quants

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.quants import QuantError, dequantize, dequantize_torch, quantize
from tests.quants.common import assert_same_floats, random_blocks, realistic_rows, reference_dequantize

LEGACY = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda q: q.name)
def test_quantize_is_byte_identical_to_ggml_reference(qtype):
    x = realistic_rows(np.random.default_rng(10), 64, 640)
    expected = np.asarray(gguf_quants.quantize(x, qtype)).view(np.uint8)
    assert np.array_equal(quantize(x, qtype), expected.reshape(64, -1))


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda q: q.name)
def test_dequantize_random_blocks_matches_gguf(qtype):
    raw = random_blocks(np.random.default_rng(11), qtype)
    assert_same_floats(dequantize(raw, qtype), reference_dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", LEGACY, ids=lambda q: q.name)
def test_torch_twin_matches_numpy(qtype):
    raw = random_blocks(np.random.default_rng(12), qtype)
    assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype).numpy(), dequantize(raw, qtype))


def test_dequantize_known_block():
    # Q4_0: d = 0.5 (fp16 0x3800); byte j holds value j (low nibble) and value j + 16 (high nibble); value = (q - 8) * d
    block = np.zeros(18, dtype=np.uint8)
    block[:2] = [0x00, 0x38]
    block[2] = 0xF0  # value 0 -> q=0 -> -4.0 ; value 16 -> q=15 -> 3.5
    out = dequantize(block[None], Q.Q4_0)[0]
    assert out[0] == -4.0 and out[16] == 3.5 and out[1] == -4.0


def test_large_tensors_split_over_workers_give_the_same_bytes():
    x = realistic_rows(np.random.default_rng(13), 1024, 1024)  # several chunks
    whole = quantize(x, Q.Q5_0)
    in_pieces = np.concatenate([quantize(x[i : i + 97], Q.Q5_0) for i in range(0, 1024, 97)])
    assert np.array_equal(whole, in_pieces)


def test_q8_0_ignores_importance_weights_like_ggml():
    x = realistic_rows(np.random.default_rng(14), 4, 256)
    imatrix = np.random.default_rng(15).random(256).astype(np.float32)
    assert np.array_equal(quantize(x, Q.Q8_0, imatrix), quantize(x, Q.Q8_0))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1], ids=lambda q: q.name)
def test_importance_weights_steer_the_error(qtype):
    # ggml's *_impl search minimises the weighted error; columns with heavy weights must come out no worse on average
    # than with the plain reference quantizer, and the light ones pay for it.
    rng = np.random.default_rng(16)
    x = realistic_rows(rng, 64, 512)[3:]
    imatrix = np.where(np.arange(512) % 32 < 4, 100.0, 0.01).astype(np.float32)
    heavy = imatrix > 1
    err_ref = (dequantize(quantize(x, qtype), qtype) - x) ** 2
    err_imp = (dequantize(quantize(x, qtype, imatrix), qtype) - x) ** 2
    assert err_imp[:, heavy].mean() < err_ref[:, heavy].mean()


def test_imatrix_of_wrong_length_is_rejected():
    with pytest.raises(QuantError, match="imatrix"):
        quantize(np.zeros((2, 64), np.float32), Q.Q4_0, np.ones(32, np.float32))


def test_row_length_must_be_whole_blocks():
    with pytest.raises(QuantError, match="multiple of Q4_0's block size 32"):
        quantize(np.zeros((2, 40), np.float32), Q.Q4_0)
