"""How far activation rounding moves the tiny random models' logprobs from the CPU reference backend (docs/GPU.md,
session 7): per file type and prompt, the largest top-5 logprob difference over greedy steps (until the tokens part) of
  - kamado's CPU backend (int4/int8 weights, activations rounded as llama.cpp rounds them),
  - the reference backend rounding Q4_K/Q6_K layer products' activations to Q8_K at decode (what the CUDA GEMV does),
  - the same with 1e-4 relative noise in x before the rounding, against it without (rounding steps that flip),
  - the reference multiplying q8k_gemv.rounded(x) with two planes (the Q8_K quants and their remainder: ~15 bits).
CPU only: PYTHONPATH=$PWD python3 benchmarks/rounding_sensitivity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests.engine.test_gpu as gpu_tests  # noqa: E402  (its model files, prompts and greedy runs)
from kamado.gguf import GGUFReader  # noqa: E402
from kamado.kernels.activations import round_q8_k  # noqa: E402
from kamado.kernels.linear import ReferenceLinear  # noqa: E402
from kamado.kernels.triton import q8k_gemv  # noqa: E402
from kamado.models import load_model  # noqa: E402

NOISE = 1e-4


def max_diff(got, want) -> float:
    worst = 0.0
    for (gt, g), (wt, w) in zip(got, want, strict=True):
        worst = max([worst] + [abs(g[k] - v) for k, v in w.items() if k in g])
        if gt != wt:
            break
    return worst


def rounding(noise: float, rounded=round_q8_k):
    def round_input(self, x):
        if self.tensor.name in ("output.weight", "token_embd.weight") or x.shape[0] > 8:
            return x
        return rounded(x * (1 + noise * torch.randn_like(x)) if noise else x)

    return round_input


def main() -> None:
    directory = Path(tempfile.mkdtemp())
    plain = ReferenceLinear.round_input
    print("| file type | prompt | CPU backend vs reference | Q8_K-rounded vs reference | rounded with noise vs rounded | "
          "two planes vs reference |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for file_type in ("Q4_K_S", "Q6_K"):
        with GGUFReader(gpu_tests._model_file(directory, file_type)) as reader:
            reference, cpu = load_model(reader, "reference"), load_model(reader, "cpu")
            for seed in range(3):
                prompt = gpu_tests._prompt(seed)
                base, fast = gpu_tests._run(reference, prompt), gpu_tests._run(cpu, prompt)
                ReferenceLinear.round_input = rounding(0.0)
                rounded = gpu_tests._run(reference, prompt)
                torch.manual_seed(seed)
                ReferenceLinear.round_input = rounding(NOISE)
                noisy = gpu_tests._run(reference, prompt)
                q8k_gemv.PLANES = 2
                ReferenceLinear.round_input = rounding(0.0, q8k_gemv.rounded)
                two_planes = gpu_tests._run(reference, prompt)
                ReferenceLinear.round_input = plain
                print(f"| {file_type} | {seed} | {max_diff(fast, base):.4f} | {max_diff(rounded, base):.4f} | "
                      f"{max_diff(noisy, rounded):.4f} | {max_diff(two_planes, base):.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
