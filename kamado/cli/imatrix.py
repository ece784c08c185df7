"""`kamado imatrix -m MODEL -f TEXT [-o imatrix.gguf] [--output-format gguf|dat] [-c N] [--chunks N]`: llama-imatrix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kamado.cli.common import CommandParser, fail


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="kamado imatrix", allow_abbrev=False,
                                description="Compute an importance matrix for quantization, like llama-imatrix.")
    p.add_argument("-m", "--model", required=True, help="GGUF model to run")
    p.add_argument("-f", "--file", required=True, help="text to run through the model (the calibration data)")
    p.add_argument("-o", "--output-file", dest="output", default="imatrix.gguf", help="output file (default imatrix.gguf)")
    p.add_argument("--output-format", choices=["gguf", "dat"], default=None,
                   help="gguf (default) or the legacy dat format (default: dat when the output name ends in .dat)")
    p.add_argument("-c", "--ctx-size", dest="ctx_size", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=-1, help="process at most this many chunks (-1: all)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from kamado.gguf import GGUFError
    from kamado.llama import Llama
    from kamado.quantize.imatrix import compute_imatrix, write_dat, write_gguf

    model, text_file = Path(args.model), Path(args.file)
    if not model.exists():
        fail(f"model file not found: {model}")
    try:
        text = text_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {text_file}: {getattr(e, 'strerror', None) or e}")
    if args.ctx_size < 16:
        fail(f"-c {args.ctx_size}: chunks need at least 16 tokens (llama-imatrix ignores smaller batches)")
    try:
        # The "ggml" kernels follow ggml-cpu's float order (kamado/kernels/ggml_order.py, models/ggml_ops.py): with
        # llama-imatrix's batching (compute_imatrix) the sums come out bit for bit, ~10x slower than the fast kernels
        # would run the chunks (docs/NUMERICS.md, session 4, continued).
        llm = Llama(str(model), n_ctx=args.ctx_size, n_threads=args.threads, kernels="ggml", verbose=False)
        tok = llm.tokenizer_
        tokens = tok.encode(text, add_special=True, parse_special=False)
        n_chunks = len(tokens) // args.ctx_size
        print(f"tokenized the input: {len(tokens)} tokens, {n_chunks} chunks of {args.ctx_size}", file=sys.stderr)

        def report(i: int, ppl: float) -> None:
            print(f"[{i}]{ppl:.4f},", end="", flush=True)

        result = compute_imatrix(llm.model, tokens, args.ctx_size, tok.bos_id if tok.add_bos else None, args.chunks, report)
    except (GGUFError, ValueError) as e:
        fail(str(e))
    print(f"\nFinal estimate: PPL = {result.ppl:.4f} +/- {result.ppl_error:.5f}")
    fmt = args.output_format or ("dat" if args.output.endswith(".dat") else "gguf")
    try:
        if fmt == "dat":
            write_dat(result, args.output, args.file)
        else:
            write_gguf(result, args.output, [args.file])
    except (GGUFError, OSError) as e:
        fail(f"cannot write {args.output}: {getattr(e, 'strerror', None) or e}")
    print(f"stored {len(result.collector.entries)} entries computed on {result.chunk_count} chunks in {args.output}")
    return 0
