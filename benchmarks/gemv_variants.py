"""Research: the Q4_K batch-1 GEMV (kernels.q4k_gemv_kernel) under block configs, a Q6_K twin of its design, and
the generic gemv_kernel.

Session 5 (docs/GPU.md) compared new Q4_K GEMV designs with the generic kernels.gemv_kernel on the H200: `rowtile`
(int32 words in the file layout, x in nibble order, scales as words), `lanes` (one row per lane, broadcast x) and
`kmajor` (lanes over a K-major copy of the planes), each with an exact or a "mantissa" nibble decode and float32 or
fp16 x. rowtile with the mantissa decode won and became kernels.q4k_gemv_kernel (linear.Q4K_GEMV_CONFIGS picks its
config by output rows); the other designs, no faster than gemv_kernel, were dropped (their code: git show d5fb641).
This script keeps the measurement: per shape, the production choice, gemv_kernel (Q4_K's path before), the kernel
under each config of CONFIGS, and the x reordering alone (linear.nibble_order, included in every q4k time).
Q6_K (Q4_K_M's ffn_down, attn_v and output): `q6k_gemv_kernel` below, the same design over Q6_K's planes, timed
against gemv_kernel (Q6_K's production path); not in production until it measures faster.

  python3 benchmarks/gemv_variants.py [--quick]     GPU: correctness against float64, then the timing table
  TRITON_INTERPRET=1 PYTHONPATH=/tmp/tritonlib:$PWD python3 benchmarks/gemv_variants.py --check
                                                    CPU: correctness only, small shapes (Triton's interpreter)
  PYTHONPATH=/tmp/tritonlib:$PWD python3 benchmarks/gemv_variants.py --compile
                                                    CPU, no GPU needed: compile every config for sm_90 and print
                                                    registers, spills, shared memory and layout conversions
Timings: medians of CUDA-graph replays over weight copies totalling >= 256 MiB (as bench_gpu_kernels.py);
% is of 4250 GB/s, bytes = Q4_K weight bytes + x (float32). Error: max |y - ref| / max |ref| against the float64
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
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kamado.gguf.constants import GGML_BLOCK_SIZES  # noqa: E402
from kamado.gguf.constants import GGMLQuantizationType as Q  # noqa: E402
from kamado.kernels.linear import QuantTensor  # noqa: E402
from kamado.kernels.triton import kernels, linear  # noqa: E402
from kamado.kernels.triton.kernels import _exact_float, _store_split  # noqa: E402
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


# ---------------------------------------------------------------------------------------- the Q6_K candidate
@triton.jit
def _q6_product(ql, qh, x_at, lane_rows, SHIFT: tl.constexpr, scale):
    """scale * sum((q - 32) x) for each int32 word of Q6_K's ql plane: its 4 values q have their low 4 bits at bits
    SHIFT + 8 b of ql (b = 0..3) and their high 2 bits at the same bits of qh (the qh word already shifted to this
    quarter). q + 64 as a float is (q << 17) | 0x3F800000, i.e. 1 + q / 64: sum((q - 32) x) = 64 sum((1 + q / 64) x)
    - 96 sum(x). x_at as in kernels._nibble_product."""
    x_at, _ = tl.broadcast(x_at, lane_rows)
    xsum = tl.zeros(ql.shape, dtype=tl.float32)
    dot = tl.zeros(ql.shape, dtype=tl.float32)
    for b in tl.static_range(4):
        xv = tl.load(x_at + 4 * b)
        pos = SHIFT + 8 * b  # constexpr: b is static
        if pos <= 17:
            low = ql << (17 - pos)
        else:
            low = ql >> (pos - 17)
        if pos <= 21:
            high = qh << (21 - pos)
        else:
            high = qh >> (pos - 21)
        dot += ((low & 0x1E0000) | (high & 0x600000) | 0x3F800000).to(tl.float32, bitcast=True) * xv
        xsum += xv
    return (64.0 * scale) * dot - (96.0 * scale) * xsum


@triton.jit
def q6k_gemv_kernel(
    xp, y_ptr, N, K, ql, qh, sc, d_ptr, s_ql, s_qh, s_sc, s_d, partial_ptr, count_ptr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    """q4k_gemv_kernel's design for Q6_K: ql as 32 int32 words per 256-block, qh as 16, the 16 int8 scales as 4, d fp16.
    Tile [BLOCK_N rows, NB blocks, 2 halves, 2 ql runs, 8 words]: byte l (0..31) of run p of half h holds value
    h 128 + 32 p + l in its low nibble and h 128 + 32 (p + 2) + l in its high one; byte l of the half's qh run has their
    high bits at 2 p and 2 p + 4; the scale of 16 values is int8 number 8 h + 2 quarter + l // 16."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r5 = tl.minimum(rn, N - 1).to(tl.int64)[:, None, None, None, None]  # clamped: rows past N are never stored
    NB: tl.constexpr = BLOCK_K // 256
    nb = tl.arange(0, NB)[None, :, None, None, None]
    h = tl.arange(0, 2)[None, None, :, None, None]
    p = tl.arange(0, 2)[None, None, None, :, None]
    w = tl.arange(0, 8)[None, None, None, None, :]
    byte = (2 * p + w // 4) * 8  # the scale's byte in its word: quarter p (low nibbles) or p + 2 (high), l // 16
    acc = tl.zeros([BLOCK_N, NB, 2, 2, 8], dtype=tl.float32)
    k_len = K // SPLIT_K
    for k0 in range(split * k_len, split * k_len + k_len, BLOCK_K):
        blk = k0 // 256 + nb
        low_words = tl.load(ql + r5 * s_ql + blk * 32 + h * 16 + p * 8 + w)
        qh_at, _ = tl.broadcast(qh + r5 * s_qh + blk * 16 + h * 8 + w, low_words)  # the words' layout (see x_at)
        high_words = tl.load(qh_at) >> (2 * p)
        scales = sc + r5 * s_sc + blk * 4 + h * 2
        sc_lo = _exact_float(((tl.load(scales) >> byte) & 0xFF) ^ 0x80, 128)  # int8 s: (s & 0xFF) ^ 0x80 = s + 128
        sc_hi = _exact_float(((tl.load(scales + 1) >> byte) & 0xFF) ^ 0x80, 128)
        d = tl.load(d_ptr + r5 * s_d + blk).to(tl.float32)
        x_at = xp + blk * 256 + h * 128 + p * 32 + (w // 4) * 16 + w % 4
        acc += _q6_product(low_words, high_words, x_at, r5, 0, d * sc_lo)
        acc += _q6_product(low_words, high_words, x_at + 64, r5, 4, d * sc_hi)
    out = tl.sum(tl.sum(tl.sum(tl.sum(acc, axis=4), axis=3), axis=2), axis=1)
    _store_split(y_ptr + rn, out, rn < N, partial_ptr, rn, tl.num_programs(0) * BLOCK_N, count_ptr, pid_n, split, SPLIT_K)


def run_q6k(lin, x: torch.Tensor, config) -> torch.Tensor:
    block_n, block_k, warps, min_programs = config
    n, k = lin.out_features, lin.in_features
    block_k = linear._block_k(block_k, k, 256)
    tiles = triton.cdiv(n, block_n)
    split = linear._split_k(tiles, k, block_k, block_n, min_programs)
    ql, qh, sc, d = lin.weight.planes
    ql, qh, sc = (plane.view(torch.int32) for plane in (ql, qh, sc))
    y = torch.empty(1, n, dtype=torch.float32, device=x.device)
    q6k_gemv_kernel[(tiles, split)](
        linear.nibble_order(x), y, n, k, ql, qh, sc, d, ql.stride(0), qh.stride(0), sc.stride(0), d.stride(0),
        *linear._split_workspace(x.device), BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split, num_warps=warps,
    )  # fmt: skip
    return y


def set_config(config) -> None:
    linear.Q4K_GEMV_CONFIGS = ((0, config),)


def run_production(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return lin(x[None, :])


def run_config(lin, x: torch.Tensor, config) -> torch.Tensor:
    """The production launch under one config (set_config for the time of the call, so a capture records it)."""
    saved = linear.Q4K_GEMV_CONFIGS
    set_config(config)
    try:
        return lin.gemv(x[None, :])
    finally:
        linear.Q4K_GEMV_CONFIGS = saved


def run_generic(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return lin._planes_gemv(x[None, :])  # kernels.gemv_kernel with linear.GEMV_CONFIG: Q4_K's path before session 5


def run_nibble_order(lin, x: torch.Tensor, config=None) -> torch.Tensor:
    return linear.nibble_order(x)


# (qtype, name) -> (run(linear, x, config), configs, quick configs, check configs, checked against the reference)
VARIANTS = {
    (Q.Q4_K, "production"): (run_production, [None], [None], [None], True),
    (Q.Q4_K, "gemv_kernel (before)"): (run_generic, [None], [None], [None], True),
    (Q.Q4_K, "q4k_gemv_kernel"): (run_config, CONFIGS, QUICK_CONFIGS, CHECK_CONFIGS, True),
    (Q.Q4_K, "nibble_order alone"): (run_nibble_order, [None], [None], [], False),
    (Q.Q6_K, "production (gemv_kernel)"): (run_production, [None], [None], [None], True),
    (Q.Q6_K, "q6k_gemv_kernel"): (run_q6k, Q6K_CONFIGS, Q6K_CONFIGS[:2], CHECK_CONFIGS, True),
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
                for config in configs if vtype == qtype else []:
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
        ref = dequantize_torch(made[0][1], qtype).double() @ x.double()
        del made
        nbytes = lins[0].nbytes + 4 * cols
        for (vtype, name), (run, configs, quick_configs, _, checked) in VARIANTS.items():
            for config in (quick_configs if quick else configs) if vtype == qtype else []:
                key = (f"{qtype.name} {name}", "" if config is None else str(config))
                log(f"[{time.time() - start:6.1f} s] {qtype.name} {rows}x{cols} {name} {config}")
                try:
                    if checked:
                        err = rel_error(run(lins[0], x, config), ref)
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
          f"max |ref| against float64 over the shapes; production: linear.Q4K_GEMV_CONFIGS = {linear.Q4K_GEMV_CONFIGS}")  # fmt: skip
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
        build(q6k_gemv_kernel, sig, {"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": 2}, w, f"q6k_gemv_kernel {(bn, bk, w)} SPLIT_K=2")


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
