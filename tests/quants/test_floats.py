import numpy as np
import pytest
import torch
from gguf import quants as gguf_quants

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.quants import dequantize, dequantize_torch, quantize
from tests.quants.common import assert_same_floats


def _bits(values_u32) -> np.ndarray:
    return np.array(values_u32, dtype=np.uint32).view(np.float32).reshape(1, -1)


def test_f16_rounds_to_nearest_even_like_ieee():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 64)).astype(np.float32) * np.float32(1000)
    x[0, :6] = [65504.0, 65520.0, 1e-8, -6e-8, np.inf, -np.inf]  # max, overflow to inf, subnormal, underflow
    out = quantize(x, Q.F16)
    assert out.dtype == np.uint8 and out.shape == (8, 128)
    with np.errstate(over="ignore"):
        assert np.array_equal(out.view(np.float16), x.astype(np.float16))


def test_f16_ties_round_to_even():
    # 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1.0); 1 + 3*2^-11 goes up.
    x = np.array([[1 + 2**-11, 1 + 3 * 2**-11]], dtype=np.float32)
    assert quantize(x, Q.F16).view(np.uint16).tolist() == [[0x3C00, 0x3C02]]


def test_f16_nan_becomes_canonical_quiet_nan_keeping_sign():
    x = _bits([0x7F800001, 0xFFC12345, 0x7FFFFFFF])
    assert quantize(x, Q.F16).view(np.uint16).tolist() == [[0x7E00, 0xFE00, 0x7E00]]


def test_bf16_matches_ggml_rounding_and_nan_handling():
    # ties to even (down, then up), a NaN that must stay NaN after rounding, and a negative quiet NaN
    x = _bits([0x3F808000, 0x3F818000, 0x7F800001, 0xFFC00000, 0x3F80FFFF])
    assert quantize(x, Q.BF16).view(np.uint16).tolist() == [[0x3F80, 0x3F82, 0x7FC0, 0xFFC0, 0x3F81]]


def test_bf16_random_bit_patterns_match_gguf():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, size=(16, 256), dtype=np.uint32).view(np.float32)
    expected = gguf_quants.quantize(x, Q.BF16)
    assert np.array_equal(quantize(x, Q.BF16), np.asarray(expected).view(np.uint8).reshape(16, -1))


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16])
def test_round_trip_is_the_float_conversion(qtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    back = dequantize(quantize(x, qtype), qtype)
    expected = x.astype(np.float16).astype(np.float32) if qtype == Q.F16 else torch.from_numpy(x).bfloat16().float().numpy()
    assert_same_floats(back, expected)


@pytest.mark.parametrize(
    "qtype, dtype",
    [
        (Q.F32, np.float32),
        (Q.F16, np.float16),
        (Q.F64, np.float64),
        (Q.I8, np.int8),
        (Q.I16, np.int16),
        (Q.I32, np.int32),
        (Q.I64, np.int64),
    ],
)
def test_plain_types_dequantize_as_casts(qtype, dtype):
    rng = np.random.default_rng(3)
    values = (rng.standard_normal((3, 10)) * 100).astype(dtype)
    raw = values.view(np.uint8)
    assert_same_floats(dequantize(raw, qtype), values.astype(np.float32))
    assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype).numpy(), values.astype(np.float32))


def test_bf16_dequantize_torch_matches_numpy():
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 256, size=(5, 64), dtype=np.uint8)
    assert_same_floats(dequantize_torch(torch.from_numpy(raw), Q.BF16).numpy(), dequantize(raw, Q.BF16))
