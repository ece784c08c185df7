"""Batched decode on the GPU, as llama-batched-bench reports it: N sequences, each a PP-token prompt then TG tokens.

    python benchmarks/bench_gpu_batched.py -m SYNTH.gguf --npl 1,8,32,64 --pp 128 --tg 128

All N requests are submitted at once to one engine (n_seq_max = N); the time runs from submission to the last
token. Aggregate generation t/s = N * TG / (time after the last prompt finished); total t/s = N * (PP + TG) / time.
One warm-up round (N = 1, short) compiles the kernels first.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.engine import Engine, Request, SamplingParams, TokenEvent  # noqa: E402
from kamado.gguf.reader import GGUFReader  # noqa: E402
from kamado.models import load_model  # noqa: E402


def run(engine: Engine, n: int, pp: int, tg: int, vocab: int, temp: float = 0.0) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(n)
    prompts = [torch.randint(259, vocab, (pp,), generator=gen).tolist() for _ in range(n)]
    first_token = [0.0] * n
    start = time.perf_counter()
    handles = [engine.submit(Request(p, SamplingParams(temperature=temp, seed=i), tg, ignore_eos=True)) for i, p in enumerate(prompts)]

    def drain(i):
        for e in handles[i]:
            if isinstance(e, TokenEvent) and not first_token[i]:
                first_token[i] = time.perf_counter()

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.perf_counter()
    return end - start, end - max(first_token)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--npl", default="1,8,32,64")
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("-ngl", type=int, default=99)
    ap.add_argument("--temp", type=float, default=0.0, help="0: greedy, as llama-batched-bench; > 0: llama.cpp's default chain (top_k 40)")
    args = ap.parse_args()
    model = load_model(GGUFReader(args.model), n_gpu_layers=args.ngl)
    npl = [int(v) for v in args.npl.split(",")]
    engine = Engine(model, None, n_ctx=args.pp + args.tg + 16, n_seq_max=max(npl))
    run(engine, 1, 16, 4, model.cfg.n_vocab)  # warm-up
    print("| PP | TG | B | T s | gen-only s | S_TG t/s (after last prompt) | S t/s (all tokens) |")
    print("|---|---|---|---|---|---|---|")
    for n in npl:
        total, gen_only = run(engine, n, args.pp, args.tg, model.cfg.n_vocab, args.temp)
        print(f"| {args.pp} | {args.tg} | {n} | {total:.2f} | {gen_only:.2f} | {n * (args.tg - 1) / gen_only:.1f} | "
              f"{n * (args.pp + args.tg) / total:.1f} |", flush=True)
    engine.close()


if __name__ == "__main__":
    main()
