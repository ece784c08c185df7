"""GGUF read/write speed on the real models: kamado.gguf next to gguf-py (the format library of llama.cpp).

    python benchmarks/gguf_io.py [MODEL.gguf ...]     (default: the Gemma 3 270M and Qwen2.5 0.5B test models)

Prints one table: time to open a file (header, metadata, tensor table, mmap views), and to write a full copy
(every field and tensor) to a temporary directory. Each kamado figure is the best of `--repeat` runs;
gguf-py's open is timed once (it is slow).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gguf  # noqa: E402

from kamado.gguf import GGUFReader, GGUFWriter  # noqa: E402


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def kamado_copy(src: Path, out: Path) -> None:
    r = GGUFReader(src)
    w = GGUFWriter(out, alignment=r.alignment)
    w.add_fields_from(r.fields)
    for t in r.tensors.values():
        w.add_tensor(t.name, t.type, t.shape, t.raw)
    w.write()


def default_models() -> list[Path]:
    from tests import realmodels

    paths = []
    for find in (realmodels.gemma_path, realmodels.qwen_path):
        try:
            paths.append(find())
        except BaseException as e:  # pytest.skip raises an exception that is not an Exception
            print(f"skipped a default model: {e}", file=sys.stderr)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", type=Path)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-gguf-py", action="store_true", help="gguf-py's reader takes ~10 s on a 262k vocabulary")
    args = p.parse_args()
    models = args.models or default_models()
    print(f"{'model':<48} {'MiB':>7} {'open kamado':>12} {'open gguf-py':>13} {'copy kamado':>12} {'copy MiB/s':>11}")
    for path in models:
        mib = path.stat().st_size / 2**20
        ours = best_of(args.repeat, partial(GGUFReader, path))
        theirs = float("nan") if args.skip_gguf_py else best_of(1, partial(gguf.GGUFReader, path))
        with tempfile.TemporaryDirectory() as d:
            copy = best_of(args.repeat, partial(kamado_copy, path, Path(d) / "copy.gguf"))
        print(f"{path.name[:48]:<48} {mib:>7.1f} {ours:>11.3f}s {theirs:>12.3f}s {copy:>11.3f}s {mib / copy:>11.0f}")


if __name__ == "__main__":
    main()
