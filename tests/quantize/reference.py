"""The llama-quantize command lines behind each file of quantize-llamacpp-hashes.json (reference README)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SUFFIX_FLAGS = {
    "imatrix": ["--imatrix", "imatrix-seed001.gguf"],
    "imatrix-dat": ["--imatrix", "imatrix-seed001.dat"],
    "pure": ["--pure"],
    "flags": ["--leave-output-tensor", "--token-embedding-type", "q8_0"],
    "ott": ["--output-tensor-type", "q6_k", "--override-kv", "general.name=str:renamed"],
}


@cache
def hashes(shared: Path) -> dict:
    return json.loads((shared / "reference" / "quantize-llamacpp-hashes.json").read_text())


def command_line(file_name: str) -> tuple[str, str, list[str]]:
    """(source, type, flags) for a reference file: source is 'gemma' (the Q4_K_M model) or 'f16' (out-F16.gguf)."""
    stem = file_name.removesuffix(".gguf")
    source = "f16" if stem.startswith("f16-out-") else "gemma"
    rest = stem.removeprefix("f16-out-").removeprefix("out-")
    qtype, _, suffix = rest.partition("-")
    flags = list(SUFFIX_FLAGS[suffix]) if suffix else []
    if source == "gemma":
        flags.insert(0, "--allow-requantize")
    return source, qtype, flags
