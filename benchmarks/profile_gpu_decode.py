"""Where a GPU decode step's time goes: torch.profiler over a few engine decode steps of a synthetic model.

    python benchmarks/profile_gpu_decode.py -m SYNTH.gguf [--steps 4] [--prefill 512]

Prints the ops by host (CPU) time and by device time, and the wall time per step with and without the profiler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.engine import Engine, Request, SamplingParams  # noqa: E402
from kamado.engine.engine import Handle  # noqa: E402
from kamado.gguf.reader import GGUFReader  # noqa: E402
from kamado.models import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=0, help="also profile one prompt of this many tokens (one forward)")
    args = ap.parse_args()
    model = load_model(GGUFReader(args.model), n_gpu_layers=-1)
    engine = Engine(model, None, n_ctx=max(256, args.prefill + 64), n_seq_max=1)
    request = Request([1, 500, 600, 700], SamplingParams(temperature=0), 8, ignore_eos=True)
    engine.generate(request)  # warm-up: compiles the kernels
    engine.close()  # stop the worker; step() is driven directly below so the profiler sees the decode steps
    engine._waiting.append(Handle(engine, Request([1, 500, 600, 700], SamplingParams(temperature=0), 64, ignore_eos=True)))
    with torch.inference_mode():
        engine.step()  # admit + prefill
        for _ in range(3):
            engine.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
        plain = (time.perf_counter() - t0) / args.steps
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                engine.step()
            torch.cuda.synchronize()
    print(f"decode step: {plain * 1e3:.1f} ms wall without profiler ({1 / plain:.1f} t/s)")
    print_tables(prof)
    if args.prefill:
        with torch.inference_mode():
            profile_prefill(engine, args.prefill)


def profile_prefill(engine: Engine, n: int) -> None:
    """One forward of an n-token prompt (engine.step admits and prefills it; n <= the engine's n_batch)."""
    prompts = [torch.randint(1000, 30000, (n,)).tolist() for _ in range(3)]
    times = []
    for seq in list(engine._running):
        engine._finish(seq, "length")  # the decode profile's request
    for i, prompt in enumerate(prompts):  # each ends after its prefill: max_tokens 1
        engine._waiting.append(Handle(engine, Request(prompt, SamplingParams(temperature=0), 1, ignore_eos=True)))
        torch.cuda.synchronize()
        if i < 2:
            t0 = time.perf_counter()
            engine.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            continue
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            engine.step()
            torch.cuda.synchronize()
    print(f"prefill of {n} tokens: {min(times) * 1e3:.1f} ms wall without profiler ({n / min(times):.0f} t/s)")
    print_tables(prof)


def print_tables(prof) -> None:
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
