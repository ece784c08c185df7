"""kamado bench and llama-bench taking turns on the same machine, so that both see the same machine state.

    python benchmarks/beside_llamacpp.py --llama-bench PATH/llama-bench -m MODEL.gguf [-m ...] [--rounds 3]
        [-p 128] [-n 64] [-t 2] [-r 5]

The reference README's llama.cpp figures were measured once, on a machine like this one; this shared 2-core VM's
speed varies by up to 2x over a day (docs/BENCHMARKS.md), so a kamado figure taken at another hour is compared with
llama.cpp here, in alternating rounds of each tool's own benchmark (llama-bench's method for both: warm-up, -r runs,
mean t/s). Prints each round's figures and the ratio kamado / llama.cpp per test: the medians over the rounds.
llama-bench is not part of kamado: build it from llama.cpp's source (docs/NUMERICS.md, "The build").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run_json(cmd: list[str], env: dict | None = None) -> dict[tuple[str, str], float]:
    """{(model file name, test): mean t/s} from a bench command's `-o json` output."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    figures = {}
    for rec in json.loads(out.stdout):
        test = f"pp{rec['n_prompt']}" if rec["n_prompt"] else f"tg{rec['n_gen']}"
        figures[(Path(rec["model_filename"]).name, test)] = rec["avg_ts"]
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-bench", required=True, help="path of a llama-bench binary")
    ap.add_argument("-m", "--model", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-p", default="128")
    ap.add_argument("-n", default="64")
    ap.add_argument("-t", default="2")
    ap.add_argument("-r", default="5")
    args = ap.parse_args()
    common = ["-p", args.p, "-n", args.n, "-t", args.t, "-r", args.r, "-o", "json"]
    models = [x for m in args.model for x in ("-m", m)]
    env = os.environ | {"LD_LIBRARY_PATH": str(Path(args.llama_bench).resolve().parent)}  # a shared-library build
    rounds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for i in range(args.rounds):
        theirs = run_json([args.llama_bench, *models, *common], env)
        ours = run_json([sys.executable, "-m", "kamado.cli.main", "bench", *models, *common])
        for key in theirs:
            rounds.setdefault(key, []).append((ours[key], theirs[key]))
            print(f"round {i + 1}: {key[0]} {key[1]}: kamado {ours[key]:.2f} t/s, llama.cpp {theirs[key]:.2f} t/s", flush=True)
    print("\n| model | test | kamado t/s (rounds) | llama.cpp t/s (rounds) | kamado / llama.cpp (median) |")
    print("|---|---|---|---|---|")
    for (model, test), pairs in rounds.items():
        ours = " / ".join(f"{a:.1f}" for a, _ in pairs)
        theirs = " / ".join(f"{b:.1f}" for _, b in pairs)
        ratio = statistics.median(a / b for a, b in pairs)
        print(f"| {model} | {test} | {ours} | {theirs} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
