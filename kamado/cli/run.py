"""`kamado run`: llama-cli's command line, on kamado's engine.

Modes (decided to match what llama-cli users type, see docs/STATUS.md):
- completion (`-no-cnv`): the prompt is raw text; it is echoed and continued, like llama-cli's completion mode.
- conversation (default): the model's chat template (or a named format) wraps the turns. `-sys` is the
  system message and `-p` the first user message. With `-p` alone the answer is printed and the command
  exits (one question, one answer); `-i`/`-cnv` keep the conversation going, reading further turns from the
  terminal (line editing and history) or, in a pipe, one line per turn until end of input.
In conversation: Ctrl+C stops the current answer, a second Ctrl+C (or /exit, or end of input) leaves,
/clear starts over. Colours only on a terminal. At the end, llama.cpp-style timings on stderr.
"""

from __future__ import annotations

import argparse
import codecs
import sys
import time
from pathlib import Path

from kamado.cli.common import add_model_flags, add_sampling_flags, fail, load_llama, sampling_kwargs

USER_COLOR = "\033[32m"  # llama-cli prints user input in green
RESET = "\033[0m"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kamado run", description="Chat with a GGUF model or complete text (llama-cli's flags).",
                                allow_abbrev=False)
    add_model_flags(p)
    p.add_argument("-p", "--prompt", help="prompt: the first user message in conversation mode, the text to continue with -no-cnv")
    p.add_argument("-f", "--file", help="read the prompt from this file")
    p.add_argument("-sys", "--system-prompt", dest="system_prompt", help="system message (conversation mode)")
    p.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=-1, help="tokens to generate (-1: until end of generation)")
    p.add_argument("-i", "--interactive", action="store_true", help="keep the conversation going after the first answer")
    p.add_argument("-cnv", "--conversation", dest="conversation", action="store_const", const=True, default=None,
                   help="conversation mode with the chat template (default), interactive")
    p.add_argument("-no-cnv", "--no-conversation", dest="conversation", action="store_const", const=False,
                   help="completion mode: continue the raw prompt text")
    p.add_argument("-st", "--single-turn", action="store_true", help="answer the prompt once, then exit")
    p.add_argument("-co", "--color", action="store_true", help="colour the user's input (only on a terminal)")
    p.add_argument("-r", "--reverse-prompt", action="append", default=[], help="stop and hand back control at this text")
    p.add_argument("-e", "--escape", action="store_true", default=True, help="process escapes such as \\n in the prompt (default)")
    p.add_argument("--no-escape", dest="escape", action="store_false", help="take the prompt literally")
    p.add_argument("--verbose-prompt", action="store_true", help="print the prompt's tokens before generating")
    p.add_argument("--chat-template", help="named chat format (chatml, llama-3, gemma, …) instead of the model's own")
    p.add_argument("--chat-template-file", help="Jinja chat template file to use instead of the model's own")
    p.add_argument("--jinja", action="store_true", help="use the Jinja chat template (always on in kamado)")
    add_sampling_flags(p)
    return p


def read_prompt(args) -> str | None:
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"cannot read prompt file {args.file}: {e.strerror}")
    else:
        text = args.prompt
    if text is not None and args.escape:
        text = codecs.decode(text.encode("utf-8", "backslashreplace"), "unicode_escape").encode("latin-1").decode("utf-8")
    return text


class Timer:
    """Counts what llama.cpp's timing lines report: prompt eval and eval (generated tokens)."""

    def __init__(self):
        self.prompt_tokens = 0
        self.prompt_s = 0.0
        self.gen_tokens = 0
        self.gen_s = 0.0

    def add(self, usage: dict, first_token_s: float, total_s: float) -> None:
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.gen_tokens += usage.get("completion_tokens", 0)
        self.prompt_s += first_token_s
        self.gen_s += max(total_s - first_token_s, 0.0)

    def report(self, load_s: float, total_s: float) -> str:
        def line(name, n, s):
            ms = s * 1000
            per = ms / n if n else 0.0
            tps = n / s if s > 0 else 0.0
            return f"kamado: {name:>12} = {ms:10.2f} ms / {n:5d} tokens ({per:8.2f} ms per token, {tps:8.2f} tokens per second)"

        return "\n".join([
            f"kamado: {'load time':>12} = {load_s * 1000:10.2f} ms",
            line("prompt eval", self.prompt_tokens, self.prompt_s),
            line("eval", self.gen_tokens, self.gen_s),
            f"kamado: {'total time':>12} = {total_s * 1000:10.2f} ms",
        ])


def stream_answer(chunks, out, timer: Timer, text_of) -> str:
    """Print a stream of completion chunks as they come; return the whole text. Ctrl+C stops it early."""
    start = time.perf_counter()
    first = None
    usage = {}
    parts = []
    try:
        for chunk in chunks:
            if first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                usage = chunk["usage"]
            text = text_of(chunk)
            if text:
                parts.append(text)
                out.write(text)
                out.flush()
    except KeyboardInterrupt:
        close = getattr(chunks, "close", None)
        if close:
            close()
        out.write("\n[interrupted]")
    timer.add(usage, first or 0.0, time.perf_counter() - start)
    out.write("\n")
    out.flush()
    return "".join(parts)


def chat_text(chunk) -> str:
    return chunk["choices"][0].get("delta", {}).get("content") or "" if chunk.get("choices") else ""


def completion_text(chunk) -> str:
    return chunk["choices"][0].get("text") or "" if chunk.get("choices") else ""


def read_user_line(session, color: bool) -> str | None:
    """One user turn; None at end of input. Ctrl+C here leaves (it is the 'second' Ctrl+C)."""
    try:
        if session is not None:
            return session.prompt("> ")
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except (EOFError, KeyboardInterrupt):
        return None


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    prompt = read_prompt(args)
    t0 = time.perf_counter()
    llm = load_llama(args)
    load_s = time.perf_counter() - t0
    out = sys.stdout
    timer = Timer()
    params = sampling_kwargs(args)
    max_tokens = None if args.n_predict < 0 else args.n_predict
    stops = list(args.reverse_prompt) + list(args.stop or [])

    if args.conversation is False:
        text = prompt or ""
        if args.verbose_prompt:
            print(f"prompt tokens: {llm.tokenize(text.encode('utf-8'), add_bos=True, special=True)}", file=sys.stderr)
        out.write(text)
        out.flush()
        chunks = llm.create_completion(text, max_tokens=max_tokens, stop=stops or None, stream=True,
                                       stream_options={"include_usage": True}, **params)
        stream_answer(chunks, out, timer, completion_text)
        print(timer.report(load_s, time.perf_counter() - t0), file=sys.stderr)
        return 0

    interactive = args.interactive or args.conversation is True
    if args.single_turn:
        interactive = False
    color = args.color and out.isatty()
    session = None
    if interactive and sys.stdin.isatty():
        from prompt_toolkit import PromptSession

        session = PromptSession()
    messages: list[dict] = []
    if args.system_prompt:
        messages.append({"role": "system", "content": args.system_prompt})
    first_turn = prompt
    if first_turn is None and not interactive:
        fail("nothing to answer: give a prompt with -p/-f, or -cnv for a conversation")
    while True:
        user = first_turn if first_turn is not None else read_user_line(session, color)
        first_turn = None
        if user is None or user.strip() == "/exit":
            break
        if user.strip() == "/clear":
            messages = messages[:1] if args.system_prompt else []
            out.write("[conversation cleared]\n")
            continue
        if session is None and interactive:
            out.write(f"> {USER_COLOR if color else ''}{user}{RESET if color else ''}\n")
        messages.append({"role": "user", "content": user})
        chunks = llm.create_chat_completion(messages, max_tokens=max_tokens, stop=stops or None, stream=True,
                                            stream_options={"include_usage": True}, **params)
        answer = stream_answer(chunks, out, timer, chat_text)
        messages.append({"role": "assistant", "content": answer})
        if not interactive:
            break
    print(timer.report(load_s, time.perf_counter() - t0), file=sys.stderr)
    return 0
