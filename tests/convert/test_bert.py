"""`kamado convert` of BERT encoders (llama.cpp's BertModel): tensor names and types, metadata, the WordPiece vocabulary.

The checkpoint is a tiny random transformers BertModel with a WordPiece vocabulary written by the test (no network);
gguf-py's SpecialVocab (what llama.cpp's converter runs) is the reference for the special-token metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from kamado.cli.convert import main as convert_main
from kamado.convert import ConvertError, convert
from kamado.gguf.reader import GGUFReader
from kamado.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

WORDS = ("the of and to in is it you that he was for on are with as his they be at one have this from hello world how doing "
         "embedding model un aff able").split()
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,!?'\"-:;()", *LETTERS, *("##" + c for c in LETTERS), *WORDS,
         "##ing", "##ed", "##able", "##aff"]
TEXTS = ["Hello world, how are you doing?", "The embedding model is unaffable!", "Zebras (and émus) 42 ... ok?",
         "naïve CAFÉ: résumé", "  spaces\tand\nnewlines  ", "unknownwordxyz"]
POOLING_FLAGS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}


def make_tiny_bert(out: Path, pooling: str | None = "mean", weight_std: float = 0.02, hf_class: str = "BertModel",
                   seed: int = 0) -> Path:
    """A random BertModel (2 layers, hidden 32) with a WordPiece tokenizer and, if `pooling` is given,
    sentence-transformers' Pooling module config; weight_std > 0.02 makes every term of the graph matter."""
    assert len(set(VOCAB)) == len(VOCAB)
    out.mkdir(parents=True, exist_ok=True)
    transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}).save_pretrained(out)
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(seed)
    model = getattr(transformers, hf_class)(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name:  # norms away from 1/0 so their weight and bias are checked too
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, weight_std)
    model.save_pretrained(out)
    if pooling is not None:
        (out / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, **{flag: name == pooling for name, flag in POOLING_FLAGS.items()}}))
    return out


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert")


@pytest.fixture(scope="module")
def bert_f16(tiny_bert, tmp_path_factory):
    return GGUFReader(convert(tiny_bert, tmp_path_factory.mktemp("bert-f16") / "bert.gguf", outtype="f16")[0])


def test_tensors_follow_llamacpp_names_and_types(tiny_bert, bert_f16):
    tensors = bert_f16.tensors
    layer = ["attn_q", "attn_k", "attn_v", "attn_output", "attn_output_norm", "ffn_up", "ffn_down", "layer_output_norm"]
    expected = {f"{n}.{kind}" for n in ("token_embd_norm",) for kind in ("weight", "bias")}
    expected |= {"token_embd.weight", "token_types.weight", "position_embd.weight"}
    expected |= {f"blk.{il}.{n}.{kind}" for il in range(2) for n in layer for kind in ("weight", "bias")}
    assert set(tensors) == expected  # no pooler, no position_ids
    types = {name: t.type.name for name, t in tensors.items()}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["blk.1.ffn_down.weight"] == "F16"
    # llama.cpp's converter keeps learned positions and token types in float32, like norms and biases
    assert types["position_embd.weight"] == types["token_types.weight"] == "F32"
    assert types["blk.0.attn_output_norm.weight"] == types["blk.0.ffn_up.bias"] == "F32"
    assert tensors["blk.0.ffn_up.weight"].shape == (64, 32)
    hf = transformers.BertModel.from_pretrained(tiny_bert).state_dict()
    got = torch.from_numpy(tensors["position_embd.weight"].raw.view("float32").copy())
    torch.testing.assert_close(got, hf["embeddings.position_embeddings.weight"], rtol=0, atol=0)
    got = torch.from_numpy(tensors["blk.1.ffn_down.weight"].raw.view("float16").astype("float32"))
    torch.testing.assert_close(got, hf["encoder.layer.1.output.dense.weight"].half().float(), rtol=0, atol=0)


def test_metadata_marks_a_non_causal_encoder_with_its_pooling(bert_f16):
    get = bert_f16.get
    assert get("general.architecture") == "bert"
    assert get("bert.attention.causal") is False
    assert get("bert.pooling_type") == 1  # mean, from 1_Pooling/config.json
    assert (get("bert.block_count"), get("bert.embedding_length"), get("bert.feed_forward_length")) == (2, 32, 64)
    assert (get("bert.attention.head_count"), get("bert.context_length")) == (4, 40)
    assert get("bert.attention.layer_norm_epsilon") == pytest.approx(1e-12)
    assert get("tokenizer.ggml.token_type_count") == 2


@pytest.mark.parametrize("pooling, expected", [("cls", 2), ("last", 3), (None, None)])
def test_pooling_type_comes_from_the_sentence_transformers_config(tmp_path, pooling, expected):
    source = make_tiny_bert(tmp_path / "m", pooling)
    reader = GGUFReader(convert(source, tmp_path / "out.gguf", outtype="f32")[0])
    assert reader.get("bert.pooling_type") == expected


def test_an_unsupported_pooling_mode_is_an_error_naming_the_file(tmp_path):
    source = make_tiny_bert(tmp_path / "m", "mean")
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ConvertError, match=r"1_Pooling/config.json"):
        convert(source, tmp_path / "out.gguf")


def test_vocabulary_is_written_in_llamacpp_phantom_space_form(bert_f16):
    tokens = bert_f16.get("tokenizer.ggml.tokens")
    types = list(bert_f16.get("tokenizer.ggml.token_type"))
    assert bert_f16.get("tokenizer.ggml.model") == "bert"
    assert bert_f16.get("tokenizer.ggml.pre") == "default"  # a vocabulary llama.cpp does not know by hash
    assert len(tokens) == len(VOCAB)
    for token, converted, token_type in zip(VOCAB, tokens, types, strict=True):
        if token.startswith("["):
            assert (converted, token_type) == (token, 3)  # control tokens as they are
        elif token.startswith("##"):
            assert (converted, token_type) == (token[2:], 1)
        else:
            assert (converted, token_type) == ("\u2581" + token, 1)


def test_special_tokens_match_gguf_py_special_vocab(tiny_bert, bert_f16):
    import gguf

    special = gguf.SpecialVocab(tiny_bert, n_vocab=len(VOCAB))
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
            "pad": "padding_token_id", "cls": "cls_token_id", "mask": "mask_token_id"}
    assert special.special_token_ids  # the reference found them: [CLS] is BOS, [SEP] is EOS for BERT
    for kind, token_id in special.special_token_ids.items():
        assert bert_f16.get(f"tokenizer.ggml.{keys[kind]}") == token_id, kind
    for kind, value in special.add_special_token.items():
        assert bert_f16.get(f"tokenizer.ggml.add_{kind}_token") is value, kind
    assert bert_f16.get("tokenizer.ggml.bos_token_id") == VOCAB.index("[CLS]")


def test_token_ids_match_the_hugging_face_tokenizer(tiny_bert, bert_f16):
    hf = transformers.AutoTokenizer.from_pretrained(tiny_bert)
    ours = Tokenizer.from_gguf(bert_f16)
    for text in TEXTS:
        assert ours.encode(text) == hf(text).input_ids, text
        assert ours.encode(text, add_special=False) == hf(text, add_special_tokens=False).input_ids, text


def test_masked_lm_checkpoint_drops_its_heads(tmp_path, bert_f16):
    source = make_tiny_bert(tmp_path / "mlm", hf_class="BertForMaskedLM")
    with safe_open(source / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert any(n.startswith("bert.") for n in names) and any(n.startswith("cls.predictions") for n in names)
    reader = GGUFReader(convert(source, tmp_path / "mlm.gguf", outtype="f16")[0])
    assert set(reader.tensors) == set(bert_f16.tensors)


def test_cli_converts_a_bert_checkpoint(tiny_bert, tmp_path, capsys):
    out = tmp_path / "bert-{ftype}.gguf"
    assert convert_main([str(tiny_bert), "--outtype", "q8_0", "--outfile", str(out)]) == 0
    reader = GGUFReader(tmp_path / "bert-q8_0.gguf")
    assert reader.tensors["blk.0.attn_q.weight"].type.name == "Q8_0"
    assert reader.tensors["position_embd.weight"].type.name == "F32"
