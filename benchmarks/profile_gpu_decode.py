"""Where a GPU decode step's time goes: torch.profiler over a few engine decode steps of a synthetic model.

    python benchmarks/profile_gpu_decode.py -m SYNTH.gguf [--steps 4]

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
    args = ap.parse_args()
    model = load_model(GGUFReader(args.model), n_gpu_layers=-1)
    engine = Engine(model, None, n_ctx=256, n_seq_max=1)
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
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    print(table.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
