"""`kamado quantize [flags] IN.gguf [OUT.gguf] TYPE [NTHREADS]`: llama-quantize's command line."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from kamado.cli.common import fail
from kamado.gguf import GGML_BLOCK_SIZES, GGUFError
from kamado.quantize.ftypes import FILE_TYPES, parse_file_type, parse_tensor_type
from kamado.quantize.model import DEVICES, Imatrix, QuantizeError, parse_override, quantize_model
from kamado.quantize.rules import Options
from kamado.quants import ImatrixError, QuantError, load_imatrix


def type_list() -> str:
    lines = ["allowed quantization types:"]
    for ft in FILE_TYPES:
        block, size = GGML_BLOCK_SIZES[ft.default]
        number = f"{int(ft.ftype):2d}  or  " if ft.name != "COPY" else " " * 8
        bpw = f"{size * 8 / block:5.2f} bpw" if ft.name != "COPY" else "         "
        lines.append(f"  {number}{ft.name:<7} : {bpw}  {ft.desc.strip()}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kamado quantize",
        usage="kamado quantize [flags] model-f32.gguf [model-quant.gguf] type [nthreads]",
        description="Quantize a GGUF model like llama-quantize (same flags, same per-tensor types, same bytes).",
        epilog=type_list() + "\n\nbpw: bits per weight of the base type; _S/_M/_L mixtures give some tensors more bits.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("args", nargs="+", metavar="IN [OUT] TYPE [NTHREADS]", help="input file, output file, type, threads")
    p.add_argument("--allow-requantize", action="store_true", help="allow requantizing tensors that are already quantized "
                   "(quality suffers compared to quantizing from 16 or 32 bit)")
    p.add_argument("--leave-output-tensor", action="store_true", help="leave output.weight un(re)quantized")
    p.add_argument("--pure", action="store_true", help="no k-quant mixtures: every tensor gets the same type")
    p.add_argument("--imatrix", metavar="FILE", help="importance matrix (GGUF or legacy .dat) for quantization")
    p.add_argument("--include-weights", action="append", default=[], metavar="NAME", help="use the imatrix only for these tensors")
    p.add_argument("--exclude-weights", action="append", default=[], metavar="NAME", help="do not use the imatrix for these tensors")
    p.add_argument("--output-tensor-type", metavar="TYPE", help="ggml type for output.weight")
    p.add_argument("--token-embedding-type", metavar="TYPE", help="ggml type for the token embeddings")
    p.add_argument("--tensor-type", action="append", default=[], metavar="PATTERN=TYPE",
                   help="quantize tensors whose name matches PATTERN (regex) to TYPE; repeatable")
    p.add_argument("--keep-split", action="store_true", help="write the output in the same shards as the input")
    p.add_argument("--override-kv", action="append", default=[], metavar="KEY=TYPE:VALUE",
                   help="override a metadata value (TYPE: int, float, bool, str); repeatable")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to quantize: cuda (the GPU), cpu, or auto (the GPU when CUDA is available; default)")
    p.add_argument("--dry-run", action="store_true", help="show the type and size of every tensor without writing anything")
    return p


def _tensor_type(flag: str, text: str):
    qtype = parse_tensor_type(text)
    if qtype is None:
        fail(f"{flag}: unknown ggml type {text!r}")
    return qtype


def imatrix_for(path: str, include: list[str], exclude: list[str]) -> Imatrix:
    """The imatrix file, keeping only the tensors --include-weights / --exclude-weights select (substring match)."""
    if not Path(path).exists():
        fail(f"imatrix file not found: {path}")
    data = load_imatrix(path)
    if exclude:
        data.weights = {k: v for k, v in data.weights.items() if not any(x in k for x in exclude)}
    if include:
        data.weights = {k: v for k, v in data.weights.items() if any(x in k for x in include)}
    return Imatrix(data, path)


def parse_positionals(args: list[str]):
    """IN [OUT] TYPE [NTHREADS], where OUT may be left out (then it is ggml-model-TYPE.gguf beside IN)."""
    if len(args) < 2:
        fail("give at least an input file and a type (kamado quantize --help lists the types)")
    inp = Path(args[0])
    ft = parse_file_type(args[1])
    if ft is not None:
        out, rest = inp.parent / f"ggml-model-{ft.name}.gguf", args[2:]
    else:
        if len(args) < 3:
            fail(f"unknown quantization type {args[1]!r} (kamado quantize --help lists them)")
        out = Path(args[1])
        ft = parse_file_type(args[2])
        if ft is None:
            fail(f"unknown quantization type {args[2]!r} (kamado quantize --help lists them)")
        rest = args[3:]
    if len(rest) > 1 or (rest and not rest[0].isdigit()):
        fail(f"unexpected arguments {' '.join(rest)!r}: after the type only a thread count may follow")
    return inp, out, ft, int(rest[0]) if rest else 0


def main(argv: list[str]) -> int:
    a = build_parser().parse_args(argv)
    inp, out, ft, nthreads = parse_positionals(a.args)
    if a.include_weights and a.exclude_weights:
        fail("--include-weights and --exclude-weights cannot be used together")
    if not inp.exists():
        fail(f"input file not found: {inp}")
    opts = Options(ft, pure=a.pure, quantize_output=not a.leave_output_tensor)
    if a.output_tensor_type:
        opts.output_tensor_type = _tensor_type("--output-tensor-type", a.output_tensor_type)
    if a.token_embedding_type:
        opts.token_embedding_type = _tensor_type("--token-embedding-type", a.token_embedding_type)
    for spec in a.tensor_type:
        pattern, sep, tname = spec.partition("=")
        if not sep or not pattern:
            fail(f"--tensor-type {spec!r}: expected PATTERN=TYPE")
        try:
            opts.tensor_types.append((re.compile(pattern.lower()), _tensor_type("--tensor-type", tname)))
        except re.error as e:
            fail(f"--tensor-type {spec!r}: bad pattern: {e}")
    try:
        overrides = [parse_override(o) for o in a.override_kv]
        imatrix = imatrix_for(a.imatrix, a.include_weights, a.exclude_weights) if a.imatrix else None
        bar = _progress_bar()
        summary = quantize_model(inp, out, opts, allow_requantize=a.allow_requantize, imatrix=imatrix, overrides=overrides,
                                 nthreads=nthreads, keep_split=a.keep_split, dry_run=a.dry_run, progress=bar.update if bar else None,
                                 device=a.device)
        if bar:
            bar.close()
    except (GGUFError, QuantizeError, QuantError, ImatrixError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}")
    mib = 1024 * 1024
    if a.dry_run:
        for name, old, new in summary.plan:
            print(f"{name:<40} {old.name:>7} -> {new.name:<7}")
    print(f"model size  = {summary.original_bytes / mib:8.2f} MiB ({summary.original_bytes * 8 / summary.n_elements:.2f} BPW)")
    print(f"quant size  = {summary.new_bytes / mib:8.2f} MiB ({summary.new_bytes * 8 / summary.n_elements:.2f} BPW)")
    if summary.n_fallback:
        print(f"{summary.n_fallback} of {len(summary.plan)} tensor(s) needed a fallback type (row length not a multiple of the block)")
    if not a.dry_run:
        print(f"wrote {', '.join(map(str, summary.outputs))} in {summary.seconds:.2f} s")
    return 0


class _Bar:
    def __init__(self):
        from tqdm import tqdm

        self.tqdm = tqdm(unit="tensor", file=sys.stderr, dynamic_ncols=True)

    def update(self, i: int, n: int, name: str) -> None:
        self.tqdm.total = n
        self.tqdm.set_description(name[:32])
        self.tqdm.update(i + 1 - self.tqdm.n)

    def close(self) -> None:
        self.tqdm.close()


def _progress_bar() -> _Bar | None:
    """A progress bar over tensors, on a terminal only (logs and pipes stay clean)."""
    return _Bar() if sys.stderr.isatty() else None
