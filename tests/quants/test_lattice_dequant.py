"""IQ1/IQ2/IQ3 lattice types, the ternary TQ types and MXFP4: dequantize only (numpy and torch)."""

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.quants import dequantize, dequantize_torch
from tests.quants.common import assert_same_floats, random_blocks, reference_dequantize

TYPES = [Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.TQ1_0, Q.TQ2_0, Q.MXFP4]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_random_blocks_match_gguf(qtype):
    raw = random_blocks(np.random.default_rng(20), qtype, n_rows=24, blocks_per_row=3)
    assert_same_floats(dequantize(raw, qtype), reference_dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_torch_twin_matches_numpy(qtype):
    raw = random_blocks(np.random.default_rng(21), qtype, n_rows=24, blocks_per_row=3)
    assert_same_floats(dequantize_torch(torch.from_numpy(raw), qtype).numpy(), dequantize(raw, qtype))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_leading_dimensions_are_kept(qtype):
    raw = random_blocks(np.random.default_rng(22), qtype, n_rows=6, blocks_per_row=2).reshape(2, 3, -1)
    out = dequantize(raw, qtype)
    assert out.shape[:2] == (2, 3)
    assert_same_floats(out.reshape(6, -1), dequantize(raw.reshape(6, -1), qtype))


def test_mxfp4_known_block():
    # scale byte e=128 -> 2^(128-127) = 2 applied to E2M1 values (nibble 1 = 0.5, 7 = 6.0, 9 = -0.5, 15 = -6.0)
    block = np.zeros(17, dtype=np.uint8)
    block[0] = 128
    block[1] = 0x71  # value 0: nibble 1 -> 1.0 ; value 16: nibble 7 -> 12.0
    block[2] = 0xF9  # value 1: nibble 9 -> -1.0 ; value 17: nibble 15 -> -12.0
    out = dequantize(block[None], Q.MXFP4)[0]
    assert out[[0, 16, 1, 17, 2]].tolist() == [1.0, 12.0, -1.0, -12.0, 0.0]


def test_tq2_0_known_block():
    # 2-bit codes 0, 1, 2 mean -1, 0, +1 times d; byte m holds values m, m+32, m+64, m+96 in bits 0-1, 2-3, 4-5, 6-7
    block = np.zeros(66, dtype=np.uint8)
    block[0] = 0b10_01_00_10
    block[64:66] = [0x00, 0x40]  # d = 2.0
    out = dequantize(block[None], Q.TQ2_0)[0]
    assert out[[0, 32, 64, 96]].tolist() == [2.0, -2.0, 0.0, 2.0]


def test_tq1_0_known_block():
    # five trits t0..t4 (most significant first) are stored as ceil((sum t_i 3^(4-i)) * 256 / 243)
    trits = [2, 0, 1, 1, 2]  # -> +1, -1, 0, 0, +1
    packed = sum(t * 3 ** (4 - i) for i, t in enumerate(trits))
    block = np.zeros(54, dtype=np.uint8)
    block[0] = (packed * 256 + 242) // 243
    block[52:54] = [0x00, 0x3C]  # d = 1.0
    out = dequantize(block[None], Q.TQ1_0)[0]
    assert out[[0, 32, 64, 96, 128]].tolist() == [1.0, -1.0, 0.0, 0.0, 1.0]
