"""quantize_torch (the torch twin used to quantize on a GPU) gives numpy `quantize`'s bytes, which are ggml's.

CPU tests run the eager torch ports everywhere; the `gpu` tests repeat the comparison on CUDA, where the k-quant
scale searches run as fused Triton kernels (kamado/quants/kquants_triton.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.gguf.reader import GGUFReader
from kamado.quantize.model import QuantizeError, _quantize_on_device, resolve_device
from kamado.quants import QUANTIZE_TORCH, QuantError, dequantize, quantize, quantize_torch, read_imatrix
from tests.quants.common import realistic_rows

# In order of importance: a Q4_K_M file needs Q4_K, Q6_K, Q5_0/Q5_1 (fallbacks), Q8_0 and F16 sources.
TYPES = [Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_K, Q.Q2_K, Q.Q3_K, Q.IQ4_NL, Q.IQ4_XS]
CUDA = torch.cuda.is_available()


def _importance(rng: np.random.Generator, n: int) -> np.ndarray:
    return (np.float32(10) ** rng.uniform(-3, 1, n)).astype(np.float32)


def _assert_same_bytes(actual: torch.Tensor, expected: np.ndarray) -> None:
    got = actual.cpu().numpy()
    assert got.dtype == np.uint8 and got.shape == expected.shape
    bad = np.argwhere(got != expected)
    assert len(bad) == 0, f"{len(bad)} of {expected.size} bytes differ, first at (row, byte) {bad[:3].tolist()}"


def test_every_numpy_quantizer_has_a_torch_twin():
    from kamado.quants import QUANTIZE

    assert set(TYPES) | {Q.F32} == set(QUANTIZE_TORCH) == set(QUANTIZE)


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_cpu_torch_quantize_is_byte_identical_to_numpy(qtype, weighted):
    rng = np.random.default_rng(int(qtype) * 2 + weighted)
    x = realistic_rows(rng, 12, 512)
    imatrix = _importance(rng, 512) if weighted else None
    expected = quantize(x, qtype, imatrix)
    _assert_same_bytes(quantize_torch(torch.from_numpy(x), qtype, None if imatrix is None else torch.from_numpy(imatrix)), expected)


def test_torch_quantize_keeps_leading_axes_and_chunks_rows(monkeypatch):
    import kamado.quants as quants

    monkeypatch.setattr(quants, "_TORCH_CHUNK_VALUES_DEFAULT", 600)  # two rows of 256 per chunk: several chunks
    x = realistic_rows(np.random.default_rng(5), 6, 256).reshape(2, 3, 256)
    out = quantize_torch(torch.from_numpy(x), Q.Q4_K)
    assert out.shape == (2, 3, 144)
    _assert_same_bytes(out, quantize(x, Q.Q4_K))


def test_torch_quantize_rejects_bad_requests():
    x = torch.zeros(2, 256)
    with pytest.raises(QuantError, match="not supported"):
        quantize_torch(x, Q.IQ2_XXS)
    with pytest.raises(QuantError, match="unknown tensor type"):
        quantize_torch(x, "Q9_X")
    with pytest.raises(QuantError, match="torch tensor"):
        quantize_torch(np.zeros((2, 256), np.float32), Q.Q4_K)
    with pytest.raises(QuantError, match="imatrix has shape"):
        quantize_torch(x, Q.Q4_K, torch.ones(128))
    with pytest.raises(QuantError, match="not a multiple"):
        quantize_torch(torch.zeros(2, 100), Q.Q4_K)


def test_device_choice():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if CUDA else "cpu")
    with pytest.raises(QuantizeError, match="expected one of"):
        resolve_device("tpu")
    if not CUDA:
        with pytest.raises(QuantizeError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_device_path_dequantizes_and_quantizes_like_the_numpy_path():
    # what quantize_model does per tensor on a device: raw F16 rows in, Q4_K / Q5_0 bytes out
    x = realistic_rows(np.random.default_rng(6), 8, 512)
    raw = x.astype(np.float16).view(np.uint8)
    w = _importance(np.random.default_rng(7), 512)
    for qtype, imatrix in ((Q.Q4_K, None), (Q.Q5_0, w)):
        expected = quantize(dequantize(raw, Q.F16), qtype, imatrix)
        assert np.array_equal(_quantize_on_device(torch.from_numpy(raw), Q.F16, qtype, imatrix).numpy(), expected)


# ---------------------------------------------------------------- the real Gemma 3 270M


def _gemma_rows(path, name: str, n_rows: int) -> np.ndarray:
    t = GGUFReader(path).tensors[name]
    return dequantize(np.ascontiguousarray(t.raw.reshape(-1, t.raw.shape[-1])[:n_rows]), t.type)


@pytest.mark.realmodel
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q5_0, Q.Q8_0, Q.IQ4_XS], ids=lambda q: q.name)
def test_real_gemma_tensors_with_and_without_imatrix(gemma_path, shared, qtype):
    imatrix = read_imatrix(shared / "reference" / "imatrix-seed001.gguf")
    name = "blk.0.ffn_down.weight"  # rows of 2048: whole k-quant superblocks
    x = _gemma_rows(gemma_path, name, 48)
    for w in (None, imatrix[name]):
        expected = quantize(x, qtype, w)
        _assert_same_bytes(quantize_torch(torch.from_numpy(x), qtype, None if w is None else torch.from_numpy(w)), expected)


# ---------------------------------------------------------------- CUDA (the lent GPU machine)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_cuda_torch_quantize_is_byte_identical_to_numpy(qtype, weighted):
    rng = np.random.default_rng(100 + int(qtype) * 2 + weighted)
    x = realistic_rows(rng, 300, 1024)  # 1200 superblocks: kernel grids with a partial last block of columns
    imatrix = _importance(rng, 1024) if weighted else None
    expected = quantize(x, qtype, imatrix)
    got = quantize_torch(torch.from_numpy(x).cuda(), qtype, None if imatrix is None else torch.from_numpy(imatrix).cuda())
    assert got.is_cuda
    _assert_same_bytes(got, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_device_path_matches_numpy_on_f16_rows():
    x = realistic_rows(np.random.default_rng(8), 64, 4096)
    raw = x.astype(np.float16).view(np.uint8)
    for qtype in (Q.Q4_K, Q.Q6_K, Q.Q8_0):
        got = _quantize_on_device(torch.from_numpy(raw).cuda(), Q.F16, qtype, None).cpu().numpy()
        assert np.array_equal(got, quantize(dequantize(raw, Q.F16), qtype))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("nbytes", [1, 999, 1000, 4321])
def test_device_copies_round_trip_through_small_chunks(monkeypatch, nbytes):
    from kamado.quantize import device

    monkeypatch.setattr(device, "CHUNK_BYTES", 1000)
    copies = device.DeviceCopies("cuda")
    try:
        rows = np.random.default_rng(nbytes).integers(0, 256, (nbytes, 1), dtype=np.uint8)
        on_gpu = copies.upload(rows)
        assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), torch.from_numpy(rows))
        pieces = [piece.copy() for piece in copies.download(on_gpu * 1)]  # a chunk is valid until the next is asked for
        assert [len(p) for p in pieces] == [min(1000, nbytes - a) for a in range(0, nbytes, 1000)]
        assert np.array_equal(np.concatenate(pieces), rows.reshape(-1))
    finally:
        copies.close()


def test_quantize_model_on_a_torch_device_writes_the_numpy_file(tmp_path, monkeypatch):
    # The device path (torch quantizers, a worker thread running ahead of the writer) on the CPU: torch calls the CPU
    # "cpu:0", which quantize_model treats as a device like "cuda".
    import kamado.quantize.model as model
    from kamado.gguf import GGUFWriter
    from kamado.quantize.ftypes import parse_file_type
    from kamado.quantize.rules import Options

    src = tmp_path / "in.gguf"
    w = GGUFWriter(src)
    w.add_field("general.architecture", "llama")
    w.add_field("llama.block_count", 1)
    rng = np.random.default_rng(9)
    for name, shape in (("token_embd.weight", (64, 256)), ("blk.0.attn_norm.weight", (256,)), ("blk.0.attn_v.weight", (64, 256)),
                        ("blk.0.ffn_down.weight", (256, 512)), ("output.weight", (64, 256))):
        if len(shape) == 1:
            w.add_tensor(name, Q.F32, shape, np.ones(shape, np.float32))
        else:
            w.add_tensor(name, Q.F16, shape, (rng.standard_normal(shape) * 0.02).astype(np.float16))
    w.write()
    model.quantize_model(src, tmp_path / "cpu.gguf", Options(parse_file_type("Q4_K_M")))
    monkeypatch.setattr(model, "resolve_device", lambda device: "cpu:0")
    model.quantize_model(src, tmp_path / "torch.gguf", Options(parse_file_type("Q4_K_M")), device="cuda")
    assert (tmp_path / "cpu.gguf").read_bytes() == (tmp_path / "torch.gguf").read_bytes()
