"""The /tokenize records and greedy prompt tokens that llama-server produced for the two real models."""

from __future__ import annotations

import json

import pytest

from tests.tokenizer.helpers import load

pytestmark = pytest.mark.realmodel

MODELS = [("gemma3-270m", "gemma_path"), ("qwen25-coder-0.5b", "qwen_path")]


@pytest.mark.parametrize("folder, model", MODELS)
def test_tokenize_records(shared, request, folder, model):
    tok = load(str(request.getfixturevalue(model)))
    records = json.loads((shared / "reference" / folder / "llamacpp-greedy-tokenize.json").read_text())
    assert records["tokenize"]
    for rec in records["tokenize"]:
        assert tok.encode(rec["text"], add_special=rec["add_special"]) == rec["tokens"], rec["text"]


@pytest.mark.parametrize("folder, model", MODELS)
def test_greedy_prompt_tokens(shared, request, folder, model):
    tok = load(str(request.getfixturevalue(model)))
    records = json.loads((shared / "reference" / folder / "llamacpp-greedy-tokenize.json").read_text())
    for rec in records["greedy"]:
        assert tok.encode(rec["prompt"]) == rec["prompt_tokens"], rec["prompt"]


@pytest.mark.parametrize("folder, model", MODELS)
def test_greedy_outputs_decode_to_content(shared, request, folder, model):
    """llama-server's `content` is the generated pieces concatenated, control tokens (the final EOG) rendered empty."""
    tok = load(str(request.getfixturevalue(model)))
    records = json.loads((shared / "reference" / folder / "llamacpp-greedy-tokenize.json").read_text())
    for rec in records["greedy"]:
        if "content" in rec:
            assert b"".join(tok.token_to_piece(t, special=False) for t in rec["tokens"]).decode("utf-8", "replace") == rec["content"]
