"""llama.cpp's own tokenizer test sets (test-tokenizer-0): every fixture vocabulary, plus the Qwen2.5 and Gemma 3
vocabularies of the real models against the qwen2 / gemma-4 sets. Tokenized without BOS/EOS and without special parsing."""

from __future__ import annotations

import pytest

from tests.tokenizer.helpers import VOCAB_DIR, load, vocab_cases

FIXTURE_VOCABS = sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in VOCAB_DIR.glob("ggml-vocab-*.gguf")
                        if p.with_name(p.name + ".inp").exists()) if VOCAB_DIR.is_dir() else []


@pytest.mark.parametrize("name", FIXTURE_VOCABS)
def test_fixture_vocab_matches_llamacpp(shared, name):
    tok = load(str(VOCAB_DIR / f"ggml-vocab-{name}.gguf"))
    failures = [(s, got, want) for s, want in vocab_cases(name) if (got := tok.encode(s, add_special=False, parse_special=False)) != want]
    assert not failures, f"{name}: {len(failures)} strings differ, first: {failures[0]!r}"


@pytest.mark.realmodel
@pytest.mark.parametrize("name, model", [("qwen2", "qwen_path"), ("gemma-4", "gemma_path")])
def test_real_model_vocab_matches_llamacpp(shared, request, name, model):
    tok = load(str(request.getfixturevalue(model)))
    failures = [(s, got, want) for s, want in vocab_cases(name) if (got := tok.encode(s, add_special=False, parse_special=False)) != want]
    assert not failures, f"{name}: {len(failures)} strings differ, first: {failures[0]!r}"


def test_fixture_set_is_not_empty(shared):
    assert len(FIXTURE_VOCABS) >= 10  # the reference folder ships a dozen vocabularies with test sets
