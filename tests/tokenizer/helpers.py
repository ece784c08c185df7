"""Shared loading for the tokenizer tests: one Tokenizer per vocabulary per session."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from kamado.tokenizer import Tokenizer

VOCAB_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "vocab"


@cache
def load(path: str) -> Tokenizer:
    return Tokenizer.from_gguf(path)


def vocab_cases(name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test-tokenizer-0 pairs: strings separated by the line __ggml_vocab_test__, ids one line each."""
    inputs = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if inputs and inputs[-1] == "":
        inputs.pop()
    outputs = (VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    if outputs and outputs[-1] == "":
        outputs.pop()
    assert len(inputs) == len(outputs), f"{name}: {len(inputs)} inputs but {len(outputs)} outputs"
    return [(s, [int(x) for x in out.split()]) for s, out in zip(inputs, outputs)]
