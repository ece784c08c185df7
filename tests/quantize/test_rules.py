"""llama-quantize's per-tensor type choices, checked against the types in its reference outputs."""

import re

import pytest

from kamado.gguf import GGUFReader
from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.quantize.ftypes import parse_file_type, parse_tensor_type
from kamado.quantize.rules import Category, ModelShape, Options, TypeChooser, allows_quantization, category_of
from tests.quantize import reference
from tests.realmodels import SHARED

REFERENCE_FILES = sorted(reference.hashes(SHARED)) if (SHARED / "reference").is_dir() else []


def options_for(qtype: str, flags: list[str]) -> Options:
    opts = Options(parse_file_type(qtype))
    args = iter(flags)
    for flag in args:
        if flag == "--pure":
            opts.pure = True
        elif flag == "--leave-output-tensor":
            opts.quantize_output = False
        elif flag == "--token-embedding-type":
            opts.token_embedding_type = parse_tensor_type(next(args))
        elif flag == "--output-tensor-type":
            opts.output_tensor_type = parse_tensor_type(next(args))
        elif flag == "--imatrix":
            next(args)
            opts.has_imatrix = True
        elif flag == "--override-kv":
            next(args)
    return opts


@pytest.mark.realmodel
@pytest.mark.parametrize("file_name", REFERENCE_FILES)
def test_types_match_llama_quantize(file_name, shared, gemma_path):
    ref = reference.hashes(shared)
    source, qtype, flags = reference.command_line(file_name)
    if source == "gemma":
        r = GGUFReader(gemma_path)
        meta = r.metadata
        src = [(t.name, t.shape, t.type) for t in r.tensors.values()]
    else:
        f16 = ref["out-F16.gguf"]
        meta = f16["metadata"]
        src = [(t["name"], tuple(reversed(t["shape"])), T[t["type"]]) for t in f16["tensors"]]
    chooser = TypeChooser(ModelShape.from_metadata(meta), [n for n, _, _ in src], options_for(qtype, flags))
    got = {name: chooser.choose(name, shape, cur).name for name, shape, cur in src}
    want = {t["name"]: t["type"] for t in ref[file_name]["tensors"]}
    assert got == want


def test_categories_and_never_quantized():
    opts = Options(parse_file_type("Q4_K_M"))
    assert category_of("blk.3.attn_v.weight") == Category.ATTENTION_V
    assert category_of("blk.3.ffn_down_exps.weight") == Category.FFN_DOWN
    assert category_of("output.weight") == Category.OUTPUT
    assert not allows_quantization("blk.0.attn_norm.weight", 2, opts)
    assert not allows_quantization("blk.0.ffn_gate_inp.weight", 2, opts)
    assert not allows_quantization("blk.0.attn_q.bias", 2, opts)
    assert not allows_quantization("blk.0.attn_q.weight", 1, opts)
    assert allows_quantization("blk.0.attn_q.weight", 2, opts)


def test_mixture_more_bits_layers_and_fallback():
    # A Llama-shaped model with 32 layers and rows of 4096 (every k-quant fits).
    names = [f"blk.{i}.{t}.weight" for i in range(32) for t in ("attn_v", "ffn_down")] + ["output.weight"]
    model = ModelShape("llama", 32, 32, 8, 0)
    chooser = TypeChooser(model, names, Options(parse_file_type("Q4_K_M")))
    types = {n: chooser.choose(n, (4096, 4096), T.F16) for n in names}
    # use_more_bits: the first and last eighth of the layers, and every third layer in between.
    more = [i for i in range(32) if i < 4 or i >= 28 or (i - 4) % 3 == 2]
    assert [i for i in range(32) if types[f"blk.{i}.ffn_down.weight"] == T.Q6_K] == more
    assert types["output.weight"] == T.Q6_K
    # A row of 640 does not fit Q4_K's 256-blocks: it falls back to Q5_0.
    chooser = TypeChooser(model, ["blk.0.attn_q.weight"], Options(parse_file_type("Q4_K_M")))
    assert chooser.choose("blk.0.attn_q.weight", (1024, 640), T.F16) == T.Q5_0


def test_manual_tensor_type_wins():
    opts = Options(parse_file_type("Q4_K_M"), tensor_types=[(re.compile("attn_q"), T.Q8_0)])
    chooser = TypeChooser(ModelShape("llama", 4, 8, 8, 0), ["blk.0.attn_q.weight"], opts)
    assert chooser.choose("blk.0.attn_q.weight", (256, 256), T.F32) == T.Q8_0
