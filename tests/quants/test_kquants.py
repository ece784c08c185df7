
import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.gguf.reader import GGUFReader
from kamado.quants import QuantError, dequantize, dequantize_torch, quantize
from kamado.quants.kquants import nearest_int, seq_sum
from tests.quants.common import assert_same_floats, random_blocks, realistic_rows, reference_dequantize

KQUANTS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda q: q.name)
def test_dequantize_random_blocks_matches_gguf(qtype):
    raw = random_blocks(np.random.default_rng(20), qtype, blocks_per_row=3)
    with np.errstate(all="ignore"):
        assert_same_floats(dequantize(raw, qtype), reference_dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", [*KQUANTS, Q.Q8_K], ids=lambda q: q.name)
def test_torch_twin_matches_numpy(qtype):
    raw = random_blocks(np.random.default_rng(21), qtype, blocks_per_row=3)
    with np.errstate(all="ignore"):
        assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype).numpy(), dequantize(raw, qtype))


def test_q8_k_dequantize_is_float32_scale_times_int8():
    # block_q8_K: float d, int8 qs[256], int16 bsums[16] (the sums are not used to dequantize)
    rng = np.random.default_rng(22)
    d = np.float32(0.0123)
    qs = rng.integers(-128, 128, 256).astype(np.int8)
    block = np.concatenate([np.array([d]).view(np.uint8), qs.view(np.uint8), np.zeros(32, np.uint8)])
    assert_same_floats(dequantize(block[None], Q.Q8_K)[0], d * qs.astype(np.float32))


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda q: q.name)
def test_quantize_roundtrip_error_is_small(qtype):
    x = realistic_rows(np.random.default_rng(23), 8, 512)
    y = dequantize(quantize(x, qtype), qtype)
    bits = {Q.Q2_K: 2, Q.Q3_K: 3, Q.Q4_K: 4, Q.Q5_K: 5, Q.Q6_K: 6}[qtype]
    rel = np.sqrt(np.mean((y - x) ** 2, axis=1) / np.mean(x**2, axis=1))
    assert np.all(rel < 2.0 ** (1.5 - bits)), rel


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda q: q.name)
def test_importance_weights_change_the_choice_and_lower_weighted_error(qtype):
    rng = np.random.default_rng(24)
    x = rng.standard_normal((32, 256)).astype(np.float32)
    imatrix = (np.float32(10) ** rng.uniform(-3, 1, 256)).astype(np.float32)
    plain, weighted = quantize(x, qtype), quantize(x, qtype, imatrix)
    assert not np.array_equal(plain, weighted)

    def weighted_error(q):
        return float(np.sum(imatrix * (dequantize(q, qtype) - x) ** 2))

    assert weighted_error(weighted) < weighted_error(plain)


@pytest.mark.parametrize("qtype", KQUANTS, ids=lambda q: q.name)
def test_all_zero_rows_quantize_to_zero_bytes(qtype):
    # every k-quant stores scale 0 and quant 0 for a block of zeros (Q3_K's quant 0 means -4 with the high bit clear)
    q = quantize(np.zeros((2, 512), np.float32), qtype)
    assert not q.any()
    assert not dequantize(q, qtype).any()


def test_rows_must_be_whole_superblocks():
    with pytest.raises(QuantError, match="256"):
        quantize(np.zeros((2, 640), np.float32), Q.Q4_K)


def test_nearest_int_rounds_half_to_even_like_ggml():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 3.5000002, 4194303.0], np.float32)
    assert nearest_int(v).tolist() == [0, 2, 2, 0, -2, 2, 4, 4194303]


def test_seq_sum_adds_in_index_order():
    # the k-quant searches rely on this to reproduce ggml's `for (i...) s += a[i]` float32 sums
    a = (np.random.default_rng(25).standard_normal((32, 1000)) * 1e4).astype(np.float32)
    expected = np.zeros(1000, np.float32)
    for row in a:
        expected += row
    assert np.array_equal(seq_sum(a), expected)


# ---------------------------------------------------------------- llama-quantize's bytes for real tensors

HASH_CASES = [  # (llama-quantize output file, tensor, type): a few of each type, with and without imatrix
    ("out-Q3_K_S.gguf", "blk.0.attn_output.weight", "Q3_K"),
    ("out-Q2_K-imatrix.gguf", "blk.3.ffn_down.weight", "Q3_K"),
    ("f16-out-Q4_K_M.gguf", "blk.1.attn_output.weight", "Q4_K"),
    ("f16-out-Q4_K_M-imatrix.gguf", "blk.2.attn_output.weight", "Q4_K"),
    ("out-Q5_K_S.gguf", "blk.4.ffn_down.weight", "Q5_K"),
    ("out-Q6_K.gguf", "blk.5.attn_output.weight", "Q6_K"),
    ("f16-out-Q4_K_M-imatrix.gguf", "blk.0.ffn_down.weight", "Q6_K"),
    ("out-Q6_K-imatrix-dat.gguf", "blk.6.attn_output.weight", "Q6_K"),
]


@pytest.mark.realmodel
@pytest.mark.parametrize(("file_name", "name", "type_name"), HASH_CASES, ids=lambda v: str(v))
def test_quantize_matches_llama_quantize(llamacpp_tensor_check, file_name, name, type_name):
    llamacpp_tensor_check(file_name, name, type_name)


@pytest.mark.realmodel
def test_dequantize_real_tensors_matches_gguf(gemma_path):
    reader = GGUFReader(gemma_path)
    for name in ("blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.17.ffn_down.weight"):
        info = reader.tensors[name]
        raw = np.asarray(info.raw)
        assert info.type in (Q.Q4_K, Q.Q6_K)
        assert_same_floats(dequantize(raw, info.type), reference_dequantize(raw, info.type))
        assert_same_floats(dequantize_torch(torch.from_numpy(raw.copy()), info.type).numpy(), dequantize(raw, info.type))


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", [*KQUANTS, Q.Q8_K], ids=lambda q: q.name)
def test_torch_twin_on_cuda_matches_numpy(qtype):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    raw = random_blocks(np.random.default_rng(26), qtype, blocks_per_row=3)
    with np.errstate(all="ignore"):
        assert_same_floats(dequantize_torch(torch.from_numpy(raw).cuda(), qtype).cpu().numpy(), dequantize(raw, qtype))
