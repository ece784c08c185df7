"""Prompt processing (pp128) and generation (tg64) speed of the engine on the real models, beside llama.cpp.

    python benchmarks/bench_engine.py [--threads 2] [--reps 3]

Like llama-bench: pp = 128 prompt tokens in one forward (time to the first sampled token),
tg = 64 tokens generated one at a time (ignore_eos, greedy). Random token ids, fixed seed.
llama.cpp's figures are the reference README's (llama-bench -t 2 on the same 2-core machine).
tg x8 = aggregate generated tokens/s of 8 sequences decoding together (after all 8 prompts are in),
and its ratio to tg64 (batched decode should be nearly free while decode is memory-bound).
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.engine import Engine, Request, SamplingParams, TokenEvent  # noqa: E402
from kamado.gguf.reader import GGUFReader  # noqa: E402
from kamado.models import load_model  # noqa: E402
from tests import realmodels  # noqa: E402

LLAMACPP = {"gemma3-270m": (678.4, 85.7), "qwen2.5-0.5b": (233.4, 46.3)}


def bench(path: Path, reps: int) -> tuple[float, float, float, float]:
    t0 = time.perf_counter()
    model = load_model(GGUFReader(path))
    load_s = time.perf_counter() - t0
    engine = Engine(model, None, n_ctx=512, n_seq_max=8)
    gen = torch.Generator().manual_seed(0)
    pp, tg = [], []
    for _ in range(reps + 1):  # first round warms up
        prompt = torch.randint(100, 10000, (128,), generator=gen).tolist()
        start = time.perf_counter()
        times = [time.perf_counter() for e in engine.submit(Request(prompt, SamplingParams(temperature=0), 65, ignore_eos=True))
                 if isinstance(e, TokenEvent)]
        pp.append(128 / (times[0] - start))
        tg.append(64 / (times[-1] - times[0]))
    return load_s, sorted(pp[1:])[len(pp[1:]) // 2], sorted(tg[1:])[len(tg[1:]) // 2], batched_decode(engine, gen)


def batched_decode(engine: Engine, gen: torch.Generator, streams: int = 8, prompt_len: int = 32, new: int = 33) -> float:
    """Aggregate tokens/s of `streams` concurrent greedy requests, counted once every stream has its first token."""
    handles = [engine.submit(Request(torch.randint(100, 10000, (prompt_len,), generator=gen).tolist(), SamplingParams(temperature=0),
                                     new, ignore_eos=True)) for _ in range(streams)]
    stamps: list[list[float]] = [[] for _ in handles]

    def drain(i: int) -> None:
        stamps[i] = [time.perf_counter() for e in handles[i] if isinstance(e, TokenEvent)]

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = max(s[0] for s in stamps)
    after = sum(1 for s in stamps for t in s if t > start)
    return after / (max(s[-1] for s in stamps) - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    print("| model | load s | pp128 t/s | llama.cpp pp128 | tg64 t/s | llama.cpp tg64 | tg x8 t/s (ratio) | peak RSS MiB | file MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, locate in (("gemma3-270m", realmodels.gemma_path), ("qwen2.5-0.5b", realmodels.qwen_path)):
        path = locate()
        load_s, pp, tg, tg8 = bench(path, args.reps)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ref_pp, ref_tg = LLAMACPP[name]
        size = path.stat().st_size / 2**20
        batched = f"{tg8:.1f} ({tg8 / tg:.2f}x)"
        print(f"| {name} | {load_s:.1f} | {pp:.1f} | {ref_pp} | {tg:.1f} | {ref_tg} | {batched} | {rss:.0f} | {size:.0f} |", flush=True)


if __name__ == "__main__":
    main()
