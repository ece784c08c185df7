"""Perplexity of seed 001 (-c 256) against llama.cpp's, unperturbed and under last-bit perturbations.

    python3 benchmarks/perplexity_spread.py gemma|qwen [--runs 5] [--kernels cpu]

A last-bit change anywhere moves Gemma 3 270M's perplexity by ~0.4% (sd): the 8-bit activation roundings turn it into
whole rounding steps that compound through the layers (docs/NUMERICS.md, 2026-12-03). So one figure says little about
an arithmetic change; this prints the unperturbed figure, then runs with layer 0's attn_norm weights scaled by
1 + 1e-6 * N(0, 1) (seeds 1..runs), and the mean (the systematic offset) and sd (the chance) of all of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kamado  # noqa: E402
from tests.realmodels import SHARED, gemma_path, qwen_path  # noqa: E402

LLAMACPP = {"gemma": 24.6676, "qwen": 15.1816}  # llama-perplexity, reference README


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=sorted(LLAMACPP))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kernels", default="cpu")
    args = ap.parse_args()
    text = (SHARED / "seeds/001_3eca53226205c1ab.txt").read_text()
    path = gemma_path() if args.model == "gemma" else qwen_path()
    llm = kamado.Llama(str(path), n_ctx=1024, verbose=False, kernels=args.kernels)
    norm = llm.model.layers[0].attn_norm
    original = norm.clone()
    gaps = []
    for seed in range(args.runs + 1):
        noise = torch.randn(original.shape, generator=torch.Generator().manual_seed(seed))
        norm.copy_(original if seed == 0 else original * (1 + 1e-6 * noise))
        ppl = llm.perplexity(text, n_ctx=256)
        gaps.append((ppl / LLAMACPP[args.model] - 1) * 100)
        print(f"{'unperturbed' if seed == 0 else f'seed {seed}':>12}: {ppl:.4f} ({gaps[-1]:+.3f}%)", flush=True)
    print(f"{args.model} ({args.kernels}): mean {statistics.mean(gaps):+.3f}%, sd {statistics.stdev(gaps):.3f} over {len(gaps)} runs")


if __name__ == "__main__":
    main()
