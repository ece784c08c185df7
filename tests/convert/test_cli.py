"""`kamado convert` as a user runs it: defaults, flags, and one-line errors."""

from __future__ import annotations

import shutil

import pytest

from kamado.cli.convert import main, parse_size
from kamado.gguf.reader import GGUFReader
from tests.convert.reference_models import reference_dir


@pytest.fixture
def llama_copy(shared, tmp_path):
    target = tmp_path / "llama-spm"
    shutil.copytree(reference_dir(shared) / "hf" / "llama-spm", target)
    target.chmod(0o755)
    return target


def test_default_outfile_and_outtype_follow_llamacpp(llama_copy, capsys):
    assert main([str(llama_copy)]) == 0
    out = llama_copy / "Llama-Spm-202K-F16.gguf"  # in the model folder, named from metadata, f16 by default
    assert f"wrote {out}" in capsys.readouterr().out
    reader = GGUFReader(out)
    assert reader.get("general.file_type") == 1
    assert reader.tensors["blk.0.attn_q.weight"].type.name == "F16"


def test_auto_outtype_follows_the_checkpoint_dtype(shared, tmp_path):
    qwen = reference_dir(shared) / "hf" / "qwen2-bpe"  # bf16 weights
    assert main([str(qwen), "--outtype", "auto", "--outfile", str(tmp_path / "q-{ftype}.gguf")]) == 0
    assert GGUFReader(tmp_path / "q-bf16.gguf").get("general.file_type") == 32


def test_vocab_only_writes_tokenizer_without_tensors(llama_copy, tmp_path):
    assert main([str(llama_copy), "--vocab-only", "--outfile", str(tmp_path)]) == 0
    reader = GGUFReader(tmp_path / "Llama-Spm-vocab.gguf")
    assert reader.tensors == {}
    assert len(reader.get("tokenizer.ggml.tokens")) == 1000
    assert reader.get("tokenizer.ggml.model") == "llama"
    assert "general.size_label" not in reader.metadata


def test_dry_run_writes_nothing(llama_copy, tmp_path, capsys):
    assert main([str(llama_copy), "--dry-run", "--outfile", str(tmp_path / "x.gguf")]) == 0
    assert "21 tensors" in capsys.readouterr().out
    assert not any(tmp_path.glob("*.gguf"))


def test_split_by_tensor_count_keeps_every_tensor(llama_copy, tmp_path, converted):
    assert main([str(llama_copy), "--split-max-tensors", "8", "--outfile", str(tmp_path / "s.gguf")]) == 0
    shards = sorted(tmp_path.glob("s-*-of-00003.gguf"))
    assert len(shards) == 3
    whole = GGUFReader(converted("llama-spm", "f16"))
    split = GGUFReader(shards[0])
    assert list(split.tensors) == list(whole.tensors)
    assert all(split.tensors[n].raw.tobytes() == t.raw.tobytes() for n, t in whole.tensors.items())


def test_errors_are_one_line_with_nonzero_exit(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: not a directory" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--outtype", "q4_0"])
    assert exit_info.value.code == 2


def test_parse_size_accepts_llamacpp_suffixes():
    assert parse_size("500M") == 500_000_000
    assert parse_size("2G") == 2_000_000_000
    assert parse_size("4096") == 4096
    for bad in ("", "-1", "1.5G", "G"):
        with pytest.raises(Exception, match="invalid size"):
            parse_size(bad)
