"""Tokenizer speed next to llama.cpp: the seed texts concatenated four times (~665 KB), one thread, load excluded.

    python benchmarks/bench_tokenizer.py

llama.cpp's figures (llama-tokenize, one thread) come from issue 3: ~0.8 s with the Gemma 3 vocabulary, ~0.35 s with
Qwen2.5's. Loading time is printed separately (first load builds and caches the SPM merge list; later loads reuse it).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # `tokenizers` would otherwise use every core; llama.cpp used one

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.tokenizer import Tokenizer  # noqa: E402
from tests import realmodels  # noqa: E402

LLAMA_CPP_SECONDS = {"Gemma 3 270M (SPM, 262k)": 0.8, "Qwen2.5-Coder 0.5B (BPE qwen2, 152k)": 0.35}


def main() -> None:
    seeds = sorted((realmodels.SHARED / "seeds").glob("*.txt"))
    if not seeds:
        sys.exit(f"no seed texts under {realmodels.SHARED / 'seeds'}")
    text = "".join(p.read_text(encoding="utf-8") for p in seeds) * 4
    models = {"Gemma 3 270M (SPM, 262k)": realmodels.gemma_path, "Qwen2.5-Coder 0.5B (BPE qwen2, 152k)": realmodels.qwen_path}
    print(f"text: {len(text.encode()) / 1000:.0f} KB, RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}")
    print(f"{'vocabulary':40} {'load s':>8} {'tokens':>8} {'encode s':>9} {'cpu s':>7} {'llama.cpp s':>12}")
    for name, locate in models.items():
        path = locate()
        t0 = time.perf_counter()
        tok = Tokenizer.from_gguf(path)
        load_s = time.perf_counter() - t0
        best_wall, best_cpu, n = float("inf"), float("inf"), 0
        for _ in range(3):
            w, c = time.perf_counter(), time.process_time()
            n = len(tok.encode(text))
            best_wall, best_cpu = min(best_wall, time.perf_counter() - w), min(best_cpu, time.process_time() - c)
        print(f"{name:40} {load_s:8.2f} {n:8d} {best_wall:9.3f} {best_cpu:7.3f} {LLAMA_CPP_SECONDS[name]:12.2f}")


if __name__ == "__main__":
    main()
