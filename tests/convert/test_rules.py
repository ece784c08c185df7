"""Converter rules checked against gguf-py (the library maintained with llama.cpp) where it has the same logic."""

from __future__ import annotations

import pytest
from gguf.metadata import Metadata as GgufMetadata
from gguf.utility import naming_convention
from gguf.utility import size_label as gguf_size_label

from kamado.convert import ConvertError
from kamado.convert.converter import tensor_type
from kamado.convert.metadata import ModelNaming, default_file_name, id_to_title, model_id_components, size_label
from kamado.convert.vocab import pre_tokenizer_name
from kamado.gguf.constants import GGMLQuantizationType as Q
from tests.convert.reference_models import reference_dir

MODEL_IDS = [
    "meta-llama/Meta-Llama-3.1-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.2", "Qwen/Qwen2.5-Coder-0.5B-Instruct",
    "google/gemma-2-2b-it", "microsoft/Phi-3.5-mini-instruct", "lmsys/vicuna-13b-v1.5-16k", "elyza/ELYZA-japanese-Llama-2-7b-fast-instruct",
    "rinna/youko-8b", "mistralai/Mixtral-8x7B-v0.1", "llama-spm", "bigscience/bloom-7b1", "Qwen3-30B-A3B",
]


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("total_params", [0, 7_000_000_000])
def test_name_heuristics_match_gguf_py(model_id, total_params):
    assert model_id_components(model_id, total_params) == GgufMetadata.get_model_id_components(model_id, total_params)
    assert id_to_title(model_id.split("/")[-1]) == GgufMetadata.id_to_title(model_id.split("/")[-1])


@pytest.mark.parametrize("shapes", [
    {"a.weight": (1000, 64), "b.weight": (64,)},
    {"token_embd.weight": (32000, 4096), "blk.0.ffn_gate_exps.weight": (8, 14336, 4096), "blk.0.ffn_up_exps.weight": (8, 14336, 4096)},
    {"x.weight": (999_999,)}, {"x.weight": (1_500_000_001,)},
])
def test_size_label_matches_gguf_py(shapes):
    total = shared = expert = expert_sum = n = 0
    for name, shape in shapes.items():
        size = 1
        for d in shape:
            size *= d
        if "_exps." in name:
            expert += size // shape[0]
            expert_sum += shape[0]
            n += 1
        else:
            shared += size
        total += size
    assert size_label(shapes) == gguf_size_label(total, shared, expert, expert_sum // n if n else 0)


def test_default_file_name_matches_gguf_naming_convention():
    naming = ModelNaming(name="Meta Llama 3.1 8B Instruct", basename="Meta-Llama-3.1", finetune="Instruct", version=None, size_label="8B")
    expected = naming_convention(naming.name, naming.basename, naming.finetune, None, "8B", "Q8_0") + ".gguf"
    assert default_file_name(naming, "Q8_0") == expected
    assert default_file_name(naming, None, vocab_only=True) == naming_convention(
        naming.name, naming.basename, naming.finetune, None, None, None, "vocab") + ".gguf"


def test_tensor_type_rules():
    assert tensor_type("blk.0.attn_norm.weight", (64,), Q.Q8_0) == Q.F32
    assert tensor_type("blk.0.attn_q.bias", (64,), Q.F16) == Q.F32
    assert tensor_type("blk.0.ffn_gate_inp.weight", (4, 64), Q.Q8_0) == Q.F32  # MoE router stays F32
    assert tensor_type("blk.0.attn_q.weight", (64, 64), Q.Q8_0) == Q.Q8_0
    assert tensor_type("blk.0.attn_q.weight", (16, 16), Q.Q8_0) == Q.F16  # rows of 16 do not fill a Q8_0 block
    assert tensor_type("blk.0.attn_q.weight", (16, 16), Q.BF16) == Q.BF16


def test_pre_tokenizer_is_identified_by_hash(shared, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    qwen = Tokenizer.from_file(str(reference_dir(shared) / "hf" / "qwen2-bpe" / "tokenizer.json"))
    assert pre_tokenizer_name(qwen) == "qwen2"
    other = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ConvertError, match="unrecognised BPE pre-tokenizer"):
        pre_tokenizer_name(other)
