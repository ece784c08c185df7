"""Conversion time and peak memory of `kamado convert` on a random Llama-shaped checkpoint it creates itself.

    python benchmarks/bench_convert.py [--size-gb 1.3] [--outtypes f16,q8_0] [--keep DIR]

The checkpoint (f16 safetensors in two shards, like a Hugging Face download) is written tensor by tensor, so
making it needs little memory. Each conversion runs in a fresh process; its peak resident memory (ru_maxrss)
is compared with the largest single tensor, which is what streaming conversion should stay near.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB, HIDDEN, FFN, HEADS, KV_HEADS = 32000, 2048, 5632, 16, 4


def llama_tensors(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = [("lm_head.weight", (VOCAB, HIDDEN)), ("model.embed_tokens.weight", (VOCAB, HIDDEN)), ("model.norm.weight", (HIDDEN,))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes += [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,)),
                   (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (kv, HIDDEN)),
                   (p + "self_attn.v_proj.weight", (kv, HIDDEN)), (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "mlp.gate_proj.weight", (FFN, HIDDEN)), (p + "mlp.up_proj.weight", (FFN, HIDDEN)),
                   (p + "mlp.down_proj.weight", (HIDDEN, FFN))]
    return shapes


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator) -> None:
    """Stream a float16 safetensors file without holding more than one tensor in memory."""
    header, offset = {}, 0
    for name, shape in sorted(tensors):
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, shape in sorted(tensors):
            f.write((rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16).tobytes())


def make_checkpoint(folder: Path, size_gb: float) -> tuple[int, int]:
    per_layer = 2 * HIDDEN * HIDDEN + 2 * HIDDEN * HIDDEN // HEADS * KV_HEADS + 3 * HIDDEN * FFN
    n_layers = max(1, round((size_gb * 1e9 / 2 - 2 * VOCAB * HIDDEN) / per_layer))
    tensors = llama_tensors(n_layers)
    rng = np.random.default_rng(0)
    half = len(tensors) // 2
    shards = {"model-00001-of-00002.safetensors": tensors[:half], "model-00002-of-00002.safetensors": tensors[half:]}
    for file, part in shards.items():
        write_safetensors(folder / file, part, rng)
    index = {"metadata": {}, "weight_map": {name: file for file, part in shards.items() for name, _ in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FFN,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_hidden_layers": n_layers, "vocab_size": VOCAB,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config))
    make_tokenizer(folder)
    total = sum(int(np.prod(s)) for _, s in tensors) * 2
    largest = max(int(np.prod(s)) for _, s in tensors)
    return total, largest


def make_tokenizer(folder: Path) -> None:
    import sentencepiece as spm

    words = [f"w{i} x{i % 97} y{i % 13}" for i in range(3000)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(words), model_prefix=str(folder / "tokenizer"), vocab_size=500,
                                   model_type="bpe", byte_fallback=True, minloglevel=2)
    (folder / "tokenizer.vocab").unlink()


def run_conversion(folder: Path, outtype: str, out: Path) -> tuple[float, int]:
    code = ("import resource, sys; from kamado.cli.convert import main; rc = main(sys.argv[1:]); "
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(folder), "--outtype", outtype, "--outfile", str(out)],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"conversion failed: {done.stderr.strip()[-500:]}")
    maxrss_kb = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("MAXRSS")))
    return elapsed, maxrss_kb * 1024


def baseline_rss() -> int:
    code = "import resource, torch, numpy, kamado.convert, kamado.cli.convert; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.3, help="checkpoint size in GB (float16)")
    ap.add_argument("--outtypes", default="f16,q8_0")
    ap.add_argument("--keep", type=Path, help="make the checkpoint here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "random-llama"
        folder.mkdir(parents=True, exist_ok=True)
        total, largest_elems = make_checkpoint(folder, args.size_gb)
        base = baseline_rss()
        print(f"checkpoint: {total / 1e9:.2f} GB f16, largest tensor {largest_elems * 2 / 1e6:.0f} MB as f16 "
              f"({largest_elems * 4 / 1e6:.0f} MB as f32); interpreter + imports: {base / 1e6:.0f} MB")
        print(f"{'outtype':<8} {'seconds':>8} {'GB/s':>6} {'peak RSS MB':>12} {'above imports MB':>17} {'/ largest f32':>14}")
        for outtype in args.outtypes.split(","):
            seconds, peak = run_conversion(folder, outtype, Path(tmp) / f"out-{outtype}.gguf")
            above = peak - base
            print(f"{outtype:<8} {seconds:>8.1f} {total / 1e9 / seconds:>6.2f} {peak / 1e6:>12.0f} {above / 1e6:>17.0f} "
                  f"{above / (largest_elems * 4):>14.2f}")
            (Path(tmp) / f"out-{outtype}.gguf").unlink()


if __name__ == "__main__":
    main()
