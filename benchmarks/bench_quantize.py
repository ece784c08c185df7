"""Whole-file quantization time of `kamado quantize` next to llama-quantize's (reference README).

    python benchmarks/bench_quantize.py [--threads 2] [--types Q8_0,Q4_0,Q4_K_M,Q6_K,Q2_K,IQ4_XS]

Makes the F16 Gemma 3 270M once (from the Q4_K_M package model, as the reference did), then times
F16 -> TYPE as a whole process (`python -m kamado.cli.main quantize …`), like the reference timings.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.realmodels import gemma_path  # noqa: E402

# llama-quantize, F16 -> type, 2 threads, whole process, on the 2-core reference machine (reference README).
LLAMA_QUANTIZE_S = {"Q8_0": 2.8, "Q4_0": 3.7, "Q4_K_M": 4.2, "Q6_K": 4.3, "Q2_K": 3.7, "IQ4_XS": 15.2}


def quantize(src: Path, out: Path, qtype: str, threads: int, extra=()) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kamado.cli.main", "quantize", *extra, str(src), str(out), qtype, str(threads)],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(LLAMA_QUANTIZE_S))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        f16 = Path(tmp) / "f16.gguf"
        quantize(gemma_path(), f16, "F16", args.threads, ["--allow-requantize"])
        print("| F16 -> type | kamado (s) | llama-quantize (s) | ratio |\n|---|---|---|---|")
        for qtype in args.types.split(","):
            s = quantize(f16, Path(tmp) / "out.gguf", qtype, args.threads)
            ref = LLAMA_QUANTIZE_S.get(qtype)
            ratio = f"{s / ref:.2f}x" if ref else "-"
            print(f"| {qtype} | {s:.2f} | {ref if ref else '-'} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
