"""`kamado convert MODEL_DIR`: a Hugging Face checkpoint to GGUF, with convert_hf_to_gguf.py's flags and defaults."""

from __future__ import annotations

import argparse
import sys

from kamado.cli.common import CommandParser
from kamado.convert import ConvertError
from kamado.convert.converter import DEFAULT_OUTTYPE, OUTTYPES, plan, supported_architectures, write
from kamado.gguf.constants import GGML_BLOCK_SIZES
from kamado.gguf.reader import GGUFError


def parse_size(text: str) -> int:
    """llama.cpp's split size: a byte count with an optional K/M/G/T suffix (powers of 1000)."""
    multipliers = {"K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}
    number, unit = (text[:-1], multipliers[text[-1].upper()]) if text and text[-1].upper() in multipliers else (text, 1)
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (expected e.g. 500M or 2G)")
    return int(number) * unit


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="kamado convert", description="Convert a Hugging Face checkpoint folder to GGUF "
                                f"(supported: {', '.join(supported_architectures())}).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder with config.json, weights and tokenizer files")
    p.add_argument("--outfile", help="output file or folder; may contain {ftype} (default: NAME-SIZE-TYPE.gguf in MODEL_DIR)")
    p.add_argument("--outtype", choices=[*OUTTYPES, "auto"], default=DEFAULT_OUTTYPE,
                   help=f"tensor type for weight matrices (default {DEFAULT_OUTTYPE}; auto follows the checkpoint's dtype)")
    p.add_argument("--vocab-only", action="store_true", help="write only the tokenizer and metadata")
    p.add_argument("--split-max-size", type=parse_size, help="largest shard, e.g. 2G (splits into NAME-0000i-of-0000N.gguf)")
    p.add_argument("--split-max-tensors", type=positive_int, help="most tensors per shard")
    p.add_argument("--dry-run", action="store_true", help="print what would be written and exit without writing")
    return p


def print_plan(conversion) -> None:
    total = 0
    for t in conversion.tensors:
        block, type_size = GGML_BLOCK_SIZES[t.qtype]
        rows = 1
        for n in t.shape[:-1]:
            rows *= n
        total += rows * (t.shape[-1] // block) * type_size
        print(f"{t.name:<40} {t.qtype.name:<5} {'x'.join(str(n) for n in reversed(t.shape))}")
    print(f"{conversion.outfile}: {conversion.architecture}, {len(conversion.metadata.fields)} metadata keys, "
          f"{len(conversion.tensors)} tensors, {total / 1e6:.1f} MB of tensor data")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.split_max_size and args.split_max_tensors:
        print("kamado convert: give --split-max-size or --split-max-tensors, not both", file=sys.stderr)
        return 2
    try:
        conversion = plan(args.model_dir, args.outfile, args.outtype, args.vocab_only)
        if args.dry_run:
            print_plan(conversion)
            return 0
        paths = write(conversion, args.split_max_size, args.split_max_tensors, progress=True)
    except (ConvertError, GGUFError) as e:
        print(f"kamado convert: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"kamado convert: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("kamado convert: interrupted; nothing was written", file=sys.stderr)
        return 130
    for path in paths:
        print(f"wrote {path}")
    return 0
