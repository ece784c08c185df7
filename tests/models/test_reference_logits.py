"""Every tiny reference checkpoint, converted to f32 GGUF by kamado, against transformers' own logits.

../shared/reference/convert/transformers-logits.json holds, for two prompts per model, the token ids the
Hugging Face tokenizer produced and transformers' float32 logits at every position (full rows, or the 32
largest for the two 151936-token Qwen vocabularies). The model math runs on the token ids given there, so
tokenization is checked separately.
"""

from __future__ import annotations

import json

import pytest
import torch

from kamado.engine import Engine, Request, SamplingParams
from kamado.gguf.reader import GGUFReader
from kamado.models import load_model, solo_attend
from kamado.tokenizer import Tokenizer
from tests.convert.reference_models import MODELS, reference_dir

TOLERANCE = 1e-3
TOP = 8  # logprobs compared through the engine


@pytest.fixture(scope="module")
def transformers_logits(shared):
    return json.loads((reference_dir(shared) / "transformers-logits.json").read_text())


def _full_sequence_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor(ids), torch.arange(len(ids)), solo_attend(model.cfg.n_layer))


def _check_top32(ours: torch.Tensor, top32: list[list[list[float]]]) -> None:
    """Per position: our logits at their 32 ids agree, and none of our other logits would enter their top 32."""
    for position, row in enumerate(top32):
        ids = torch.tensor([int(i) for i, _ in row])
        expected = torch.tensor([v for _, v in row])
        torch.testing.assert_close(ours[position, ids], expected, atol=TOLERANCE, rtol=0)
        others = torch.ones(ours.shape[1], dtype=torch.bool)
        others[ids] = False
        assert ours[position, others].max() <= expected.min() + TOLERANCE, f"position {position}: top 32 differ"


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_transformers_at_every_position(name, reference_gguf, transformers_logits):
    model = load_model(GGUFReader(reference_gguf(name)), "reference")
    for record in transformers_logits[name]:
        ours = _full_sequence_logits(model, record["input_ids"])
        if "logits" in record:
            torch.testing.assert_close(ours, torch.tensor(record["logits"]), atol=TOLERANCE, rtol=0)
        else:
            _check_top32(ours, record["top32_logits"])


@pytest.mark.parametrize("name", MODELS)
def test_engine_first_token_logprobs_match_transformers(name, reference_gguf, transformers_logits):
    """Through the engine: prompt prefilled in chunks of 5 over pages of 4 (F16 KV cache), top logprobs of the next token."""
    model = load_model(GGUFReader(reference_gguf(name)), "reference")
    engine = Engine(model, None, n_ctx=64, n_seq_max=1, n_batch=5, page_size=4)
    try:
        for record in transformers_logits[name]:
            event = engine.generate(Request(record["input_ids"], SamplingParams(temperature=0, n_probs=TOP), max_tokens=1))[0]
            ids = [i for i, _ in event.top]
            ours = torch.tensor([lp for _, lp in event.top], dtype=torch.float64)
            if "logits" in record:
                expected = torch.log_softmax(torch.tensor(record["logits"][-1], dtype=torch.float64), -1)
                assert ids == expected.topk(TOP).indices.tolist()
                torch.testing.assert_close(ours, expected[ids], atol=TOLERANCE, rtol=0)
            else:  # only the top 32 logits are known: compare logprob differences, which equal logit differences
                row = record["top32_logits"][-1]
                assert ids == [int(i) for i, _ in row[:TOP]]
                expected = torch.tensor([v for _, v in row[:TOP]], dtype=torch.float64)
                torch.testing.assert_close(ours - ours[0], expected - expected[0], atol=TOLERANCE, rtol=0)
    finally:
        engine.close()


@pytest.mark.parametrize("name", MODELS)
def test_tokenizer_gives_the_transformers_ids(name, reference_gguf, transformers_logits):
    tokenizer = Tokenizer.from_gguf(GGUFReader(reference_gguf(name)))
    for record in transformers_logits[name]:
        text = record["prompt"]
        if name.startswith("gemma"):
            # llama.cpp's converter writes tokenizer.ggml.add_space_prefix = false for Gemma whatever the
            # SentencePiece model says; these tiny models' tokenizer.model was trained with the dummy prefix,
            # which transformers applies. So llama.cpp (and kamado) drop the leading "▁" transformers adds:
            # the same text with that space written out must give transformers' ids.
            assert tokenizer.encode(text, add_special=True, parse_special=False) != record["input_ids"]
            text = " " + text
        assert tokenizer.encode(text, add_special=True, parse_special=False) == record["input_ids"]
