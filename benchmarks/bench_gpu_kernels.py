"""GPU dequantize-matmul kernels on Llama-3-8B-shaped weights: decode GB/s against the copy roofline, prefill TFLOP/s.

Run on a CUDA machine:  python3 benchmarks/bench_gpu_kernels.py [--types Q4_K,Q8_0] [--sweep] [--out results.md]
Weights are random bytes made valid for each type (kamado.kernels.triton.layout.random_blocks), built on the GPU.
Decode timings replay a CUDA graph over enough weight copies (>= 256 MiB) that L2 (50 MB on an H100) cannot
hold them, and report the median per matmul; bytes counted are the weight bytes (activations are negligible).
"""

from __future__ import annotations

import argparse
import datetime
import math

import torch
import triton
import triton.testing

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.kernels.linear import QuantTensor
from kamado.kernels.triton import linear as tl_linear
from kamado.kernels.triton.layout import random_blocks
from kamado.kernels.triton.linear import TritonLinear

SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (128256, 4096)]  # (out, in) as in Llama-3-8B
DEFAULT_TYPES = ["Q4_K", "Q6_K", "Q8_0", "Q4_0", "Q5_0", "F16", "BF16"]
ROTATE_BYTES = 256 << 20
# GEMV configs: (BLOCK_N, BLOCK_K, num_warps) with linear.GEMV_MIN_PROGRAMS (K is split until that many programs), for
# kernels.gemv_kernel: every type but Q4_K, whose own kernel is swept by benchmarks/gemv_variants.py.
SWEEP_GEMV = [((8, 512, 4), 0), ((8, 512, 4), 2048), ((16, 256, 4), 2048), ((4, 512, 2), 4096)]
# Fused GEMM at decode batch sizes: linear.GEMM_MIN_PROGRAMS values and GEMM_CONFIG_SMALL/LARGE candidates.
SWEEP_GEMM_MIN = [0, 256, 1024]
SWEEP_GEMM_BATCHES = [2, 8, 16, 32, 64]


def make_weight(qtype: Q, rows: int, cols: int, seed: int) -> TritonLinear:
    if qtype in (Q.F16, Q.BF16):
        dtype = torch.float16 if qtype == Q.F16 else torch.bfloat16
        gen = torch.Generator(device="cuda").manual_seed(seed)
        w = (torch.randn(rows, cols, device="cuda", generator=gen) * 0.02).to(dtype)
        raw = w.view(torch.uint8)
    else:
        raw = random_blocks(qtype, rows, cols, device="cuda", seed=seed)
    return TritonLinear(QuantTensor("bench", qtype, (rows, cols), raw))


def ceilings() -> tuple[float, float]:
    """Measured device-to-device copy GB/s (read + write) and bf16 matmul TFLOP/s on this card."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    t = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    copy_gbs = 2 * src.numel() / t / 1e6
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = triton.testing.do_bench(lambda: x @ y, warmup=50, rep=300, return_mode="median")
    return copy_gbs, 2 * 8192**3 / t / 1e9


def decode_ms(qtype: Q, rows: int, cols: int, batch: int, path: str = "auto") -> tuple[float, int]:
    """Median ms of one (batch x cols) @ W.T over rotating weight copies, launched from a CUDA graph.
    path: "auto" (TritonLinear's choice by batch), "fused" (fused GEMM) or "library" (dequantize + cuBLAS)."""
    first = make_weight(qtype, rows, cols, seed=0)
    copies = [first] + [make_weight(qtype, rows, cols, seed=i) for i in range(1, math.ceil(ROTATE_BYTES / first.nbytes))]
    x = torch.randn(batch, cols, device="cuda")
    run = {"auto": TritonLinear.__call__, "fused": TritonLinear.fused_gemm,
           "library": lambda lin, x: (x.half() @ lin.dequantize().T).float()}[path]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for lin in copies:  # compile and warm up outside the capture
            run(lin, x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for lin in copies:
            run(lin, x)
    t = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")
    return t / len(copies), first.nbytes


def prefill_ms(lin: TritonLinear, batch: int, path: str) -> float:
    x = torch.randn(batch, lin.in_features, device="cuda")
    if path == "fused":
        run = lambda: lin.fused_gemm(x)  # noqa: E731
    else:
        run = lambda: lin(x)  # noqa: E731
    return triton.testing.do_bench(run, warmup=25, rep=200, return_mode="median")


SWEEP_SHAPES = ((14336, 4096), (4096, 14336), (4096, 4096), (1024, 4096), (128256, 4096))


def sweep_batch1(emit, title: str, configs: list, apply, default, types: list[Q], shapes, copy_gbs: float) -> None:
    """µs (% of the copy roofline) of a batch-1 product under each config, set by apply(config); apply(default) at the end."""
    emit(f"{title} sweep (batch 1), µs and % of copy roofline")
    emit("| type | shape | " + " | ".join(str(c) for c in configs) + " |")
    emit("|---|---|" + "---|" * len(configs))
    for qtype in types:
        for rows, cols in shapes:
            cells = []
            for config in configs:
                apply(config)
                ms, nbytes = decode_ms(qtype, rows, cols, 1)
                cells.append(f"{ms * 1e3:.1f} ({nbytes / ms / 1e6 / copy_gbs:.0%})")
            emit(f"| {qtype.name} | {rows}x{cols} | " + " | ".join(cells) + " |")
    apply(default)
    emit()


def set_gemv(config) -> None:
    tl_linear.GEMV_CONFIG, tl_linear.GEMV_MIN_PROGRAMS = config


def sweep_gemm(emit, types: list[Q]) -> None:
    emit("fused GEMM at decode batches, µs: GEMM_MIN_PROGRAMS values, then dequantize + cuBLAS")
    emit("| type | shape | batch | " + " | ".join(f"min {v}" for v in SWEEP_GEMM_MIN) + " | deq+cuBLAS |")
    emit("|---|---|---|" + "---|" * (len(SWEEP_GEMM_MIN) + 1))
    default = tl_linear.GEMM_MIN_PROGRAMS
    for qtype in types:
        for rows, cols in SWEEP_SHAPES[:3]:
            for batch in SWEEP_GEMM_BATCHES:
                cells = []
                for tl_linear.GEMM_MIN_PROGRAMS in SWEEP_GEMM_MIN:
                    cells.append(f"{decode_ms(qtype, rows, cols, batch, 'fused')[0] * 1e3:.1f}")
                cells.append(f"{decode_ms(qtype, rows, cols, batch, 'library')[0] * 1e3:.1f}")
                emit(f"| {qtype.name} | {rows}x{cols} | {batch} | " + " | ".join(cells) + " |")
    tl_linear.GEMM_MIN_PROGRAMS = default
    emit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(DEFAULT_TYPES))
    ap.add_argument("--shapes", default="all", help="'all' or indices into SHAPES, e.g. 0,3")
    ap.add_argument("--sweep", default="", help="comma-separated: gemv (SWEEP_GEMV configs), gemm (the fused GEMM's split at "
                    "decode batches)")
    ap.add_argument("--prefill-batch", type=int, default=512)
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    types = [Q[t] for t in args.types.split(",")]
    shapes = SHAPES if args.shapes == "all" else [SHAPES[int(i)] for i in args.shapes.split(",")]
    lines = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    props = torch.cuda.get_device_properties(0)
    copy_gbs, bf16_tflops = ceilings()
    emit(f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, triton {triton.__version__}; "
         f"{datetime.date.today()}")  # fmt: skip
    emit(f"measured ceilings: copy {copy_gbs:.0f} GB/s (read+write), bf16 matmul {bf16_tflops:.0f} TFLOP/s")
    emit()
    sweeps = set(args.sweep.split(",")) - {""}
    quantized = [q for q in types if q not in (Q.F16, Q.BF16)]
    if "gemv" in sweeps:
        sweep_batch1(emit, "GEMV ((BLOCK_N, BLOCK_K, num_warps), GEMV_MIN_PROGRAMS)", SWEEP_GEMV, set_gemv,
                     (tl_linear.GEMV_CONFIG, tl_linear.GEMV_MIN_PROGRAMS), [q for q in quantized if q not in (Q.Q4_K, Q.Q6_K)],
                     SWEEP_SHAPES, copy_gbs)
    if "gemm" in sweeps:
        sweep_gemm(emit, quantized)
    emit(f"decode: µs per matmul, GB/s of weight read, % of the {copy_gbs:.0f} GB/s roofline; "
         f"prefill at batch {args.prefill_batch}: TFLOP/s (fused Triton GEMM / dequantize + cuBLAS)")  # fmt: skip
    emit("| type | out x in | MB | b=1 µs | b=1 GB/s | b=1 roof | b=4 µs | b=16 µs | b=16 GB/s | b=64 fused µs | b=64 deq+cuBLAS µs "
         "| pp fused TFLOP/s | pp deq+cuBLAS |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for qtype in types:
        for rows, cols in shapes:
            t1, nbytes = decode_ms(qtype, rows, cols, 1)
            t4, _ = decode_ms(qtype, rows, cols, 4)
            t16, _ = decode_ms(qtype, rows, cols, 16)
            quantized = qtype not in (Q.F16, Q.BF16)
            t64 = [decode_ms(qtype, rows, cols, 64, path)[0] * 1e3 if quantized else math.nan for path in ("fused", "library")]
            lin = make_weight(qtype, rows, cols, seed=99)
            flops = 2 * args.prefill_batch * rows * cols
            library = flops / prefill_ms(lin, args.prefill_batch, "library") / 1e9
            fused = "-" if lin.float_weight is not None else f"{flops / prefill_ms(lin, args.prefill_batch, 'fused') / 1e9:.0f}"
            gbs = nbytes / t1 / 1e6
            emit(f"| {qtype.name} | {rows}x{cols} | {nbytes / 1e6:.1f} | {t1 * 1e3:.1f} | {gbs:.0f} | {gbs / copy_gbs:.0%} | "
                 f"{t4 * 1e3:.1f} | {t16 * 1e3:.1f} | {nbytes / t16 / 1e6:.0f} | {t64[0]:.1f} | {t64[1]:.1f} | "
                 f"{fused} | {library:.0f} |")  # fmt: skip
            del lin
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
