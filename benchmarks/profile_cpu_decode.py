"""Where a CPU decode step's time goes: wall time per step, then torch.profiler's ops by time (with shapes).

    python benchmarks/profile_cpu_decode.py -m MODEL.gguf [--threads 2] [--steps 32] [--rows 30]

The engine's step() is driven on the main thread after a 16-token prompt, so the profiler sees one decode
row per step, as `kamado bench`'s tg test does.
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rows", type=int, default=30, help="rows of the op table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(GGUFReader(args.model))
    engine = Engine(model, None, n_ctx=512, n_seq_max=1)
    engine.close()  # no worker thread: step() is driven here
    engine._waiting.append(Handle(engine, Request(list(range(100, 116)), SamplingParams(temperature=0), 3 * args.steps + 8,
                                                  ignore_eos=True)))
    with torch.inference_mode():
        for _ in range(5):  # admit + prefill, then warm decode steps
            engine.step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        plain = (time.perf_counter() - t0) / args.steps
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.steps):
                engine.step()
    print(f"decode step: {plain * 1e3:.2f} ms wall without profiler ({1 / plain:.1f} t/s), {args.threads} threads")
    events = prof.key_averages(group_by_input_shape=True)
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40, max_shapes_column_width=60))
    total = sum(e.self_cpu_time_total for e in prof.key_averages()) / args.steps / 1e3
    print(f"profiled ops: {total:.2f} ms self time per step")


if __name__ == "__main__":
    main()
