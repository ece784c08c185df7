"""BERT embeddings end to end: a tiny random transformers BertModel, converted by kamado (f32), loaded by kamado,
against transformers' own last hidden states (per token) and their mean / CLS pooling; the Python API's and the
server's embeddings; generation refused on an encoder.
"""

from __future__ import annotations

import math

import pytest
import torch

from kamado.convert import convert
from kamado.gguf.reader import GGUFReader
from kamado.llama import Llama
from kamado.models import ModelError, is_encoder, load_model
from tests.convert.test_bert import TEXTS, make_tiny_bert

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-3  # kamado's "reference" kernels compute as transformers does
# The default CPU kernels compute as llama.cpp does: GELU from ggml's fp16 tanh table where transformers uses erf,
# keys/values rounded to fp16. On these deliberately large weights that moves hidden states (of size ~3) by ~2e-3.
LLAMACPP_NUMERICS_TOLERANCE = 1e-2
WEIGHT_STD = 0.2  # large enough that attention and GELU are far from linear


def _convert(tmp_path_factory, pooling):
    work = tmp_path_factory.mktemp(f"bert-{pooling}")
    source = make_tiny_bert(work / "hf", pooling, weight_std=WEIGHT_STD)
    return source, convert(source, work / "bert-f32.gguf", outtype="f32")[0]


@pytest.fixture(scope="module")
def mean_bert(tmp_path_factory):
    return _convert(tmp_path_factory, "mean")


@pytest.fixture(scope="module")
def cls_bert(tmp_path_factory):
    return _convert(tmp_path_factory, "cls")


@pytest.fixture(scope="module")
def tokenwise_bert(tmp_path_factory):
    return _convert(tmp_path_factory, None)


def transformers_states(source, text: str) -> torch.Tensor:
    """(T, 32) last hidden states of transformers' model for `text` (one sequence, no padding)."""
    model = transformers.BertModel.from_pretrained(source, attn_implementation="eager").eval()
    inputs = transformers.AutoTokenizer.from_pretrained(source)(text, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).last_hidden_state[0]


def test_per_token_states_match_transformers(tokenwise_bert):
    source, path = tokenwise_bert
    llm = Llama(str(path), embedding=True, kernels="reference", verbose=False)
    for text in TEXTS[:3]:
        expected = transformers_states(source, text)
        got = torch.tensor(llm.embed(text))  # no pooling type in the file: one vector per token, as llama-cpp-python
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)


def test_default_cpu_kernels_follow_transformers_within_llamacpp_numerics(tokenwise_bert):
    source, path = tokenwise_bert
    model = load_model(GGUFReader(path))  # backend "cpu", as kamado.Llama loads it by default
    llm = Llama(str(path), embedding=True, verbose=False)
    text = TEXTS[0]
    expected = transformers_states(source, text)
    got = model.encode(torch.tensor(llm.tokenize(text.encode())))
    error = (got - expected).abs().max().item()
    assert 0 < error < LLAMACPP_NUMERICS_TOLERANCE


@pytest.mark.parametrize("which", ["mean", "cls"])
def test_pooled_embeddings_match_transformers(which, mean_bert, cls_bert):
    source, path = mean_bert if which == "mean" else cls_bert
    llm = Llama(str(path), embedding=True, kernels="reference", verbose=False)
    assert llm.model.cfg.pooling == which
    for text in TEXTS[:3]:
        states = transformers_states(source, text)
        expected = states.mean(0) if which == "mean" else states[0]  # sentence-transformers' Pooling, all tokens unmasked
        got = torch.tensor(llm.create_embedding(text)["data"][0]["embedding"])
        torch.testing.assert_close(got, expected, rtol=0, atol=TOLERANCE)
        unit = torch.tensor(llm.embed(text, normalize=True))
        torch.testing.assert_close(unit, expected / expected.norm(), rtol=0, atol=TOLERANCE)


def test_create_embedding_is_shaped_like_llama_cpp_python(mean_bert):
    _, path = mean_bert
    llm = Llama(str(path), embedding=True, verbose=False)
    out = llm.create_embedding(["hello world", "how are you doing", "the"])
    assert out["object"] == "list" and out["model"] == str(path)
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 32 for d in out["data"])
    n_tokens = sum(len(llm.tokenize(t.encode())) for t in ["hello world", "how are you doing", "the"])
    assert out["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    # unnormalized, as llama-cpp-python's create_embedding returns them
    assert not math.isclose(sum(x * x for x in out["data"][0]["embedding"]), 1.0, rel_tol=1e-3)


def test_long_input_is_truncated_to_the_trained_positions(mean_bert):
    _, path = mean_bert
    llm = Llama(str(path), embedding=True, n_ctx=512, verbose=False)  # more than the model's 40 positions
    assert llm.n_ctx() == 40
    _, count = llm.embed("hello world " * 50, return_count=True)
    assert count == 40
    with pytest.raises(ValueError, match="exceed context window of 40"):
        llm.embed("hello world " * 50, truncate=False)


def test_generation_on_an_encoder_is_refused_with_a_clear_error(mean_bert):
    _, path = mean_bert
    llm = Llama(str(path), embedding=True, verbose=False)
    assert is_encoder(llm.model) and llm.engine is None
    with pytest.raises(ValueError, match="bert is an encoder model"):
        llm.create_completion("hello", max_tokens=4)
    with pytest.raises(ValueError, match="cannot generate text"):
        llm.create_chat_completion([{"role": "user", "content": "hello"}])
    with pytest.raises(ValueError, match="encoder"):
        llm.perplexity("hello world " * 20, n_ctx=8)
    assert llm.kv_cache_usage() == (0, 0)


@pytest.mark.parametrize("command", [["bench", "-p", "0", "-n", "4", "-r", "1"], ["perplexity", "-f", "TEXT", "-c", "8"]])
def test_generation_commands_refuse_an_encoder_in_one_line(mean_bert, tmp_path, capsys, command):
    from kamado.cli.main import main

    _, path = mean_bert
    (tmp_path / "text.txt").write_text("hello world " * 40)
    argv = [tmp_path / "text.txt" if a == "TEXT" else a for a in command]
    with pytest.raises(SystemExit) as exit_info:
        main([argv[0], "-m", str(path), *map(str, argv[1:])])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "encoder model" in err and "Traceback" not in err


def test_a_missing_tensor_is_named(mean_bert):
    _, path = mean_bert
    reader = GGUFReader(path)
    del reader.tensors["blk.1.layer_output_norm.bias"]
    with pytest.raises(ModelError, match=r"blk\.1\.layer_output_norm\.bias is missing.*supported architectures: .*bert"):
        load_model(reader)


def test_server_embeddings_endpoint_serves_a_bert_model(mean_bert):
    from fastapi.testclient import TestClient

    from kamado.server import ModelSettings, ServerSettings, create_app

    _, path = mean_bert
    settings = ServerSettings(models=[ModelSettings(model=str(path), model_alias="tiny-bert", verbose=False)])
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/embeddings", json={"model": "tiny-bert", "input": ["hello world", "the model"]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [len(d["embedding"]) for d in body["data"]] == [32, 32]
        expected = Llama(str(path), embedding=True, verbose=False).create_embedding(["hello world", "the model"])
        for got, want in zip(body["data"], expected["data"], strict=True):
            assert got["embedding"] == pytest.approx(want["embedding"], abs=1e-6)
        r = client.post("/v1/chat/completions", json={"model": "tiny-bert", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "encoder" in r.text


def test_fused_qkv_file_gives_the_same_states(mean_bert, tmp_path):
    """Some BERT GGUFs hold one attn_qkv weight and bias per layer (llama.cpp reads either form)."""
    import numpy as np

    from kamado.gguf.writer import GGUFWriter

    _, path = mean_bert
    reader = GGUFReader(path)
    writer = GGUFWriter(tmp_path / "fused.gguf")
    writer.add_fields_from(reader.fields)
    for name, info in reader.tensors.items():
        part = name.rsplit(".", 2)
        if part[-2] in ("attn_k", "attn_v"):
            continue
        if part[-2] == "attn_q":  # q, k and v stacked along the output rows, as llama.cpp's fused qkv
            name = f"{part[0]}.attn_qkv.{part[-1]}"
            data = np.concatenate([reader.tensors[f"{part[0]}.attn_{n}.{part[-1]}"].raw for n in "qkv"])
            writer.add_tensor(name, info.type, (3 * info.shape[0], *info.shape[1:]), data.reshape(-1))
        else:
            writer.add_tensor(name, info.type, info.shape, np.array(info.raw))
    fused_path = writer.write()[0]
    tokens = torch.tensor(Llama(str(path), embedding=True, verbose=False).tokenize(TEXTS[0].encode()))
    fused = load_model(GGUFReader(fused_path), "reference")
    assert "blk.0.attn_qkv.weight" in GGUFReader(fused_path).tensors
    torch.testing.assert_close(fused.encode(tokens), load_model(reader, "reference").encode(tokens), rtol=0, atol=1e-5)


def test_q8_0_file_embeds_close_to_f32(mean_bert, tmp_path):
    source, path = mean_bert
    q8 = convert(source, tmp_path / "bert-q8_0.gguf", outtype="q8_0")[0]
    exact = torch.tensor(Llama(str(path), embedding=True, verbose=False).embed(TEXTS[1], normalize=True))
    quantized = torch.tensor(Llama(str(q8), embedding=True, verbose=False).embed(TEXTS[1], normalize=True))
    assert float(exact @ quantized) > 0.999
