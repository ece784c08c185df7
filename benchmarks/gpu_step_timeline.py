"""Where the wall time of a graphed GPU decode step goes: host parts against the GPU's own time.

    python benchmarks/gpu_step_timeline.py -m SYNTH.gguf [--steps 64] [--rows 1]

Drives Engine.step() on the main thread (as profile_gpu_decode.py) for `rows` sequences decoding together and reports,
per step: the wall time; the GPU time of the graph replay alone (CUDA events around replays of the same graph, measured
separately); and the host time of each part of the step (timers around the engine's functions; a part that waits for the
GPU, such as the copy of the picked tokens, includes that wait). wall - GPU is the time the GPU idles per step.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kamado.engine.cuda_graph as cuda_graph  # noqa: E402
import kamado.engine.engine as engine_module  # noqa: E402
from kamado.engine import Engine, Request, SamplingParams  # noqa: E402
from kamado.engine.engine import Handle  # noqa: E402
from kamado.gguf.reader import GGUFReader  # noqa: E402
from kamado.models import load_model  # noqa: E402

spent: collections.Counter = collections.Counter()


def timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t0

    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rows", type=int, default=1)
    args = ap.parse_args()
    model = load_model(GGUFReader(args.model), n_gpu_layers=-1)
    engine = Engine(model, None, n_ctx=512, n_seq_max=max(1, args.rows))
    # compiles the kernels and captures the graphs of every key bucket the measured steps reach (a capture takes ~0.1 s)
    warm = [engine.submit(Request([1, 500 + i, 600, 700], SamplingParams(temperature=0), args.steps + 16, ignore_eos=True))
            for i in range(args.rows)]
    for handle in warm:
        list(handle)
    engine.close()
    graphs = cuda_graph.DecodeGraphs
    for name in ("_fill", "logits", "next_logits", "_embed"):
        setattr(graphs, name, timed(f"graphs.{name}", getattr(graphs, name)))
    for name in ("_forward_rows", "_continue_in_flight", "_accept_in_flight", "_accept", "_computed", "_admit", "_reap_cancelled", "step"):
        setattr(Engine, name, timed(f"engine.{name}", getattr(Engine, name)))
    engine_module.pick_rows = timed("pick_rows (waits for the GPU)", engine_module.pick_rows)
    for i in range(args.rows):
        engine._waiting.append(Handle(engine, Request([1, 500 + i, 600, 700], SamplingParams(temperature=0), args.steps + 16,
                                                      ignore_eos=True)))
    with torch.inference_mode():
        for _ in range(4):  # admit, prefill, first decode steps
            engine.step()
        torch.cuda.synchronize()
        spent.clear()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / args.steps
        n_rows = cuda_graph._bucket(args.rows)
        shape = max((s for s in engine._graphs.shapes.values() if s.graph is not None and s.x.shape[0] == n_rows),
                    key=lambda s: s.slot_table.shape[1])  # the graph of the last steps: the longest key bucket
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        shape.graph.replay()
        start.record()
        launch = 0.0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            shape.graph.replay()
            launch += time.perf_counter() - t0
        stop.record()
        torch.cuda.synchronize()
        gpu = start.elapsed_time(stop) / 1e3 / args.steps
    print(f"{args.rows} row(s): wall {wall * 1e3:.3f} ms/step ({args.rows / wall:.1f} t/s), graph replay on the GPU {gpu * 1e3:.3f} ms, "
          f"GPU idle {(wall - gpu) * 1e3:.3f} ms/step; the replay call itself takes {launch / args.steps * 1e3:.3f} ms of host time")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:40s} {seconds / args.steps * 1e3:8.3f} ms/step")


if __name__ == "__main__":
    main()
