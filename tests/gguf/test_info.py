"""`kamado info`: the gguf-dump-like table, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from kamado.cli import info
from kamado.gguf import GGUFWriter


@pytest.fixture
def small_model(tmp_path):
    w = GGUFWriter(tmp_path / "small.gguf")
    w.add_field("general.architecture", "llama")
    w.add_field("general.chat_template", "x" * 500)
    w.add_field("tokenizer.ggml.tokens", [f"tok{i}" for i in range(1000)])
    w.add_field("llama.block_count", 2)
    w.add_tensor("token_embd.weight", Q.Q8_0, (1000, 64), np.zeros((1000, 68), np.uint8))
    w.add_tensor("output_norm.weight", Q.F32, (64,), np.ones(64, np.float32))
    return w.write()[0]


def test_table(small_model, capsys):
    assert info.main([str(small_model)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"{small_model}: GGUF v3, 2 tensors, 4 metadata fields, alignment 32"
    tokens = next(line for line in lines if "tokenizer.ggml.tokens" in line)
    assert "[STRING]" in tokens and " 1000 " in tokens and "'tok0', 'tok1'" in tokens and "'tok999'" not in tokens and "..." in tokens
    template = next(line for line in lines if "general.chat_template" in line)
    assert "(500 chars)" in template and len(template) < 200
    assert any("llama.block_count = 2" in line and "UINT32" in line for line in lines)
    embd = next(line for line in lines if "token_embd.weight" in line).split()
    assert embd[2:6] == ["Q8_0", "64,", "1000", str(1000 * 68)]
    assert lines[-1] == f"total: 2 tensors, {64 * 1000 + 64:,} parameters (0.1M), {1000 * 68 + 256:,} bytes (0.07 MiB) of tensor data"


def test_no_tensors_flag(small_model, capsys):
    assert info.main([str(small_model), "--no-tensors"]) == 0
    out = capsys.readouterr().out
    assert "general.architecture" in out and "token_embd.weight" not in out


@pytest.mark.parametrize("content, words", [(None, "file not found"), (b"GGUF\x07\x00\x00\x00", "unsupported GGUF version 7")])
def test_errors_are_one_line_with_exit_code_1(tmp_path, content, words):
    path = tmp_path / "bad.gguf"
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "kamado.cli.main", "info", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and words in proc.stderr and str(path) in proc.stderr


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        info.main(["--help"])
    assert e.value.code == 0
    assert "kamado info" in capsys.readouterr().out


@pytest.mark.realmodel
def test_real_model(gemma_path):
    proc = subprocess.run([sys.executable, "-m", "kamado.cli.main", "info", str(gemma_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "GGUF v3, 236 tensors, 33 metadata fields" in proc.stdout.splitlines()[0]
    assert "token_embd.weight" in proc.stdout and "Q8_0" in proc.stdout


def test_split_model_shown_as_one(tmp_path, capsys):
    w = GGUFWriter(tmp_path / "m.gguf")
    w.add_field("general.architecture", "llama")
    for i in range(3):
        w.add_tensor(f"t{i}", Q.F32, (4,), np.zeros(4, np.float32))
    paths = w.write(split_max_tensors=1)
    assert info.main([str(paths[1])]) == 0
    out = capsys.readouterr().out
    assert "3 tensors" in out.splitlines()[0] and "3 shards" in out.splitlines()[0]
    assert all(f"t{i}" in out for i in range(3))
