"""`kamado run`: llama-cli's command line, on kamado's engine.

Modes (decided to match what llama-cli users type, see docs/STATUS.md):
- completion (`-no-cnv`): the prompt is raw text; it is echoed and continued, like llama-cli's completion mode.
  With -i, each line typed afterwards is appended to the text and the continuation goes on.
- conversation (default): the model's chat template (or a named format) wraps the turns. `-sys` is the
  system message and `-p` the first user message. With `-p` alone the answer is printed and the command
  exits (one question, one answer); `-i`/`-cnv` keep the conversation going, reading further turns from the
  terminal (line editing and history) or, in a pipe, one line per turn until end of input.
  A prompt that already holds the model's chat markup (seed 001 types Gemma's `<start_of_turn>` by hand, as
  older llama-cli needed) is continued as raw text unless -cnv is given, so it is not wrapped twice.
In conversation: Ctrl+C stops the current answer, a second Ctrl+C (or /exit, or end of input) leaves,
/clear starts over; a line ending in `\\` continues on the next line. Colours only on a terminal: the
prompt in yellow and the user's input in green, as llama-cli. At the end, llama.cpp-style timings on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kamado.cli.common import CommandParser, add_model_flags, add_sampling_flags, fail, load_llama, model_path, sampling_kwargs

PROMPT_COLOR = "\033[33m"  # llama-cli prints the prompt in yellow
USER_COLOR = "\033[32m"  # and the user's input in green
RESET = "\033[0m"
# llama.cpp's names for built-in chat templates (--chat-template) where kamado's named format is spelled differently.
LLAMA_CPP_TEMPLATE_NAMES = {"llama2": "llama-2", "llama3": "llama-3", "phi3": "phi-3", "mistral-v1": "mistral-instruct"}
HELP_BANNER = ("== kamado run: conversation mode ==\n"
               " - Ctrl+C stops the answer; Ctrl+C at the prompt, Ctrl+D or /exit leaves\n"
               " - /clear starts a new conversation\n"
               " - end a line with \\ to continue your message on the next line")
ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "'": "'", '"': '"', "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "v": "\v", "?": "?"}


def build_parser() -> CommandParser:
    p = CommandParser(prog="kamado run", description="Chat with a GGUF model or continue a text, with llama-cli's flags. "
                      "Conversation mode is the default; -no-cnv continues raw text.")
    add_model_flags(p)
    p.add_argument("-p", "--prompt", help="the first user message in conversation mode; the text to continue with -no-cnv")
    p.add_argument("-f", "--file", help="read the prompt from this UTF-8 file")
    p.add_argument("-sys", "--system-prompt", dest="system_prompt", help="system message (conversation mode)")
    p.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=-1,
                   help="most tokens to generate per answer (-1: until the model ends its answer or the context is full)")
    p.add_argument("-i", "--interactive", action="store_true", help="keep going after the first answer, reading the next turn")
    p.add_argument("-cnv", "--conversation", dest="conversation", action="store_const", const=True, default=None,
                   help="conversation mode with the chat template (the default), interactive")
    p.add_argument("-no-cnv", "--no-conversation", dest="conversation", action="store_const", const=False,
                   help="completion mode: echo the raw prompt and continue it")
    p.add_argument("-st", "--single-turn", action="store_true", help="answer the prompt once, then exit (even with -cnv)")
    p.add_argument("-co", "--color", nargs="?", const="on", default="auto", choices=["on", "off", "auto"],
                   help="colour the prompt and the user's input; only ever on a terminal (default: auto)")
    p.add_argument("-r", "--reverse-prompt", action="append", default=[],
                   help="stop the answer at this text and hand back control (repeatable)")
    p.add_argument("-e", "--escape", action="store_true", default=True,
                   help="process escapes (\\n, \\t, \\\\, \\xHH, ...) in the prompt, system prompt and stop texts (default)")
    p.add_argument("--no-escape", dest="escape", action="store_false", help="take the prompt literally")
    p.add_argument("--verbose-prompt", action="store_true", help="print the prompt's tokens before generating")
    p.add_argument("--chat-template", help="named chat format (chatml, llama3, gemma, phi3, ...) instead of the model's own")
    p.add_argument("--chat-template-file", help="Jinja chat template file to use instead of the model's own")
    p.add_argument("--jinja", action="store_true", help="use the Jinja chat template (always on in kamado; accepted for compatibility)")
    add_sampling_flags(p)
    return p


def process_escapes(text: str) -> str:
    """llama.cpp's string_process_escapes: \\n \\r \\t \\' \\" \\\\ \\xHH and C's others; an unknown escape stays as typed."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in ESCAPES:
            out.append(ESCAPES[nxt])
            i += 2
        elif nxt == "x" and i + 4 <= len(text) and all(h in "0123456789abcdefABCDEF" for h in text[i + 2 : i + 4]):
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
        else:
            out.append("\\" + nxt)
            i += 2
    return "".join(out)


def read_prompt(args) -> str | None:
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8")
        except OSError as e:
            fail(f"cannot read prompt file {args.file}: {e.strerror}")
        except UnicodeDecodeError as e:
            fail(f"prompt file {args.file} is not UTF-8: {e.reason} at byte {e.start}")
    else:
        text = args.prompt
    return process_escapes(text) if text is not None and args.escape else text


class Timer:
    """Counts what llama.cpp's timing lines report: load, prompt eval (prompt tokens) and eval (generated tokens).

    Prompt eval runs from submitting a request to its first generated text; eval from there to the end, over the
    tokens generated after the first (llama.cpp counts those as eval 'runs')."""

    def __init__(self):
        self.prompt_tokens = 0
        self.prompt_s = 0.0
        self.eval_runs = 0
        self.eval_s = 0.0

    def add(self, usage: dict, first_token_s: float, total_s: float) -> None:
        generated = usage.get("completion_tokens", 0)
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.prompt_s += first_token_s
        self.eval_runs += max(generated - 1, 0)
        self.eval_s += max(total_s - first_token_s, 0.0)

    def report(self, load_s: float, total_s: float) -> str:
        def line(name, n, s, unit):
            ms = s * 1000
            per = ms / n if n else 0.0
            tps = n / s if s > 0 else 0.0
            return f"kamado_perf: {name:>16} = {ms:10.2f} ms / {n:5d} {unit:<6} ({per:8.2f} ms per token, {tps:8.2f} tokens per second)"

        return "\n".join([
            f"kamado_perf: {'load time':>16} = {load_s * 1000:10.2f} ms",
            line("prompt eval time", self.prompt_tokens, self.prompt_s, "tokens"),
            line("eval time", self.eval_runs, self.eval_s, "runs"),
            f"kamado_perf: {'total time':>16} = {total_s * 1000:10.2f} ms / {self.prompt_tokens + self.eval_runs:5d} tokens",
        ])


def stream_answer(chunks, out, timer: Timer, text_of) -> tuple[str, bool]:
    """Print a stream of completion chunks as they come; return (the whole text, whether Ctrl+C stopped it).

    Closing the stream early cancels the request in the engine."""
    start = time.perf_counter()
    first = None
    usage: dict = {}
    parts = []
    interrupted = False
    try:
        for chunk in chunks:
            if chunk.get("usage"):
                usage = chunk["usage"]
            text = text_of(chunk)
            if first is None and (text or (chunk.get("choices") and chunk["choices"][0].get("finish_reason"))):
                first = time.perf_counter() - start
            if text:
                parts.append(text)
                out.write(text)
                out.flush()
    except KeyboardInterrupt:
        interrupted = True
        chunks.close()
        out.write(" [interrupted]")
    timer.add(usage, first or 0.0, time.perf_counter() - start)
    out.write("\n")
    out.flush()
    return "".join(parts), interrupted


def chat_text(chunk) -> str:
    return (chunk["choices"][0].get("delta", {}).get("content") or "") if chunk.get("choices") else ""


def completion_text(chunk) -> str:
    return (chunk["choices"][0].get("text") or "") if chunk.get("choices") else ""


class UserInput:
    """Reads the user's turns: with line editing and history on a terminal, one line per turn from a pipe.
    A line ending in a backslash continues on the next line (llama-cli's multi-line input)."""

    def __init__(self, color: bool):
        self.session = None
        if sys.stdin.isatty():
            from prompt_toolkit import PromptSession
            from prompt_toolkit.styles import Style

            self.session = PromptSession(style=Style.from_dict({"": "ansigreen" if color else ""}))

    def _line(self, continuation: bool) -> str | None:
        prompt = ". " if continuation else "> "
        if self.session is not None:
            return self.session.prompt(prompt)
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None

    def read(self) -> str | None:
        """One turn; None at end of input or on Ctrl+C at the prompt (the 'second' Ctrl+C leaves)."""
        lines: list[str] = []
        try:
            while True:
                line = self._line(bool(lines))
                if line is None:
                    return "\n".join(lines) if lines else None
                if line.endswith("\\"):
                    lines.append(line[:-1])
                    continue
                lines.append(line)
                return "\n".join(lines)
        except (EOFError, KeyboardInterrupt):
            return None


def has_chat_markup(llm, text: str) -> bool:
    """Whether the text spells special tokens of the model (such as <start_of_turn>), i.e. is already chat-formatted."""
    data = text.encode("utf-8")
    return llm.tokenize(data, add_bos=False, special=True) != llm.tokenize(data, add_bos=False, special=False)


def use_chat_template_file(llm, path: Path, template_file: str) -> None:
    """Replace the model's chat formatting with a Jinja template from a file (bos/eos strings from the model)."""
    from kamado.chat import ChatTemplate, ChatTemplateError
    from kamado.chat.template import TEMPLATE_KEY
    from kamado.gguf import GGUFReader

    try:
        source = Path(template_file).read_text(encoding="utf-8")
    except OSError as e:
        fail(f"cannot read chat template file {template_file}: {e.strerror}")
    try:
        with GGUFReader(path) as reader:
            llm.chat_handler = ChatTemplate.from_metadata({**reader.metadata, TEMPLATE_KEY: source})
    except ChatTemplateError as e:
        fail(f"chat template file {template_file}: {e}")


class Session:
    """One `kamado run`: the loaded model, its generation settings, the output and the timings."""

    def __init__(self, args, llm, out):
        self.args, self.llm, self.out = args, llm, out
        self.color = args.color != "off" and out.isatty()
        self.timer = Timer()
        self.params = sampling_kwargs(args)
        self.max_tokens = None if args.n_predict < 0 else args.n_predict
        stops = list(args.reverse_prompt) + list(args.stop)
        self.stops = [process_escapes(s) for s in stops] if args.escape else stops

    def paint(self, text: str, color: str) -> str:
        return f"{color}{text}{RESET}" if self.color and text else text

    def generate(self, create, prompt, text_of) -> tuple[str, bool] | None:
        """Stream create(prompt, ...) (a Llama completion method); None when the engine refused the request or failed
        (a one-line error is printed)."""
        try:
            chunks = create(prompt, max_tokens=self.max_tokens, stop=self.stops or None, stream=True,
                                 stream_options={"include_usage": True}, **self.params)
            return stream_answer(chunks, self.out, self.timer, text_of)
        except (ValueError, RuntimeError) as e:
            self.out.flush()
            print(f"kamado: error: {e}", file=sys.stderr)
            return None

    def complete(self, prompt: str, interactive: bool) -> int:
        """Completion mode: echo the text, continue it; with -i append each typed line and continue again."""
        text = prompt
        self.out.write(self.paint(text, PROMPT_COLOR))
        self.out.flush()
        reader = UserInput(self.color) if interactive else None
        while True:
            result = self.generate(self.llm.create_completion, text, completion_text)
            if result is None:
                return 1 if reader is None else 0
            text += result[0]
            if reader is None:
                return 0
            line = reader.read()
            if line is None or line.strip() == "/exit":
                return 0
            text += line + "\n"

    def converse(self, first_turn: str | None, interactive: bool) -> int:
        reader = UserInput(self.color) if interactive else None
        if reader is not None and reader.session is not None:
            print(HELP_BANNER, file=sys.stderr)
        messages: list[dict] = []
        if self.args.system_prompt:
            messages.append({"role": "system", "content": self.args.system_prompt})
        while True:
            user = first_turn if first_turn is not None else reader.read()
            if first_turn is not None and interactive:
                self.out.write(f"> {self.paint(user, USER_COLOR)}\n")
            first_turn = None
            if user is None or user.strip() == "/exit":
                return 0
            if user.strip() == "/clear":
                messages = messages[:1] if self.args.system_prompt else []
                self.out.write("[conversation cleared]\n")
                continue
            if reader is not None and reader.session is None:
                self.out.write(f"> {user}\n")  # from a pipe: show what was asked, as a terminal would
            messages.append({"role": "user", "content": user})
            result = self.generate(self.llm.create_chat_completion, list(messages), chat_text)
            if result is None:
                messages.pop()
                if reader is None:
                    return 1
                print("kamado: /clear starts a new conversation", file=sys.stderr)
                continue
            messages.append({"role": "assistant", "content": result[0]})
            if reader is None:
                return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.escape and args.system_prompt:
        args.system_prompt = process_escapes(args.system_prompt)
    if args.chat_template:
        args.chat_template = LLAMA_CPP_TEMPLATE_NAMES.get(args.chat_template, args.chat_template)
    prompt = read_prompt(args)
    # Nothing to answer yet (no -p/-f) in conversation mode means an interactive conversation, as in llama-cli.
    interactive = (args.interactive or args.conversation is True or (prompt is None and args.conversation is None)) \
        and not args.single_turn
    if prompt is None and not interactive:
        fail("nothing to answer: give a prompt with -p/-f, or -i for an interactive session")
    path = model_path(args.model)
    t0 = time.perf_counter()
    llm = load_llama(args, path)
    if args.chat_template_file:
        use_chat_template_file(llm, path, args.chat_template_file)
    load_s = time.perf_counter() - t0
    session = Session(args, llm, sys.stdout)

    conversation = args.conversation
    if conversation is None and prompt and has_chat_markup(llm, prompt):
        print("kamado: the prompt already holds chat markup; continuing it as raw text (-cnv wraps it in the chat template anyway)",
              file=sys.stderr)
        conversation = False
    if args.verbose_prompt and prompt:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        print(f"kamado: prompt: {len(ids)} tokens: {ids}", file=sys.stderr)

    try:
        code = session.complete(prompt or "", interactive) if conversation is False else session.converse(prompt, interactive)
    except BrokenPipeError:  # `kamado run ... | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    print(session.timer.report(load_s, time.perf_counter() - t0), file=sys.stderr)
    return code
