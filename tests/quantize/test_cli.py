"""`kamado quantize` on bad input, interruption and --keep-split: clear one-line errors, nothing half-written."""

import subprocess
import sys

import numpy as np
import pytest

from kamado.cli.quantize import main as quantize_main
from kamado.gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from kamado.quantize.ftypes import parse_file_type
from kamado.quantize.model import QuantizeError, parse_override, quantize_model
from kamado.quantize.rules import Options


def kamado(*args):
    return subprocess.run([sys.executable, "-m", "kamado.cli.main", "quantize", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def small_f32(tmp_path):
    """A small llama-shaped F32 model: 2 layers with rows of 256 (every k-quant fits)."""
    rng = np.random.default_rng(0)
    w = GGUFWriter(tmp_path / "small-f32.gguf")
    w.add_field("general.architecture", "llama")
    w.add_field("llama.block_count", 2)
    w.add_field("llama.attention.head_count", 4)
    w.add_field("llama.attention.head_count_kv", 4)
    w.add_field("general.file_type", 0)
    for name, shape in [("token_embd.weight", (64, 256)), ("output_norm.weight", (256,))] + [
        (f"blk.{i}.{t}.weight", (256, 256)) for i in range(2) for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down")
    ]:
        w.add_tensor(name, GGMLQuantizationType.F32, shape, rng.standard_normal(shape).astype(np.float32))
    w.write()
    return tmp_path / "small-f32.gguf"


def test_missing_input_unknown_type_and_bad_flags_are_one_line_errors(tmp_path, small_f32):
    for args, needle in [
        ((tmp_path / "nope.gguf", "Q4_0"), "input file not found"),
        ((small_f32, tmp_path / "o.gguf", "Q9_Z"), "unknown quantization type"),
        (("--tensor-type", "attn_q", small_f32, "Q4_0"), "PATTERN=TYPE"),
        (("--output-tensor-type", "q7_k", small_f32, "Q4_0"), "unknown ggml type"),
        (("--override-kv", "general.name=blob:x", small_f32, tmp_path / "o.gguf", "Q4_0"), "unknown type 'blob'"),
    ]:
        r = kamado(*args)
        assert r.returncode != 0
        assert needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_unwritable_output(small_f32, tmp_path):
    r = kamado(small_f32, tmp_path / "no" / "such" / "dir" / "o.gguf", "Q8_0")
    assert r.returncode == 1 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_requantizing_needs_the_flag_and_q2_k_s_needs_an_imatrix(small_f32, tmp_path):
    q4 = tmp_path / "q4.gguf"
    assert quantize_main([str(small_f32), str(q4), "Q4_0", "1"]) == 0
    r = kamado(q4, tmp_path / "q8.gguf", "Q8_0")
    assert r.returncode == 1 and "--allow-requantize" in r.stderr
    assert kamado("--allow-requantize", q4, tmp_path / "q8.gguf", "Q8_0").returncode == 0
    r = kamado(small_f32, tmp_path / "q2.gguf", "Q2_K_S")
    assert r.returncode == 1 and "importance" in r.stderr
    assert not (tmp_path / "q2.gguf").exists()


def test_interrupted_run_leaves_nothing(small_f32, tmp_path):
    out = tmp_path / "out.gguf"

    def interrupt(i, n, name):
        if i == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_model(small_f32, out, Options(parse_file_type("Q4_K_M")), progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small-f32.gguf"]


def test_default_output_name_and_override_kv(small_f32):
    assert quantize_main(["--override-kv", "general.name=str:tiny", "--override-kv", "x.n=int:-7", str(small_f32), "q5_1"]) == 0
    r = GGUFReader(small_f32.parent / "ggml-model-Q5_1.gguf")
    assert r.get("general.name") == "tiny" and r.get("x.n") == 7 and r.get("general.file_type") == 9
    assert r.tensors["blk.0.attn_q.weight"].type == GGMLQuantizationType.Q5_1
    assert r.tensors["output_norm.weight"].type == GGMLQuantizationType.F32
    with pytest.raises(QuantizeError):
        parse_override("k=int:abc")


def test_keep_split_keeps_the_shards(small_f32, tmp_path):
    src = GGUFReader(small_f32)
    w = GGUFWriter(tmp_path / "split.gguf")
    w.add_fields_from(src.fields)
    for t in src.tensors.values():
        w.add_tensor(t.name, t.type, t.shape, t.raw)
    shards = w.write(split_max_tensors=5)
    assert len(shards) == 3
    whole = tmp_path / "whole.gguf"
    assert quantize_main([str(small_f32), str(whole), "Q6_K", "1"]) == 0
    assert quantize_main(["--keep-split", str(shards[0]), str(tmp_path / "kept.gguf"), "Q6_K", "1"]) == 0
    kept = sorted(tmp_path.glob("kept*-of-00003.gguf"))
    assert len(kept) == 3
    assert [len(shard.tensors) for shard in GGUFReader(kept[0]).shards] == [5, 5, 2]
    a, b = GGUFReader(whole), GGUFReader(kept[0])
    assert list(a.tensors) == list(b.tensors)
    assert all(bytes(a.tensors[n].raw) == bytes(b.tensors[n].raw) for n in a.tensors)
