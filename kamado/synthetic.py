"""Synthetic models: random weights in the shapes of real ones, quantized by kamado, written as a complete GGUF.

For benchmarks on machines that receive nothing but the project's files (a GPU machine takes at most 64 MiB):
the file is made where it runs. Shapes and metadata follow the real models' GGUF files; the tokenizer is a
valid SentencePiece ("llama") vocabulary of the model's size (specials, 256 byte tokens, filler pieces), so the
engine, chat-less generation and `kamado bench` work on it. Weights are N(0, 1/in) so activations stay in range.

    python -m kamado.synthetic --shape llama3-8b --type Q4_K_M -o /tmp/llama3-8b-q4_k_m.gguf [--device cuda]

Each tensor is drawn, quantized (kamado.quants.quantize_torch: byte-exact with the numpy quantizers, fast on CUDA)
and handed to the writer when it is written, so memory holds one tensor at a time.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kamado.gguf.constants import GGMLQuantizationType as T
from kamado.gguf.writer import GGUFWriter
from kamado.quantize.ftypes import parse_file_type
from kamado.quantize.rules import ModelShape, Options, TypeChooser
from kamado.quants import quantize_torch

QUANTIZATION_VERSION = 2
# Rows quantized at once: bounds the scratch memory of quantize_torch (~64 M values).
CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class Shape:
    arch: str
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    head_dim: int = 0  # 0: n_embd // n_head
    rope_base: float = 10000.0
    n_ctx: int = 4096
    eps: float = 1e-5
    tied_output: bool = False
    qkv_bias: bool = False
    extra: dict = field(default_factory=dict)  # further {arch}.* metadata

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


PRESETS = {
    "llama3-8b": Shape("llama", 4096, 32, 32, 8, 14336, 128256, rope_base=500000.0, n_ctx=8192),
    "llama2-7b": Shape("llama", 4096, 32, 32, 32, 11008, 32000),
    "qwen2.5-7b": Shape("qwen2", 3584, 28, 28, 4, 18944, 152064, rope_base=1e6, n_ctx=32768, eps=1e-6, qkv_bias=True),
    "gemma2-9b": Shape("gemma2", 3584, 42, 16, 8, 14336, 256000, head_dim=256, n_ctx=8192, eps=1e-6, tied_output=True,
                       extra={"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "attention.sliding_window": 4096}),
    # Small enough for a CPU test; every row length is a multiple of 256 so all k-quants apply.
    "tiny-llama": Shape("llama", 256, 2, 4, 2, 512, 512, n_ctx=512),
}


def tensor_shapes(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(name, numpy-order shape) of every tensor, in llama.cpp's file order."""
    q, kv, d = s.n_head * s.hd, s.n_head_kv * s.hd, s.n_embd
    out = [("token_embd.weight", (s.n_vocab, d))]
    for il in range(s.n_layer):
        p = f"blk.{il}."
        out += [(p + "attn_norm.weight", (d,)), (p + "attn_q.weight", (q, d)), (p + "attn_k.weight", (kv, d)),
                (p + "attn_v.weight", (kv, d))]
        if s.qkv_bias:
            out += [(p + "attn_q.bias", (q,)), (p + "attn_k.bias", (kv,)), (p + "attn_v.bias", (kv,))]
        out += [(p + "attn_output.weight", (d, q))]
        if s.arch == "gemma2":
            out += [(p + "post_attention_norm.weight", (d,))]
        out += [(p + "ffn_norm.weight", (d,)), (p + "ffn_gate.weight", (s.n_ff, d)), (p + "ffn_up.weight", (s.n_ff, d)),
                (p + "ffn_down.weight", (d, s.n_ff))]
        if s.arch == "gemma2":
            out += [(p + "post_ffw_norm.weight", (d,))]
    out += [("output_norm.weight", (d,))]
    if not s.tied_output:
        out += [("output.weight", (s.n_vocab, d))]
    return out


def metadata(name: str, s: Shape, file_type: int) -> dict:
    a = s.arch
    meta = {
        "general.architecture": a, "general.name": f"synthetic {name}", "general.file_type": np.uint32(file_type),
        "general.quantization_version": np.uint32(QUANTIZATION_VERSION),
        f"{a}.context_length": np.uint32(s.n_ctx), f"{a}.embedding_length": np.uint32(s.n_embd),
        f"{a}.block_count": np.uint32(s.n_layer), f"{a}.feed_forward_length": np.uint32(s.n_ff),
        f"{a}.attention.head_count": np.uint32(s.n_head), f"{a}.attention.head_count_kv": np.uint32(s.n_head_kv),
        f"{a}.attention.key_length": np.uint32(s.hd), f"{a}.attention.value_length": np.uint32(s.hd),
        f"{a}.rope.dimension_count": np.uint32(s.hd), f"{a}.rope.freq_base": np.float32(s.rope_base),
        f"{a}.attention.layer_norm_rms_epsilon": np.float32(s.eps), f"{a}.vocab_size": np.uint32(s.n_vocab),
    }
    meta |= {f"{a}.{k}": np.float32(v) if isinstance(v, float) else np.uint32(v) for k, v in s.extra.items()}
    return meta | tokenizer_metadata(s.n_vocab)


def tokenizer_metadata(n_vocab: int) -> dict:
    """A SentencePiece vocabulary of n_vocab pieces: <unk> <s> </s>, the 256 byte pieces, then filler words."""
    if n_vocab < 259 + 1:
        raise ValueError(f"a synthetic vocabulary needs at least 260 tokens, got {n_vocab}")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581w{i}" for i in range(n_vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)  # unknown, control, byte, normal (llama_token_type)
    scores = np.zeros(n_vocab, dtype=np.float32)
    scores[259:] = -np.arange(n_vocab - 259, dtype=np.float32)
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": np.array(types, dtype=np.int32), "tokenizer.ggml.bos_token_id": np.uint32(1),
            "tokenizer.ggml.eos_token_id": np.uint32(2), "tokenizer.ggml.unknown_token_id": np.uint32(0),
            "tokenizer.ggml.add_bos_token": True}


def _random_rows(shape: tuple[int, ...], start: int, stop: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
    if len(shape) == 1:  # norm weights around 1, biases around 0
        return 1.0 + 0.1 * torch.randn(shape, generator=g, device=device)
    return torch.randn((stop - start, shape[1]), generator=g, device=device) * shape[1] ** -0.5


def _tensor_bytes(shape: tuple[int, ...], qtype: T, seed: int, device: str):
    """A callable the writer runs when it writes the tensor: draws and quantizes it chunk by chunk."""

    def make() -> np.ndarray:
        if len(shape) == 1:
            return _random_rows(shape, 0, 0, seed, device).cpu().numpy().astype(np.float32)
        rows = shape[0]
        step = max(1, CHUNK_ELEMENTS // shape[1])
        parts = []
        for start in range(0, rows, step):
            x = _random_rows(shape, start, min(rows, start + step), seed, device)
            parts.append((x.half().view(torch.uint8) if qtype == T.F16 else quantize_torch(x, qtype)).cpu().numpy())
        return np.concatenate(parts).reshape(rows, -1)

    return make


def write_synthetic(path: str | Path, preset: str, file_type: str, device: str = "cpu", seed: int = 0,
                    pure: bool = False) -> list[tuple[str, T]]:
    """Write a synthetic GGUF; returns (tensor name, type) in file order. pure: every weight in the file type's
    main type (llama-quantize --pure), no _M/_S mixture."""
    if preset not in PRESETS:
        raise ValueError(f"unknown shape {preset!r}; presets: {', '.join(PRESETS)}")
    ftype = parse_file_type(file_type)
    if ftype is None:
        raise ValueError(f"unknown file type {file_type!r} (e.g. Q4_K_M, Q4_0, Q8_0, F16)")
    s = PRESETS[preset]
    names = tensor_shapes(s)
    meta = metadata(preset, s, int(ftype.ftype))
    chooser = TypeChooser(ModelShape.from_metadata(meta), [n for n, _ in names], Options(file_type=ftype, pure=pure))
    writer = GGUFWriter(path)
    for key, value in meta.items():
        writer.add_field(key, value)
    plan = []
    for i, (name, shape) in enumerate(names):
        qtype = chooser.choose(name, shape, T.F32 if len(shape) == 1 else T.F16)
        writer.add_tensor(name, qtype, shape, _tensor_bytes(shape, qtype, seed + i, device))
        plan.append((name, qtype))
    writer.write()
    return plan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kamado.synthetic", description="Write a random-weight GGUF in a real model's shape.")
    p.add_argument("--shape", required=True, choices=list(PRESETS))
    p.add_argument("--type", default="Q4_K_M", help="llama-quantize file type (Q4_K_M, Q4_0, Q8_0, F16, ...)")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where weights are drawn and quantized")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pure", action="store_true", help="every weight in the type's main type (no _S/_M mixture)")
    args = p.parse_args(argv)
    try:
        write_synthetic(args.output, args.shape, args.type, args.device, args.seed, args.pure)
    except ValueError as e:  # GGUFError, QuantError and bad arguments are ValueErrors
        print(f"kamado.synthetic: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
