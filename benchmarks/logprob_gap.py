"""How far kamado's top-5 logprobs are from llama.cpp's on the greedy reference prompts (issue 4's parity measure).

    python benchmarks/logprob_gap.py [--backend cpu] [--models gemma,qwen]

For every prompt of `../shared/reference/*/llamacpp-greedy-tokenize.json`: 48 greedy tokens through the engine,
the largest |ours - llama.cpp| over the recorded top-5 at the first step (the prompt's logits) and at every step
while the tokens agree. Prints per model: first-step mean and worst, all-agreeing-steps worst, identical prompts.
docs/NUMERICS.md explains the measure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.engine import Engine  # noqa: E402
from kamado.gguf.reader import GGUFReader  # noqa: E402
from kamado.models import load_model  # noqa: E402
from tests import realmodels  # noqa: E402

MODELS = {"gemma": ("gemma3-270m", realmodels.gemma_path), "qwen": ("qwen25-coder-0.5b", realmodels.qwen_path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--models", default="gemma,qwen")
    args = ap.parse_args()
    shared = realmodels.shared_dir()
    print("| model | backend | first step mean | first step worst | worst while tokens agree | identical |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        folder, path = MODELS[name]
        records = json.loads((shared / f"reference/{folder}/llamacpp-greedy-tokenize.json").read_text())["greedy"]
        engine = Engine(load_model(GGUFReader(path()), args.backend), None, n_ctx=512, n_seq_max=1)
        first, worst, same = realmodels.greedy_gaps(engine, records)
        engine.close()
        print(f"| {name} | {args.backend} | {sum(first) / len(first):.4f} | {max(first):.4f} | {worst:.4f} | {same}/{len(records)} |")


if __name__ == "__main__":
    main()
