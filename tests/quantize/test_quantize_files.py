"""`kamado quantize` against llama-quantize's outputs: the same types, shapes and bytes for every tensor.

Each reference file is re-made with the command line the reference README gives for its name. The
F16 file that the f16-out-* files start from is made by kamado too (and checked first).
"""

import hashlib
import os

import pytest

from kamado.cli.quantize import main as quantize_main
from kamado.gguf import GGUFReader
from tests.quantize import reference
from tests.realmodels import SHARED

REFERENCE_FILES = sorted(reference.hashes(SHARED)) if (SHARED / "reference").is_dir() else []
# A few files that cover copies, legacy, k-quant mixtures, imatrix (both formats) and the flags, kept in
# the fast suite; the rest run with -m slow.
FAST = {"out-Q8_0.gguf", "out-Q4_K_M-imatrix.gguf", "out-Q6_K-imatrix-dat.gguf", "out-Q3_K_M-ott.gguf", "f16-out-Q4_0.gguf"}


def run_quantize(src, out, qtype, flags, cwd):
    old = os.getcwd()
    os.chdir(cwd)  # the imatrix file names are recorded as given, relative to the reference folder
    try:
        return quantize_main([*flags, str(src), str(out), qtype, "2"])
    finally:
        os.chdir(old)


@pytest.fixture(scope="session")
def kamado_f16(tmp_path_factory, shared, gemma_path):
    out = tmp_path_factory.mktemp("f16") / "out-F16.gguf"
    assert run_quantize(gemma_path, out, "F16", ["--allow-requantize"], shared / "reference") == 0
    check_file(out, reference.hashes(shared)["out-F16.gguf"])  # the f16-out-* sources must be right first
    return out


def check_file(path, expected):
    r = GGUFReader(path)
    got = [
        {"name": t.name, "type": t.type.name, "shape": list(reversed(t.shape)), "sha256": hashlib.sha256(t.raw).hexdigest()}
        for t in r.tensors.values()
    ]
    assert len(got) == len(expected["tensors"])
    mismatched = [g["name"] for g, w in zip(got, expected["tensors"]) if g != w]
    assert not mismatched, f"{len(mismatched)} tensors differ, first: {mismatched[:5]}"
    meta = r.metadata
    for key, want in expected["metadata"].items():
        value = meta[key]
        value = value.tolist() if hasattr(value, "tolist") else value
        assert value == pytest.approx(want) if isinstance(want, float) else value == want, key
    assert [k for k in meta if k in expected["metadata"]] == list(expected["metadata"]), "metadata order differs"
    # Beyond the tensors and metadata: the whole file is byte-identical to llama-quantize's.
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected["file_sha256"]


@pytest.mark.realmodel
@pytest.mark.parametrize(
    "file_name", [pytest.param(f, marks=() if f in FAST else pytest.mark.slow) for f in REFERENCE_FILES]
)
def test_file_matches_llama_quantize(file_name, shared, gemma_path, tmp_path, request):
    source, qtype, flags = reference.command_line(file_name)
    src = gemma_path if source == "gemma" else request.getfixturevalue("kamado_f16")
    out = tmp_path / file_name
    assert run_quantize(src, out, qtype, flags, shared / "reference") == 0
    check_file(out, reference.hashes(shared)[file_name])
