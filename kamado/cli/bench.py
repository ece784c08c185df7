"""`kamado bench`: llama-bench's tests and table, on kamado's engine.

Tests, as llama-bench defines them (each repeated -r times after one warm-up run; t/s is the mean over the
repetitions of tokens / seconds, ± their sample standard deviation):
- ppN: a prompt of N tokens (BOS, then random ids) is computed; the time runs until the first generated token.
- tgN: N tokens are generated one by one from an empty context (BOS), end-of-generation ignored.
- ppN+tgM: both in one request; t/s counts the N + M tokens over the whole time.
Each repetition uses fresh random prompt ids, so the engine's prefix cache cannot skip work.
Several models (-m, repeatable) and thread counts (-t 1,2) give one row per combination and test.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kamado.cli.common import CommandParser, fail, file_type_name, size_label

MD_COLUMNS = [("model", -30), ("size", 10), ("params", 10), ("backend", -10), ("threads", 7), ("test", 15), ("t/s", 20)]


def int_list(text: str) -> list[int]:
    """llama-bench's list values: '128,256' -> [128, 256]."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise ValueError(f"values must not be negative, got {text!r}")
    return values


def pp_tg_pair(text: str) -> tuple[int, int]:
    values = int_list(text)
    if len(values) != 2:
        raise ValueError(f"expected PROMPT,GEN (two integers), got {text!r}")
    return values[0], values[1]


def _list_type(parse):
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__  # argparse names the type in its error message
    return convert


def build_parser() -> CommandParser:
    p = CommandParser(prog="kamado bench", description="Measure prompt processing and generation speed and print llama-bench's table.")
    p.add_argument("-m", "--model", action="append", default=[],
                   help="GGUF model file (repeatable; default: Gemma 3 270M Q4_K_M from its PyPI package)")
    p.add_argument("-p", "--n-prompt", dest="n_prompt", type=_list_type(int_list), action="append",
                   help="prompt lengths to test, comma-separated (default 512; 0: no prompt test)")
    p.add_argument("-n", "--n-gen", dest="n_gen", type=_list_type(int_list), action="append",
                   help="numbers of tokens to generate, comma-separated (default 128; 0: no generation test)")
    p.add_argument("-pg", dest="pg", type=_list_type(pp_tg_pair), action="append", default=[],
                   help="a prompt-then-generate test PROMPT,GEN, e.g. -pg 512,128 (repeatable)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="runs of each test (default 5)")
    p.add_argument("-t", "--threads", type=_list_type(int_list), action="append",
                   help="CPU thread counts to test, comma-separated (default: torch's, normally every core)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=2048, help="prompt tokens per forward step (default 2048)")
    p.add_argument("-ngl", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=99,
                   help="layers to put on the GPU (default 99: all); ignored without a GPU")
    p.add_argument("-o", "--output", choices=["md", "csv", "json", "jsonl"], default="md", help="output format (default md)")
    p.add_argument("--progress", action="store_true", help="print each test on stderr as it starts")
    p.add_argument("-v", "--verbose", action="store_true", help="print loading details")
    return p


@dataclass
class Result:
    """One row: field names are llama-bench's JSON/CSV names."""

    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    backends: str
    n_threads: int
    n_batch: int
    n_gpu_layers: int
    n_prompt: int
    n_gen: int
    test_time: str
    samples_ns: list[int] = field(default_factory=list)

    @property
    def samples_ts(self) -> list[float]:
        return [(self.n_prompt + self.n_gen) / (ns / 1e9) for ns in self.samples_ns]

    def stats(self) -> dict:
        ts, ns = self.samples_ts, self.samples_ns
        return {"avg_ns": int(statistics.mean(ns)), "stddev_ns": int(statistics.stdev(ns)) if len(ns) > 1 else 0,
                "avg_ts": statistics.mean(ts), "stddev_ts": statistics.stdev(ts) if len(ts) > 1 else 0.0}

    @property
    def test_name(self) -> str:
        if self.n_prompt and self.n_gen:
            return f"pp{self.n_prompt}+tg{self.n_gen}"
        return f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"

    def record(self) -> dict:
        row = {k: v for k, v in asdict(self).items() if k != "samples_ns"}
        return row | self.stats() | {"samples_ns": self.samples_ns, "samples_ts": self.samples_ts}


def model_type(metadata: dict, n_params: int) -> str:
    """llama-bench's model column: architecture, size label, file type ('gemma3 270M Q4_K - Medium')."""
    label = metadata.get("general.size_label") or size_label(n_params)
    return f"{metadata.get('general.architecture', '?')} {label} {file_type_name(metadata.get('general.file_type'))}"


def _human_size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _human_params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


class Runner:
    """Times one loaded model's requests on its engine."""

    def __init__(self, llm):
        from kamado.engine import Request, SamplingParams

        self.llm, self.Request, self.greedy = llm, Request, SamplingParams(temperature=0.0)
        self.bos = llm.token_bos()
        self.rng = random.Random(0)

    def random_prompt(self, n: int) -> list[int]:
        # BOS first, as llama-bench; ids from the first half of the vocabulary, which holds no special tokens in practice.
        start = [self.bos] if self.bos is not None else []
        return (start + [self.rng.randrange(self.llm.n_vocab() // 2) for _ in range(n)])[:n]

    def run(self, n_prompt: int, n_gen: int) -> int:
        """Nanoseconds for one test run."""
        if n_prompt:
            prompt, max_tokens = self.random_prompt(n_prompt), n_gen or 1
        else:
            prompt, max_tokens = [self.bos if self.bos is not None else 0], n_gen
        request = self.Request(prompt, self.greedy, max_tokens=max_tokens, ignore_eos=True)
        start = time.perf_counter_ns()
        for _ in self.llm.engine.submit(request):
            if n_prompt and not n_gen:
                break  # the first generated token ends a prompt test
        return time.perf_counter_ns() - start


def tests_of(args) -> list[tuple[int, int]]:
    prompts = [v for group in (args.n_prompt or [[512]]) for v in group]
    gens = [v for group in (args.n_gen or [[128]]) for v in group]
    return [(p, 0) for p in prompts if p] + [(0, n) for n in gens if n] + list(args.pg)


def bench_model(path: Path, args, tests: list[tuple[int, int]], threads_list: list[int]) -> list[Result]:
    import torch

    from kamado.gguf import GGUFReader
    from kamado.llama import Llama

    n_ctx = max(p + n for p, n in tests) + 16
    try:
        llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=args.batch_size, n_gpu_layers=args.n_gpu_layers, verbose=args.verbose)
        with GGUFReader(path) as reader:
            meta = reader.metadata
            size = sum(t.nbytes for t in reader.tensors.values())
            n_params = sum(t.n_elements for t in reader.tensors.values())
    except ValueError as e:  # GGUFError, ModelError and TokenizerError are ValueErrors
        fail(str(e))
    if llm.engine is None:
        fail(f"{path}: {llm.model.cfg.arch} is an encoder model (embeddings only): kamado bench measures text generation")
    runner = Runner(llm)
    backend = "CUDA" if any(d.type == "cuda" for d in llm.model.layer_devices) else "CPU"  # llama-bench's names
    results = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for n_prompt, n_gen in tests:
            r = Result(path.name, model_type(meta, n_params), size, n_params, backend, threads, args.batch_size, args.n_gpu_layers,
                       n_prompt, n_gen, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            if args.progress:
                print(f"kamado bench: {path.name}, {threads} threads, {r.test_name}: warm-up and {args.repetitions} runs", file=sys.stderr)
            runner.run(n_prompt, min(n_gen, 1))  # warm-up as llama-bench's: the whole prompt (compiles the GPU kernels), 1 token
            r.samples_ns = [runner.run(n_prompt, n_gen) for _ in range(args.repetitions)]
            results.append(r)
    return results


def print_markdown(results: list[Result], out) -> None:
    def row(cells):
        return "| " + " | ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w) in zip(cells, MD_COLUMNS)) + " |"

    print(row([name for name, _ in MD_COLUMNS]), file=out)
    print("| " + " | ".join("-" * -w if w < 0 else "-" * (w - 1) + ":" for _, w in MD_COLUMNS) + " |", file=out)
    for r in results:
        s = r.stats()
        print(row([r.model_type, _human_size(r.model_size), _human_params(r.model_n_params), r.backends, str(r.n_threads),
                   r.test_name, f"{s['avg_ts']:.2f} ± {s['stddev_ts']:.2f}"]), file=out)


def print_results(results: list[Result], fmt: str, out) -> None:
    if fmt == "md":
        print_markdown(results, out)
        from kamado import __version__

        print(f"\nbuild: kamado {__version__}", file=out)
    elif fmt == "json":
        print(json.dumps([r.record() for r in results], indent=2), file=out)
    elif fmt == "jsonl":
        for r in results:
            print(json.dumps(r.record()), file=out)
    else:
        rows = [{k: v for k, v in r.record().items() if not k.startswith("samples_")} for r in results]
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.repetitions < 1:
        fail(f"-r/--repetitions must be at least 1, got {args.repetitions}")
    tests = tests_of(args)
    if not tests:
        fail("no tests to run: every -p and -n is 0 and no -pg was given")
    import torch

    threads_list = [v for group in args.threads for v in group] if args.threads else [torch.get_num_threads()]
    if 0 in threads_list:
        fail("-t/--threads must be at least 1")
    from kamado.cli.common import model_path

    paths = [model_path(m) for m in (args.model or [None])]  # check every file before the first long run
    results = []
    for path in paths:
        results += bench_model(path, args, tests, threads_list)
    print_results(results, args.output, sys.stdout)
    return 0
