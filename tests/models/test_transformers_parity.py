"""Architecture variants the reference checkpoints do not reach, against Hugging Face transformers run live.

Each case starts from a tiny reference checkpoint (../shared/reference/convert/hf/NAME: its tokenizer and
config), changes the config (rope scaling, sliding window, layer count, ...), gives it fresh random
weights large enough that every term matters, saves it, converts it with kamado and compares kamado's
logits with transformers' at every position of a sequence longer than the sliding window.

Not covered on purpose: YaRN with an explicit `attention_factor`, `beta_fast` or `beta_slow`. llama.cpp
ignores rope.scaling.yarn_attn_factor / yarn_beta_* for these architectures (32, 1 and 0.1*ln(factor)+1
always), and kamado follows llama.cpp there (kamado/models/config.py), so transformers differs by design.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kamado.convert import convert
from kamado.engine import Engine, Request, SamplingParams
from kamado.gguf.reader import GGUFReader
from kamado.models import load_model, solo_attend
from tests.convert.reference_models import reference_dir

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-3
# The engine keeps keys/values in an F16 cache and attends as llama.cpp's CPU kernels do (blocks.attention, fp16
# rounding): logprobs move by up to ~5e-3 against float32 on these deliberately large weights.
ENGINE_TOLERANCE = 1e-2
DECODE_STEPS = 12
N_TOKENS = 40  # longer than the windows of 8 set below, longer than the longrope cases' original context of 32
WINDOW = 8
LONGROPE = {"rope_theta": 10000.0, "rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
            "long_factor": [1.0 + 3.0 * i for i in range(8)]}


def _gemma3_layer_types(n_layer: int) -> list[str]:
    return ["full_attention" if il % 6 == 5 else "sliding_attention" for il in range(n_layer)]


# name: (reference checkpoint, config changes, tokens, n_ctx given to kamado)
CASES = {
    "llama3-rope-scaling": ("llama3-ropescale-spm", {}, N_TOKENS, 0),
    "llama-linear": ("llama-spm", {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0}}, N_TOKENS, 0),
    "llama-yarn": ("llama-spm", {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 128}}, N_TOKENS, 0),
    "mistral": ("llama-spm", {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": None}, N_TOKENS, 0),
    "mixtral": ("mixtral-spm", {}, N_TOKENS, 0),
    "qwen2": ("qwen2-bpe", {}, N_TOKENS, 0),
    "qwen2-yarn": ("qwen2-bpe", {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0,
                                                    "original_max_position_embeddings": 32}}, N_TOKENS, 0),
    "qwen3": ("qwen3-bpe", {}, N_TOKENS, 0),
    "gemma2-window": ("gemma2-spm", {"sliding_window": WINDOW}, N_TOKENS, 0),
    "gemma3-global-layer": ("gemma3-spm", {
        "num_hidden_layers": 6, "layer_types": _gemma3_layer_types(6), "sliding_window": WINDOW,
        "rope_parameters": {"full_attention": {"rope_theta": 1e6, "rope_type": "linear", "factor": 8.0},
                            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}}, N_TOKENS, 0),
    # Phi-3 longrope: transformers picks the factors by sequence length, llama.cpp (and kamado) by context size.
    "phi3-longrope-long": ("phi3-spm", {"original_max_position_embeddings": 32, "rope_parameters": LONGROPE}, N_TOKENS, 512),
    "phi3-longrope-short": ("phi3-spm", {"original_max_position_embeddings": 32, "rope_parameters": LONGROPE}, 20, 32),
}


def _make_checkpoint(shared: Path, base: str, changes: dict, target: Path) -> Path:
    source = reference_dir(shared) / "hf" / base
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors"))
    if not any((target / f).is_file() for f in ("tokenizer.model", "tokenizer.json")):  # qwen3-bpe shares qwen2-bpe's
        shutil.copy(source.parent / "qwen2-bpe" / "tokenizer.json", target / "tokenizer.json")
    config = json.loads((source / "config.json").read_text()) | changes
    (target / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.from_pretrained(target), dtype=torch.float32)
    with torch.no_grad():  # the default init (std 0.02) leaves logits near zero: use unit-variance outputs instead
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
            else:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(target)
    (target / "config.json").write_text(json.dumps(config))  # exactly the config under test, as the converter reads it
    return target


@pytest.fixture(scope="module")
def variant(shared, tmp_path_factory):
    """variant(case) -> (kamado model with the reference backend, transformers model, token ids)."""
    work = tmp_path_factory.mktemp("hf-variants")
    built = {}

    def build(case: str):
        if case not in built:
            base, changes, n_tokens, n_ctx = CASES[case]
            folder = _make_checkpoint(shared, base, changes, work / case)
            hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            gguf = convert(folder, work / f"{case}.gguf", "f32")[0]
            model = load_model(GGUFReader(gguf), "reference", n_ctx=n_ctx)
            ids = torch.randint(3, min(hf.config.vocab_size, 1000), (n_tokens,), generator=torch.Generator().manual_seed(1))
            built[case] = model, hf, ids
        return built[case]

    return build


def _hf_logits(hf, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(ids[None]).logits[0]


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case, variant):
    model, hf, ids = variant(case)
    with torch.inference_mode():
        ours = model(ids, torch.arange(len(ids)), solo_attend(model.cfg.n_layer))
    expected = _hf_logits(hf, ids)
    assert expected.abs().max() > 1.0  # the weights are large enough for errors to show
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_engine_decode_matches_transformers(case, variant):
    """Through the engine: the prompt prefilled in chunks of 7 over pages of 4, then 12 greedy steps (sliding
    windows over the paged cache); each step's top logprobs against transformers fed the same tokens."""
    model, hf, ids = variant(case)
    prompt = ids[:-DECODE_STEPS]
    engine = Engine(model, None, n_ctx=64, n_seq_max=1, n_batch=7, page_size=4)
    try:
        *steps, finish = engine.generate(Request(prompt.tolist(), SamplingParams(temperature=0, n_probs=4), max_tokens=DECODE_STEPS))
    finally:
        engine.close()
    assert (finish.reason, finish.completion_tokens) == ("length", DECODE_STEPS)
    tokens = torch.tensor([step.token for step in steps])
    expected = torch.log_softmax(_hf_logits(hf, torch.cat([prompt, tokens])).double(), -1)[len(prompt) - 1 : -1]
    for row, step in zip(expected, steps, strict=True):
        top_ids = [i for i, _ in step.top]
        torch.testing.assert_close(torch.tensor([lp for _, lp in step.top], dtype=torch.float64), row[top_ids],
                                   atol=ENGINE_TOLERANCE, rtol=0)
        first, second = row.topk(2).values
        if first - second > 2 * ENGINE_TOLERANCE:  # not a near tie: greedy must pick transformers' best token
            assert step.token == int(row.argmax())
