"""Prompt processing (pp128) and generation (tg64) speed of the engine on the real models, beside llama.cpp.

    python benchmarks/bench_engine.py [--threads 2] [--reps 3]

Like llama-bench: pp = 128 prompt tokens in one forward (time to the first sampled token),
tg = 64 tokens generated one at a time (ignore_eos, greedy). Random token ids, fixed seed.
llama.cpp's figures are the reference README's (llama-bench -t 2 on the same 2-core machine).
tg x8 = aggregate generated tokens/s of 8 sequences decoding together (after all 8 prompts are in),
and its ratio to tg64 (batched decode should be nearly free while decode is memory-bound).

Memory: each model runs in a fresh process. "peak RSS" is that process's high-water mark (VmHWM: anonymous
memory and resident file pages, the mmap'd model file included); "base" is its RSS after importing torch and
kamado, before the model is opened (torch alone is ~300 MiB); "model" = peak - base - the engine's KV cache
(n_ctx 512 x 8 sequences, fp16), as a multiple of the file size: issue 4's rule is model <= 1.3 x file.
"""

from __future__ import annotations

import argparse
import subprocess
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


def bench(path: Path, reps: int) -> tuple[float, float, float, float, float]:
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
    return load_s, sorted(pp[1:])[len(pp[1:]) // 2], sorted(tg[1:])[len(tg[1:]) // 2], batched_decode(engine, gen), kv_cache_mib(engine)


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


def status_mib(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM, ...) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))


def kv_cache_mib(engine: Engine) -> float:
    return sum(t.numel() * t.element_size() for t in engine.cache.k + engine.cache.v) / 2**20


def one_model(name: str, reps: int) -> None:
    """Bench one model in this (fresh) process and print its table row."""
    base = status_mib("VmRSS")
    path = MODELS[name]()
    load_s, pp, tg, tg8, kv = bench(path, reps)
    peak = status_mib("VmHWM")
    ref_pp, ref_tg = LLAMACPP[name]
    size = path.stat().st_size / 2**20
    model = peak - base - kv
    print(f"| {name} | {load_s:.1f} | {pp:.1f} | {ref_pp} | {tg:.1f} | {ref_tg} | {tg8:.1f} ({tg8 / tg:.2f}x) | {peak:.0f} | {base:.0f} | "
          f"{kv:.0f} | {model:.0f} ({model / size:.2f}x) | {size:.0f} |", flush=True)


MODELS = {"gemma3-270m": realmodels.gemma_path, "qwen2.5-0.5b": realmodels.qwen_path}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", choices=list(MODELS), help="bench this model only, in this process (the table runs each so)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        one_model(args.model, args.reps)
        return
    print(f"torch {torch.__version__}, {args.threads} threads")
    print("| model | load s | pp128 t/s | llama.cpp pp128 | tg64 t/s | llama.cpp tg64 | tg x8 t/s (ratio) | peak RSS MiB | base MiB | "
          "KV MiB | model MiB (x file) | file MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)  # before the children write their rows
    for name in MODELS:
        subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--reps", str(args.reps), "--model", name], check=True)


if __name__ == "__main__":
    main()
