"""Where `kamado quantize --device cuda` spends its time: start-up, reading the source, copies, kernels, writing.

    python benchmarks/profile_quantize_gpu.py [--type Q4_K_M] [--dir /tmp/kamado-qbench]

Uses (or makes) bench_quantize_gpu.py's random Llama-3-8B-shaped F16 model. Prints: process start-up (interpreter,
imports, CUDA context); raw rates of the steps the pipeline is made of (reading the mmap'd source from the page
cache, host-to-device copies from pageable and pinned memory, kamado's DeviceCopies); quantize_model's wall time
in-process, twice (the first may compile the Triton kernels).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quantize_gpu import make_model  # noqa: E402

from kamado.gguf import GGUFReader  # noqa: E402
from kamado.quantize import model as qmodel  # noqa: E402
from kamado.quantize.device import DeviceCopies  # noqa: E402
from kamado.quantize.ftypes import parse_file_type  # noqa: E402
from kamado.quantize.rules import Options  # noqa: E402

GIB = 2**30


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def startup() -> None:
    for label, code in (("python -c pass", "pass"), ("import torch, kamado.cli.main; CUDA context",
                                                       "import torch, kamado.cli.main; torch.zeros(1, device='cuda')")):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"| start-up: {label} | {time.perf_counter() - start:.2f} s |")


def raw_rates(src: Path) -> None:
    reader = GGUFReader(src)
    tensors = [t for t in reader.tensors.values() if t.raw.ndim == 2][:40]
    total = sum(t.nbytes for t in tensors)
    _, s = timed(lambda: [np.array(t.raw) for t in tensors])
    print(f"| read mmap -> numpy copy ({total / GIB:.2f} GiB) | {total / s / GIB:.1f} GiB/s |")
    _, s = timed(lambda: [torch.from_numpy(np.asarray(t.raw)).to("cuda") for t in tensors])
    print(f"| mmap -> cuda, pageable .to() | {total / s / GIB:.1f} GiB/s |")
    biggest = max(t.nbytes for t in tensors)
    pinned = torch.empty(biggest, dtype=torch.uint8, pin_memory=True)

    def via_pinned():
        for t in tensors:
            view = pinned[: t.nbytes]
            view.numpy()[:] = np.asarray(t.raw).reshape(-1)
            view.to("cuda", non_blocking=True)
            torch.cuda.current_stream().synchronize()

    _, s = timed(via_pinned)
    print(f"| mmap -> pinned -> cuda, one thread, no overlap | {total / s / GIB:.1f} GiB/s |")
    dev = torch.empty(biggest, dtype=torch.uint8, device="cuda")
    _, s = timed(lambda: [dev.to("cpu") for _ in range(8)])
    print(f"| cuda -> pageable host | {8 * biggest / s / GIB:.1f} GiB/s |")
    copies = DeviceCopies("cuda")
    _, s = timed(lambda: [copies.upload(np.asarray(t.raw)) for t in tensors])
    print(f"| DeviceCopies.upload (parallel reads, pinned chunks, copy stream) | {total / s / GIB:.1f} GiB/s |")
    _, s = timed(lambda: [sum(len(piece) for piece in copies.download(dev)) for _ in range(8)])
    print(f"| DeviceCopies.download | {8 * biggest / s / GIB:.1f} GiB/s |")
    copies.close()


def in_process(src: Path, out: Path, qtype: str, runs: int = 2) -> None:
    for i in range(runs):
        start = time.perf_counter()
        qmodel.quantize_model(src, out, Options(parse_file_type(qtype)), device="cuda")
        label = "first, compiles the Triton kernels unless cached" if i == 0 else "again"
        print(f"| quantize_model in-process ({label}) | {time.perf_counter() - start:.2f} s |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kamado-qbench"))
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    src, out = args.dir / "llama8b-f16.gguf", args.dir / f"llama8b-{args.type}.gguf"
    if not src.exists():
        make_model(src, 32)
    print(f"{torch.cuda.get_device_name()}, source {src.stat().st_size / GIB:.1f} GiB\n\n| step | figure |\n|---|---|")
    startup()
    raw_rates(src)
    in_process(src, out, args.type)


if __name__ == "__main__":
    main()
