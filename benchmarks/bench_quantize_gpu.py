"""`kamado quantize --device cuda` on a Llama-3-8B-shaped F16 model, next to llama-quantize's 77.8 s (16 threads, H100 machine).

    python benchmarks/bench_quantize_gpu.py [--layers 32] [--type Q4_K_M] [--runs 2] [--dir /tmp/qbench]

Makes a random F16 GGUF of the Llama 3 8B shapes on this machine (32 layers, hidden 4096, FFN 14336, vocab 128256,
8 KV heads; normal weights with std 0.02, generated on the GPU), times `kamado quantize --device cuda IN OUT TYPE`
as a whole process (interpreter start, imports, CUDA and Triton start-up included; the first run also compiles the
Triton kernels), then checks a few output tensors against the numpy quantizers byte for byte and prints a table.
The input was just written, so it is read from the page cache.
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
from kamado.gguf import GGUFReader, GGUFWriter  # noqa: E402
from kamado.gguf.constants import GGMLQuantizationType as T  # noqa: E402
from kamado.quants import dequantize, quantize  # noqa: E402

LLAMA_QUANTIZE_S = 77.8  # F16 -> Q4_K_M, Llama-3-8B shapes, 16 threads on an H100 machine (issue 5)
HIDDEN, FFN, VOCAB, HEADS, KV_HEADS = 4096, 14336, 128256, 32, 8
CHECKED = ["blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.1.ffn_down.weight", "output.weight"]


def llama_tensors(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    kv = HIDDEN // HEADS * KV_HEADS
    out = [("token_embd.weight", (VOCAB, HIDDEN))]
    for i in range(n_layers):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (HIDDEN,)), (b + "attn_q.weight", (HIDDEN, HIDDEN)), (b + "attn_k.weight", (kv, HIDDEN)),
                (b + "attn_v.weight", (kv, HIDDEN)), (b + "attn_output.weight", (HIDDEN, HIDDEN)), (b + "ffn_norm.weight", (HIDDEN,)),
                (b + "ffn_gate.weight", (FFN, HIDDEN)), (b + "ffn_up.weight", (FFN, HIDDEN)), (b + "ffn_down.weight", (HIDDEN, FFN))]
    return out + [("output_norm.weight", (HIDDEN,)), ("output.weight", (VOCAB, HIDDEN))]


def make_model(path: Path, n_layers: int, device: str = "cuda") -> None:
    w = GGUFWriter(path)
    w.add_field("general.architecture", "llama")
    w.add_field("general.name", "random Llama-3-8B shapes")
    w.add_field("general.file_type", 1)  # MOSTLY_F16
    for key, value in (("block_count", n_layers), ("context_length", 8192), ("embedding_length", HIDDEN),
                       ("feed_forward_length", FFN), ("attention.head_count", HEADS), ("attention.head_count_kv", KV_HEADS),
                       ("vocab_size", VOCAB)):
        w.add_field(f"llama.{key}", value)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, shape in llama_tensors(n_layers):
        if len(shape) == 1:
            w.add_tensor(name, T.F32, shape, np.ones(shape, np.float32))
        else:
            w.add_tensor(name, T.F16, shape,
                         lambda shape=shape: (torch.randn(shape, generator=gen, device=device) * 0.02).half().cpu().numpy())
    w.write()


def run_quantize(src: Path, out: Path, qtype: str) -> float:
    out.unlink(missing_ok=True)  # each run writes a new file, as the llama-quantize figure was taken (not timed)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kamado.cli.main", "quantize", "--device", "cuda", str(src), str(out), qtype], check=True)
    return time.perf_counter() - start


def check_sample(src: Path, out: Path) -> list[str]:
    """Byte-compare 64 rows of a few output tensors with the numpy quantizers (the reference, bit-exact with ggml)."""
    a, b = GGUFReader(src).tensors, GGUFReader(out).tensors
    lines = []
    for name in CHECKED:
        if name not in b:
            continue
        rows = np.ascontiguousarray(a[name].raw[:64])
        expected = quantize(dequantize(rows, T.F16), b[name].type)
        same = np.array_equal(np.asarray(b[name].raw[:64]), expected)
        lines.append(f"{name} ({b[name].type.name}): {'identical' if same else 'DIFFERENT'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--runs", type=int, default=2, help="timed runs (the first compiles the Triton kernels)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/kamado-qbench"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_quantize_gpu.py needs a CUDA GPU")
    args.dir.mkdir(parents=True, exist_ok=True)
    src, out = args.dir / "llama8b-f16.gguf", args.dir / f"llama8b-{args.type}.gguf"
    start = time.perf_counter()
    make_model(src, args.layers)
    print(f"made {src} ({src.stat().st_size / 2**30:.1f} GiB) in {time.perf_counter() - start:.1f} s", flush=True)
    times = [run_quantize(src, out, args.type) for _ in range(args.runs)]
    gpu = torch.cuda.get_device_name()
    sizes = f"{src.stat().st_size / 2**30:.1f} GiB -> {out.stat().st_size / 2**30:.2f} GiB"
    print(f"\nF16 -> {args.type}, {args.layers} layers, {sizes}, {gpu}")
    print("| run | kamado --device cuda (s) | llama-quantize 16 threads (s) | speed-up |\n|---|---|---|---|")
    for i, t in enumerate(times):
        label = "first (compiles Triton kernels)" if i == 0 else "again (kernels cached)"
        print(f"| {label} | {t:.1f} | {LLAMA_QUANTIZE_S if args.layers == 32 else '-'} | "
              f"{f'{LLAMA_QUANTIZE_S / t:.1f}x' if args.layers == 32 else '-'} |")
    print("\n" + "\n".join(check_sample(src, out)))


if __name__ == "__main__":
    main()
