"""Research: the Q4_K and Q6_K batch-1 GEMVs (kernels.q4k_gemv_kernel, q6k_gemv_kernel) under block configs, against
the generic gemv_kernel.

Session 5 (docs/GPU.md) compared new Q4_K GEMV designs with the generic kernels.gemv_kernel on the H200: `rowtile`
(int32 words in the file layout, x in nibble order, scales as words), `lanes` (one row per lane, broadcast x) and
`kmajor` (lanes over a K-major copy of the planes), each with an exact or a "mantissa" nibble decode and float32 or
fp16 x. rowtile with the mantissa decode won and became kernels.q4k_gemv_kernel; the same design over Q6_K's planes
(Q4_K_M's ffn_down, attn_v and output) became kernels.q6k_gemv_kernel (linear.WORD_GEMV_CONFIGS picks their configs by
output rows); the other designs, no faster than gemv_kernel, were dropped (their code: git show d5fb641).
This script keeps the measurement: per type and shape, the production choice, gemv_kernel (the types' path before),
the word kernel under each config of CONFIGS / Q6K_CONFIGS, and the x reordering alone (linear.nibble_order, included
in every word-kernel time).

  python3 benchmarks/gemv_variants.py [--quick]     GPU: correctness against float64, then the timing table
  TRITON_INTERPRET=1 PYTHONPATH=/tmp/tritonlib:$PWD python3 benchmarks/gemv_variants.py --check
                                                    CPU: correctness only, small shapes (Triton's interpreter)
  PYTHONPATH=/tmp/tritonlib:$PWD python3 benchmarks/gemv_variants.py --compile
                                                    CPU, no GPU needed: compile every config for sm_90 and print
                                                    registers, spills, shared memory and layout conversions
Timings: medians of CUDA-graph replays over weight copies totalling >= 256 MiB (as bench_gpu_kernels.py);
% is of 4250 GB/s, bytes = weight bytes + x (float32). Error: max |y - ref| / max |ref| against the float64
product of the dequantized weight.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.gguf.constants import GGML_BLOCK_SIZES  # noqa: E402
from kamado.gguf.constants import GGMLQuantizationType as Q  # noqa: E402
from kamado.kernels.activations import round_q8_k  # noqa: E402
from kamado.kernels.linear import QuantTensor  # noqa: E402
from kamado.kernels.triton import kernels, linear, q8k_gemv  # noqa: E402
from kamado.kernels.triton.layout import random_blocks  # noqa: E402
from kamado.quants import dequantize_torch  # noqa: E402

ROOF_GBS = 4250.0  # H200 copy roofline used in docs/GPU.md session 4
ROTATE_BYTES = 256 << 20
SHAPES = [(14336, 4096), (4096, 14336), (4096, 4096), (1024, 4096), (128256, 4096)]
QUICK_SHAPES = [(14336, 4096), (4096, 14336), (4096, 4096), (128256, 4096)]
CHECK_SHAPES = [(40, 1024), (72, 512)]
# q4k_gemv_kernel configs: (BLOCK_N, BLOCK_K, num_warps, min programs for split-K). BLOCK_N = 16 * the warps Triton puts
# on rows, or fewer rows (2 rows on 2 warps: the warps share the K step); more rows would be repeated in each thread,
# and each repeat loads x again; (64, 512, 4) converts its scale tiles through shared memory in the loop (--compile).
CONFIGS = [(2, 2048, 2, 0), (16, 1024, 4, 2048), (16, 512, 4, 2048), (4, 2048, 4, 0), (2, 1024, 2, 0), (2, 2048, 2, 4096)]
QUICK_CONFIGS = CONFIGS[:2]
CHECK_CONFIGS = [(16, 512, 4, 0), (64, 256, 2, 64), (1, 1024, 1, 0), (2, 2048, 2, 4096)]
# Q6_K: (16, 1024, 4) converts tiles through shared memory in its K loop (4 KB, 168 registers: --compile), kept last
Q6K_CONFIGS = [(2, 2048, 2, 0), (16, 512, 4, 2048), (4, 1024, 2, 0), (4, 2048, 4, 0), (16, 1024, 4, 2048)]


def run_word(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return lin.gemv(x[None, :])  # the Triton word GEMV under linear.WORD_GEMV_CONFIGS (lin(x) takes the CUDA GEMV)


def run_config(lin, x: torch.Tensor, config) -> torch.Tensor:
    """The production launch under one config (set for the time of the call, so a capture records it)."""
    saved = linear.WORD_GEMV_CONFIGS[lin.qtype]
    linear.WORD_GEMV_CONFIGS[lin.qtype] = ((0, config),)
    try:
        return lin.gemv(x[None, :])
    finally:
        linear.WORD_GEMV_CONFIGS[lin.qtype] = saved


def run_generic(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return lin._planes_gemv(x[None, :])  # kernels.gemv_kernel with linear.GEMV_CONFIG: the path before session 5


def run_nibble_order(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return linear.nibble_order(x)


def run_q8k(lin, x: torch.Tensor, config) -> torch.Tensor:
    """The CUDA GEMV (q8k_gemv.py) under a config, its activation rounding included; config[3] = activation rows."""
    return q8k_gemv.gemv(x.expand(config[3], -1), lin.weight.planes, lin.qtype, lin.out_features, config[:3])


def run_batch8(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return lin(x.expand(8, -1))  # the production path of 8 rows: the fused tensor-core GEMM


def run_quantize(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return q8k_gemv.quantize_q8k(x[None, :])[0]


# q8k_gemv (CUDA) configs: (ROWS a warp, U steps loaded ahead, WARPS a program, activation rows)
Q8K_CONFIGS = [(2, 4, 4, 1), (1, 4, 4, 1), (2, 2, 4, 1), (4, 2, 4, 1), (2, 4, 8, 1), (1, 8, 4, 1), (4, 4, 2, 1),
               (2, 4, 4, 8), (4, 2, 4, 8)]  # fmt: skip
QUICK_Q8K_CONFIGS = [(1, 4, 4, 1), (2, 4, 4, 2), (4, 4, 2, 2), (2, 4, 4, 4), (4, 4, 2, 4), (4, 4, 2, 8), (8, 2, 2, 8), (4, 4, 4, 8)]
# (qtype, name) -> (run(linear, x, config), configs, quick configs, check configs, the reference it is checked against:
# "float" x, x rounded to "q8k", or None)
VARIANTS = {
    (Q.Q4_K, "word GEMV (Triton)"): (run_word, [None], [None], [None], "float"),
    (Q.Q4_K, "gemv_kernel (before)"): (run_generic, [None], [None], [None], "float"),
    (Q.Q4_K, "q4k_gemv_kernel"): (run_config, CONFIGS, QUICK_CONFIGS[:1], CHECK_CONFIGS, "float"),
    (Q.Q4_K, "nibble_order alone"): (run_nibble_order, [None], [None], [], None),
    (Q.Q4_K, "q8k_gemv (CUDA)"): (run_q8k, Q8K_CONFIGS, QUICK_Q8K_CONFIGS, [], "q8k"),
    (Q.Q4_K, "quantize_q8k alone"): (run_quantize, [None], [None], [], None),
    (Q.Q4_K, "8 rows, fused GEMM (production)"): (run_batch8, [None], [None], [], None),
    (Q.Q6_K, "word GEMV (Triton)"): (run_word, [None], [None], [None], "float"),
    (Q.Q6_K, "gemv_kernel (before)"): (run_generic, [None], [None], [None], "float"),
    (Q.Q6_K, "q6k_gemv_kernel"): (run_config, Q6K_CONFIGS, Q6K_CONFIGS[:1], CHECK_CONFIGS, "float"),
    (Q.Q6_K, "q8k_gemv (CUDA)"): (run_q8k, Q8K_CONFIGS, QUICK_Q8K_CONFIGS, [], "q8k"),
    (Q.Q6_K, "8 rows, fused GEMM (production)"): (run_batch8, [None], [None], [], None),
}
TOLERANCE = 1e-4


def make_weight(qtype: Q, rows: int, cols: int, device: str, seed: int):
    raw = random_blocks(qtype, rows, cols, device=device, seed=seed)
    return linear.TritonLinear(QuantTensor("w", qtype, (rows, cols), raw), device=device), raw


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double().flatten() - ref).abs().max() / ref.abs().max()).item()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check(device: str) -> None:
    """Correctness of every variant and check config on small shapes (the interpreter on a CPU)."""
    failures = []
    for qtype in (Q.Q4_K, Q.Q6_K):
        for rows, cols in CHECK_SHAPES:
            lin, raw = make_weight(qtype, rows, cols, device, seed=rows)
            x = torch.randn(cols, device=device)
            ref = dequantize_torch(raw, qtype).double() @ x.double()
            for (vtype, name), (run, _, _, configs, _) in VARIANTS.items():
                for config in configs if vtype == qtype else []:  # (the CUDA GEMV has no check configs: it is tested)
                    err = rel_error(run(lin, x, config), ref)
                    ok = err <= TOLERANCE
                    print(f"{qtype.name} {rows}x{cols} {name} {config}: error {err:.2e} {'ok' if ok else 'FAIL'}", flush=True)
                    if not ok:
                        failures.append(f"{qtype.name} {name} {config} {rows}x{cols}")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


def run_all(run, lins: list, x: torch.Tensor, config) -> list[torch.Tensor]:
    return [run(lin, x, config) for lin in lins]


def graph_us(run, copies: int) -> float:
    """Median µs per product of `run` (`copies` products over rotating weights) replayed from a CUDA graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        run()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return triton.testing.do_bench(graph.replay, warmup=25, rep=150, return_mode="median") * 1e3 / copies


def bench(quick: bool) -> None:
    import triton.testing  # noqa: F401  (do_bench)

    shapes = QUICK_SHAPES if quick else SHAPES
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}, triton {triton.__version__}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    cells: dict[tuple[str, str], dict] = {}
    errors: dict[tuple[str, str], float] = {}
    failures = []
    start = time.time()
    for qtype, rows, cols in [(q, r, c) for q in (Q.Q4_K, Q.Q6_K) for r, c in shapes]:
        block, type_size = GGML_BLOCK_SIZES[qtype]
        n_copies = max(1, math.ceil(ROTATE_BYTES / (rows * cols // block * type_size)))
        made = [make_weight(qtype, rows, cols, "cuda", seed=i) for i in range(n_copies)]
        lins = [lin for lin, _ in made]
        x = torch.randn(cols, device="cuda")
        w = dequantize_torch(made[0][1], qtype).double()
        refs = {"float": w @ x.double(), "q8k": w @ round_q8_k(x).double()}
        del made, w
        nbytes = lins[0].nbytes + 4 * cols
        for (vtype, name), (run, configs, quick_configs, _, reference) in VARIANTS.items():
            for config in (quick_configs if quick else configs) if vtype == qtype else []:
                key = (f"{qtype.name} {name}", "" if config is None else str(config))
                log(f"[{time.time() - start:6.1f} s] {qtype.name} {rows}x{cols} {name} {config}")
                try:
                    if reference:
                        err = rel_error(run(lins[0], x, config)[:1], refs[reference])
                        errors[key] = max(errors.get(key, 0.0), err)
                        if err > TOLERANCE:
                            failures.append(f"{name} {config} {rows}x{cols}: error {err:.2e} > {TOLERANCE}")
                            cells.setdefault(key, {})[(rows, cols)] = f"WRONG {err:.1e}"
                            continue
                    us = graph_us(partial(run_all, run, lins, x, config), n_copies)
                    cells.setdefault(key, {})[(rows, cols)] = f"{us:.1f} ({nbytes / us / 1e3 / ROOF_GBS:.0%})"
                except Exception as e:  # a config that does not compile or run is reported, not fatal
                    log(f"    failed: {type(e).__name__}: {str(e)[:300]}")
                    cells.setdefault(key, {})[(rows, cols)] = f"error: {type(e).__name__}"
        lins.clear()
        torch.cuda.empty_cache()
    print(f"\nQ4_K and Q6_K batch-1 GEMV, µs (% of {ROOF_GBS:.0f} GB/s; bytes = weight + float32 x); error = max |y - ref| / "
          f"max |ref| against float64 over the shapes; production: linear.WORD_GEMV_CONFIGS = {linear.WORD_GEMV_CONFIGS}")  # fmt: skip
    print("| variant | config | " + " | ".join(f"{r}x{c}" for r, c in shapes) + " | error |")
    print("|---|---|" + "---|" * (len(shapes) + 1))
    for (name, config), row in cells.items():
        err = f"{errors[(name, config)]:.1e}" if (name, config) in errors else "-"
        print(f"| {name} | {config} | " + " | ".join(row.get(s, "-") for s in shapes) + f" | {err} |")
    log(f"done in {time.time() - start:.0f} s")
    if failures:
        sys.exit("WRONG RESULTS:\n" + "\n".join(failures))


# ------------------------------------------------------------------------------------- offline compile for sm_90
def compile_report() -> None:
    """Compile each kernel config for sm_90 without a GPU and print what decides its speed before any device time:
    registers and spills (ptxas), shared memory, and the layout conversions Triton inserted (ttg.convert_layout).
    Conversions inside the K loop are what matters: one that moves data goes through shared memory every step
    (q4k_gemv_kernel's scale tiles when more than 16 rows; the shared bytes then exceed what the final reduction
    needs, ~4 per row)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", 90, 32)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    aligned = [["tt.divisibility", 16]]
    aligned_ints = {"s0", "s1", "s2", "s_qs", "s_dm", "s_sc", "s_ql", "s_qh", "K"}

    def build(fn, signature: dict, constexprs: dict, warps: int, label: str) -> None:
        names = list(signature)
        attrs = {(names.index(a),): aligned for a, t in signature.items() if t.startswith("*") or a in aligned_ints}
        sig = {**signature, **{k: "constexpr" for k in constexprs}}
        try:
            c = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=target, options={"num_warps": warps})
        except Exception as e:
            print(f"| {label} | COMPILE ERROR: {type(e).__name__}: {' '.join(str(e).split())[-300:]} |||||", flush=True)
            return
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(c.asm["cubin"])
            f.flush()
            usage = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
        regs = re.search(r"REG:(\d+)", usage)
        local = re.search(r"LOCAL:(\d+)", usage)
        ttgir = c.asm["ttgir"]
        loop = ttgir[ttgir.find("scf.for") : ttgir.find("scf.yield")]  # the K loop comes first
        print(f"| {label} | {regs.group(1) if regs else '?'} | {local.group(1) if local else '?'} | {c.metadata.shared} | "
              f"{ttgir.count('ttg.convert_layout')} | {loop.count('ttg.convert_layout')} |", flush=True)  # fmt: skip

    common = {"y_ptr": "*fp32", "N": "i32", "K": "i32"}
    split = {"partial_ptr": "*fp32", "count_ptr": "*i32"}
    print("| kernel config | registers | local (spill) bytes | shared bytes | convert_layout | in the K loop |")
    print("|---|---|---|---|---|---|")
    block_n, block_k, warps = linear.GEMV_CONFIG
    planes = {f"p{i}": "*u8" for i in range(4)}
    planes["p1"] = "*fp16"
    gemv_sig = {"x_ptr": "*fp32", **common, **split, **planes, **{f"s{i}": "i32" for i in range(4)}, "table": "*fp32"}
    for sk in (1, 2):
        build(kernels.gemv_kernel, gemv_sig, {"QTYPE": 12, "GS": 32, "BLOCK_N": block_n, "BLOCK_K": block_k, "SPLIT_K": sk},
              warps, f"gemv_kernel Q4_K {linear.GEMV_CONFIG} SPLIT_K={sk}")  # fmt: skip
    words = {"qs": "*i32", "dm": "*i32", "sc": "*i32"}
    sig = {"xp": "*fp32", **common, **words, "s_qs": "i32", "s_dm": "i32", "s_sc": "i32", **split}
    for bn, bk, w, _ in CONFIGS:
        for sk in (1, 2):
            build(kernels.q4k_gemv_kernel, sig, {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, w,
                  f"q4k_gemv_kernel {(bn, bk, w)} SPLIT_K={sk}")  # fmt: skip
    sig = {"xp": "*fp32", **common, "ql": "*i32", "qh": "*i32", "sc": "*i32", "d_ptr": "*fp16",
           **{s: "i32" for s in ("s_ql", "s_qh", "s_sc", "s_d")}, **split}  # fmt: skip
    for bn, bk, w, _ in Q6K_CONFIGS:
        build(kernels.q6k_gemv_kernel, sig, {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 2}, w, f"q6k_gemv_kernel {(bn, bk, w)} SPLIT_K=2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer configs and shapes (~1 min)")
    mode.add_argument("--check", action="store_true", help="correctness only on small shapes (CPU interpreter or GPU)")
    mode.add_argument("--compile", action="store_true", help="compile for sm_90 offline: registers, spills, conversions")
    args = ap.parse_args()
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if args.compile:
        compile_report()
    elif args.check:
        check("cpu" if interpreted else "cuda")
    else:
        if interpreted or not torch.cuda.is_available():
            sys.exit("timing needs a CUDA device (use --check under TRITON_INTERPRET=1, or --compile)")
        bench(args.quick)


if __name__ == "__main__":
    main()
