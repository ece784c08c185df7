"""`kamado COMMAND ...`: dispatch to kamado.cli.COMMAND.main(argv).

Each subcommand module parses its own flags (llama.cpp's names) and returns an exit code. User errors
are reported in one line on stderr with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run": "chat or complete in the terminal (llama-cli)",
    "serve": "OpenAI-compatible HTTP server (llama-server)",
    "convert": "Hugging Face checkpoint to GGUF (convert_hf_to_gguf.py)",
    "quantize": "quantize a GGUF file (llama-quantize)",
    "imatrix": "compute an importance matrix (llama-imatrix)",
    "perplexity": "perplexity of a text (llama-perplexity)",
    "bench": "speed table (llama-bench)",
    "info": "metadata and tensor table of a GGUF file (gguf-dump)",
    "env": "environment report for bug reports",
}


def usage() -> str:
    lines = ["usage: kamado COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, text in COMMANDS.items()]
    lines += ["", "kamado COMMAND --help shows each command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from kamado import __version__

        print(f"kamado {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"kamado: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"kamado.cli.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"kamado.cli.{name}":
            print(f"kamado: the {name!r} command is not available in this build yet", file=sys.stderr)
            return 2
        raise
    try:
        return module.main(argv[1:]) or 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
