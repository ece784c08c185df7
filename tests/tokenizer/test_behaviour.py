"""Special tokens, BOS/EOS handling, end-of-generation sets, decoding rules and errors."""

from __future__ import annotations

import pytest

from kamado.tokenizer import Tokenizer, TokenizerError
from kamado.tokenizer.tokenizer import clean_spaces
from tests.tokenizer.helpers import VOCAB_DIR, load


def _fixture(name):
    path = VOCAB_DIR / f"ggml-vocab-{name}.gguf"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return load(str(path))


def test_spm_bos_and_special_parsing(shared):
    tok = _fixture("llama-spm")
    assert tok.add_bos and not tok.add_eos
    assert tok.encode("")[0] == tok.bos_id and tok.encode("", add_special=False) == []
    with_special = tok.encode("a</s>b", add_special=False)
    assert tok.eos_id in with_special
    assert tok.eos_id not in tok.encode("a</s>b", add_special=False, parse_special=False)
    assert tok.eos_id in tok.eog_ids


def test_decode_skip_special_drops_bos_and_control_text(shared):
    tok = _fixture("llama-spm")
    ids = tok.encode("Hello world")
    assert tok.decode(ids) == "<s> Hello world"  # llama.cpp renders the BOS text, then the text's prefix space
    assert tok.decode(ids, skip_special=True) == " Hello world"  # dropping BOS keeps the space (llama_detokenize)
    assert tok.decode(ids[1:]) == "Hello world"


def test_bpe_clean_spaces_rules():
    assert clean_spaces("Hi , you ! ok ?") == "Hi, you! ok?"
    assert clean_spaces("it ' s") == "it's"
    assert clean_spaces("he 's we 're I 'm they 've") == "he's we're I'm they've"
    assert clean_spaces("don 't we 'll") == "don 't we 'll"
    assert clean_spaces(" ,") == ","  # llama.cpp removes even a leading space


def test_token_to_piece_is_bytes_and_checks_range(shared):
    tok = _fixture("gpt-2")
    assert tok.token_to_piece(tok.encode(" hello", add_special=False)[0]) == b" hello"
    with pytest.raises(TokenizerError, match="out of range"):
        tok.token_to_piece(tok.n_vocab)


def test_unknown_model_and_pre_tokenizer_are_named():
    base = {"tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]}
    with pytest.raises(TokenizerError, match="'rwkv9'"):
        Tokenizer.from_metadata({**base, "tokenizer.ggml.model": "rwkv9"})
    with pytest.raises(TokenizerError, match="'no-such-pre'"):
        Tokenizer.from_metadata({**base, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({"tokenizer.ggml.tokens": ["a"]}, source="x.gguf")


def test_every_known_pre_tokenizer_compiles():
    from kamado.tokenizer.pretokenize import known_pre_tokenizers

    for name in known_pre_tokenizers():
        meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": name, "tokenizer.ggml.tokens": ["a", "b", "ab", "Ċ"],
                "tokenizer.ggml.merges": ["a b"], "tokenizer.ggml.bos_token_id": 0,
                "tokenizer.ggml.seperator_token_id": 1}
        tok = Tokenizer.from_metadata(meta, source=name)
        assert tok.encode("ab", add_special=False) == [2], name


@pytest.mark.realmodel
def test_real_model_special_tokens(gemma_path, qwen_path):
    gemma, qwen = load(str(gemma_path)), load(str(qwen_path))
    assert gemma.bos_id == 2 and gemma.eos_id == 1 and gemma.add_bos
    turn_end = gemma.vocab.token_to_id["<end_of_turn>"]
    assert {gemma.eos_id, turn_end} <= gemma.eog_ids
    assert gemma.encode("<start_of_turn>user", add_special=False)[0] == gemma.vocab.token_to_id["<start_of_turn>"]
    im_end, eot = qwen.vocab.token_to_id["<|im_end|>"], qwen.vocab.token_to_id["<|endoftext|>"]
    assert {im_end, eot} <= qwen.eog_ids and not qwen.add_bos
    assert qwen.decode(qwen.encode("def f(x):\n    return x  # ü")) == "def f(x):\n    return x  # ü"
