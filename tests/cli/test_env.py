"""`kamado env`: the bug-report environment summary, checked against what the system itself says."""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

import gguf
import numpy as np
import pytest

from kamado.cli import env


def report_json(argv, capsys) -> dict:
    assert env.main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    """A small GGUF written by gguf-py (not by kamado): 2 tensors, a name, a file type."""
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("Tiny Test")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_context_length(128)
    w.add_tensor("token_embd.weight", np.ones((4, 32), dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_text_report_has_every_section(capsys):
    assert env.main([]) == 0
    out = capsys.readouterr().out
    for key in ("os", "cpu", "instruction sets", "cores", "memory", "python", "torch", "numpy", "gguf", "tokenizers", "torch build"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), f"no {key!r} line in:\n{out}"
    assert platform.python_version() in out
    assert platform.release() in out


def test_json_matches_the_system(capsys):
    import torch

    r = report_json([], capsys)
    assert r["python"]["version"] == platform.python_version()
    assert r["os"]["release"] == platform.release()
    assert r["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert r["torch"]["cuda_available"] == torch.cuda.is_available()
    assert r["cpu"]["logical_cores"] >= r["cpu"]["usable_cores"] >= 1
    assert r["memory"]["total_bytes"] > 2**28


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_instruction_sets_follow_proc_cpuinfo(capsys):
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("flags", "Features")):
            flags = set(line.split(":", 1)[1].split())
            break
    isa = report_json([], capsys)["cpu"]["instruction_sets"]
    if "avx2" in flags or "sse4_2" in flags:
        assert isa["AVX2"] == ("avx2" in flags) and isa["AVX-512F"] == ("avx512f" in flags) and isa["AMX"] == ("amx_tile" in flags)
    elif flags:
        assert isa["NEON"] == ("asimd" in flags)


def test_model_facts_and_sha256(tiny_gguf, capsys):
    m = report_json(["-m", str(tiny_gguf)], capsys)["models"][0]
    assert m["shards"][0]["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert m["shards"][0]["bytes"] == tiny_gguf.stat().st_size
    assert (m["architecture"], m["name"], m["file_type"], m["context_length"]) == ("llama", "Tiny Test", "Q8_0", 128)
    assert (m["tensors"], m["parameters"], m["tensor_types"]) == (2, 4 * 32 + 32, {"F32": 1, "F16": 1})
    env.main(["-m", str(tiny_gguf)])
    text = capsys.readouterr().out
    assert hashlib.sha256(tiny_gguf.read_bytes()).hexdigest() in text


def test_not_a_gguf_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(SystemExit) as e:
        env.main(["-m", str(bad)])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "model.gguf" in err


@pytest.mark.realmodel
def test_gemma_sha256_is_the_published_one(gemma_path, capsys):
    m = report_json(["-m", str(gemma_path)], capsys)["models"][0]
    # The sha256 the reference README gives for the PyPI package's file.
    assert m["shards"][0]["sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert (m["architecture"], m["file_type"]) == ("gemma3", "Q4_K - Medium")
