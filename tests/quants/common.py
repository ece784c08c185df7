"""Helpers shared by the quantization tests."""

from __future__ import annotations

import numpy as np

from kamado.gguf.constants import GGML_BLOCK_SIZES


def random_blocks(rng: np.random.Generator, qtype, n_rows: int = 16, blocks_per_row: int = 8) -> np.ndarray:
    """Random bytes shaped (n_rows, row_bytes) of qtype: every field takes arbitrary values, NaN/inf scales included."""
    type_size = GGML_BLOCK_SIZES[qtype][1]
    return rng.integers(0, 256, size=(n_rows, blocks_per_row * type_size), dtype=np.uint8)


def assert_same_floats(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-identical float32 arrays, except that any NaN matches any NaN (payloads are not part of the contract)."""
    actual = np.asarray(actual, dtype=np.float32)
    expected = np.asarray(expected, dtype=np.float32)
    assert actual.shape == expected.shape
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), f"NaN positions differ at {np.argwhere(nan_a != nan_e)[:5].tolist()}"
    same = actual.view(np.uint32) == expected.view(np.uint32)
    bad = ~(same | nan_a)
    assert not bad.any(), f"{bad.sum()} values differ, first at {np.argwhere(bad)[:3].tolist()}: {actual[bad][:3]} vs {expected[bad][:3]}"


def realistic_rows(rng: np.random.Generator, n_rows: int, n_per_row: int) -> np.ndarray:
    """Weight-like float32 rows: gaussian with per-row scales over several decades, some outliers and zero blocks."""
    x = rng.standard_normal((n_rows, n_per_row)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-4, 1, size=(n_rows, 1)).astype(np.float32)
    x[rng.random(x.shape) < 0.001] *= np.float32(50)
    x[0, :32] = 0  # an all-zero block
    x[1, :32] = np.float32(0.25)  # a constant block
    x[2, :32] = np.where(np.arange(32) % 2, 1.5, -1.5).astype(np.float32)  # equal magnitudes of both signs
    return x


def reference_dequantize(raw: np.ndarray, qtype) -> np.ndarray:
    """gguf-py's dequantizer (maintained with llama.cpp), quiet about the inf/NaN that random scales produce."""
    from gguf import quants as gguf_quants

    with np.errstate(all="ignore"):
        return np.asarray(gguf_quants.dequantize(raw, qtype), dtype=np.float32)
