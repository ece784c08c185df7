"""`kamado perplexity`: llama-perplexity's method, numbers and output lines.

The text is tokenized once (BOS first, special-token text not parsed, as llama-perplexity does) and cut
into chunks of n_ctx tokens; each chunk gets BOS as its first token and only its second half is scored
(the first half is context), so the numbers are comparable with llama-perplexity's for the same -c.
Per chunk the running perplexity is printed as `[i]PPL,`, then `Final estimate: PPL = X +/- Y`, where Y is
llama-perplexity's uncertainty: PPL times the standard error of the mean token log-likelihood.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from kamado.cli.common import CommandParser, fail, model_path


def build_parser() -> CommandParser:
    p = CommandParser(prog="kamado perplexity",
                      description="Perplexity of a model on a text file, computed and printed as llama-perplexity does.")
    p.add_argument("-m", "--model", help="GGUF model file (default: Gemma 3 270M Q4_K_M from its PyPI package)")
    p.add_argument("-f", "--file", required=True, help="UTF-8 text file to score (it needs at least 2 x ctx-size tokens)")
    p.add_argument("-c", "--ctx-size", dest="ctx_size", type=int, default=512,
                   help="tokens per chunk; the second half of each chunk is scored (default 512, as llama-perplexity)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=2048,
                   help="accepted for llama-perplexity compatibility; each chunk is computed in one pass")
    p.add_argument("--chunks", type=int, default=-1, help="score at most this many chunks (-1: all)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: torch's, normally every core)")
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=0,
                   help="accepted for compatibility; perplexity runs on the CPU for now")
    return p


class RunningPerplexity:
    """Sums of token negative log-likelihoods and their squares, as llama-perplexity keeps them."""

    def __init__(self):
        self.count = 0
        self.nll = 0.0
        self.nll2 = 0.0

    def add(self, nlls) -> None:
        for v in nlls:
            self.nll += v
            self.nll2 += v * v
        self.count += len(nlls)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count)

    def uncertainty(self) -> float | None:
        """PPL times the standard error of the mean NLL; None when the variance is not positive."""
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        if var <= 0 or self.count < 2:
            return None
        return math.sqrt(var / (self.count - 1)) * self.ppl


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.ctx_size < 4:
        fail(f"--ctx-size must be at least 4 for perplexity, got {args.ctx_size}")
    if args.chunks == 0 or args.chunks < -1:
        fail(f"--chunks must be a positive number of chunks or -1 (all), got {args.chunks}")
    path = model_path(args.model)
    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"cannot read text file {args.file}: {e.strerror}")
    except UnicodeDecodeError as e:
        fail(f"text file {args.file} is not UTF-8: {e.reason} at byte {e.start}")

    import torch

    from kamado.engine import perplexity
    from kamado.gguf import GGUFError, GGUFReader
    from kamado.models import ModelError, is_encoder, load_model
    from kamado.tokenizer import Tokenizer, TokenizerError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        reader = GGUFReader(path)
        tokenizer = Tokenizer.from_gguf(reader)
    except (GGUFError, TokenizerError) as e:
        fail(str(e))
    t0 = time.perf_counter()
    tokens = tokenizer.encode(text, add_special=True, parse_special=False)
    print(f"perplexity: tokenization took {(time.perf_counter() - t0) * 1000:.2f} ms", file=sys.stderr)
    n_ctx = args.ctx_size
    if len(tokens) < 2 * n_ctx:  # checked before the slow model load
        fail(f"{args.file}: {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at least {2 * n_ctx} "
             f"(use a smaller -c or a longer text)")
    n_chunks = len(tokens) // n_ctx
    if args.chunks >= 0:
        n_chunks = min(n_chunks, args.chunks)
    t0 = time.perf_counter()
    try:
        # Whole chunks are scored in one pass, where the exact "ggml" backend costs little more than the fast
        # one and follows llama.cpp's CPU arithmetic more closely (docs/NUMERICS.md).
        model = load_model(reader, "ggml", n_ctx=n_ctx)
    except ModelError as e:
        fail(str(e))
    if is_encoder(model):
        fail(f"{args.model}: {model.cfg.arch} is an encoder model: it has no next-token logits to score perplexity with")
    print(f"perplexity: model loaded in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    bos = tokenizer.bos_id if tokenizer.add_bos else None
    print(f"perplexity: calculating perplexity over {n_chunks} chunks, n_ctx={n_ctx}, batch_size={n_ctx}, n_seq=1", file=sys.stderr)

    running = RunningPerplexity()
    for i in range(n_chunks):
        t0 = time.perf_counter()
        _, nlls = perplexity(model, tokens[i * n_ctx : (i + 1) * n_ctx], n_ctx, bos)
        if i == 0:
            seconds = time.perf_counter() - t0
            print(f"perplexity: {seconds:.2f} seconds per pass - ETA {seconds * n_chunks / 60:.2f} minutes", file=sys.stderr)
        running.add(nlls)
        sys.stdout.write(f"[{i + 1}]{running.ppl:.4f},")
        sys.stdout.flush()
    err = running.uncertainty()
    sys.stdout.write("\n")
    if err is None:
        print(f"Final estimate: PPL = {running.ppl:.4f} (uncertainty unavailable: the log-likelihoods do not vary)")
    else:
        print(f"Final estimate: PPL = {running.ppl:.4f} +/- {err:.5f}")
    return 0
