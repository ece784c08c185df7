"""`kamado info MODEL.gguf`: the header, metadata table and tensor table of a GGUF file (like gguf-dump).

Shapes are printed in ggml order (ne0 = row length first), as gguf-dump and llama.cpp's logs show them.
Long arrays and strings are summarised with their length and first items. A split model is given by any
of its shards and shown as one.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from kamado.cli.common import CommandParser, fail
from kamado.gguf import GGUFError, GGUFReader, GGUFValueType

MAX_ITEMS = 6  # array elements shown before "..."
MAX_CHARS = 80  # characters of a string value shown before "..."


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="kamado info", description="Print the metadata and tensor table of a GGUF file (like gguf-dump).")
    p.add_argument("model", help="GGUF file (for a split model, any of its NAME-0000i-of-0000N.gguf shards)")
    p.add_argument("--no-tensors", action="store_true", help="print the header and metadata only")
    return p


def _short_string(s: str) -> str:
    shown = repr(s[:MAX_CHARS])
    return shown if len(s) <= MAX_CHARS else f"{shown}... ({len(s)} chars)"


def _format_value(value, vtype: GGUFValueType) -> str:
    if vtype == GGUFValueType.STRING:
        return _short_string(value)
    if vtype != GGUFValueType.ARRAY:
        return repr(value)
    items = value.tolist() if isinstance(value, np.ndarray) else list(value)
    head = [_short_string(v) if isinstance(v, str) else _format_value(v, GGUFValueType.ARRAY) if isinstance(v, (list, np.ndarray))
            else repr(v) for v in items[:MAX_ITEMS]]
    more = ", ..." if len(items) > MAX_ITEMS else ""
    return f"[{', '.join(head)}{more}]"


def _type_label(field) -> str:
    return f"[{field.item_type.name}]" if field.type == GGUFValueType.ARRAY else field.type.name


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f}"


def print_info(reader: GGUFReader, show_tensors: bool, out) -> None:
    n_tensors, n_fields = len(reader.tensors), len(reader.fields)
    shards = f", {len(reader.shards)} shards" if len(reader.shards) > 1 else ""
    print(f"{reader.path}: GGUF v{reader.version}, {n_tensors} tensors, {n_fields} metadata fields, alignment {reader.alignment}{shards}",
          file=out)
    print("\nmetadata:", file=out)
    print(f"{'#':>5}  {'type':<10} {'count':>8}  key = value", file=out)
    for i, f in enumerate(reader.fields.values(), 1):
        count = len(f.value) if f.type == GGUFValueType.ARRAY else 1
        print(f"{i:>5}  {_type_label(f):<10} {count:>8}  {f.name} = {_format_value(f.value, f.type)}", file=out)

    total_bytes = sum(t.nbytes for t in reader.tensors.values())
    total_params = sum(t.n_elements for t in reader.tensors.values())
    if show_tensors:
        width = max((len(n) for n in reader.tensors), default=4)
        print("\ntensors:", file=out)
        print(f"{'#':>5}  {'name':<{width}}  {'type':<8} {'ne (ggml order)':<24} {'bytes':>12} {'MiB':>9}", file=out)
        for i, t in enumerate(reader.tensors.values(), 1):
            ne = ", ".join(str(d) for d in reversed(t.shape))
            print(f"{i:>5}  {t.name:<{width}}  {t.type.name:<8} {ne:<24} {t.nbytes:>12} {_mib(t.nbytes):>9}", file=out)
    print(f"\ntotal: {n_tensors} tensors, {total_params:,} parameters ({total_params / 1e6:.1f}M), "
          f"{total_bytes:,} bytes ({_mib(total_bytes)} MiB) of tensor data", file=out)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        reader = GGUFReader(args.model)
    except GGUFError as e:
        fail(str(e))
    try:
        print_info(reader, not args.no_tensors, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # `kamado info model.gguf | head`: the reader went away, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
