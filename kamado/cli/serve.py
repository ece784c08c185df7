"""`kamado serve`: the OpenAI-compatible HTTP server, with llama-server's flags and llama-cpp-python's --config file.

Flags given on the command line win over the config file's server keys (host, port, api_key). On SIGTERM or
Ctrl+C the server stops accepting connections, lets running requests finish (cancelling those still running after
GRACEFUL_SHUTDOWN_S), unloads the models and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import uvicorn

from kamado.cli.common import CommandParser, default_model_path, fail
from kamado.server import create_app
from kamado.server.settings import ModelSettings, ServerSettings, SettingsError, check_models, load_config_file

GRACEFUL_SHUTDOWN_S = 30


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="kamado serve", allow_abbrev=False,
                                description="OpenAI-compatible HTTP server with llama-server's flags")
    p.add_argument("-m", "--model", help="GGUF model file (default: Gemma 3 270M Q4_K_M from PyPI, when no --config)")
    p.add_argument("--config", "--config_file", dest="config", help="llama-cpp-python config file: server keys and a list of models")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8080; 0: any free port)")
    p.add_argument("-c", "--ctx-size", dest="ctx_size", type=int, default=4096, help="context size in tokens (0: the model's)")
    p.add_argument("-n", "--n-predict", dest="n_predict", type=int, default=-1,
                   help="tokens to generate when a request does not say (-1: until end of generation or context)")
    p.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="n_gpu_layers", type=int, default=0, help="layers on the GPU (-1: all)")
    p.add_argument("-np", "--parallel", dest="parallel", type=int, default=4, help="requests decoded together (slots)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-b", "--batch-size", dest="batch_size", type=int, default=512, help="prompt tokens per forward step")
    p.add_argument("-a", "--alias", "--model-alias", dest="model_alias", help="the name requests use for the model")
    p.add_argument("--chat-format", "--chat-template", dest="chat_format", help="named chat format instead of the model's template")
    p.add_argument("--api-key", dest="api_key", help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    p.add_argument("--queue-size", type=int, default=64, help="requests that may wait for a slot before the server answers 503")
    p.add_argument("--memory-budget", dest="memory_budget_mb", type=int, default=None,
                   help="MiB that loaded models may use; least recently used ones are unloaded (default: 3/4 of RAM)")
    p.add_argument("--verbose", action="store_true", help="log every request and model load")
    return p


def settings_from_args(args) -> ServerSettings:
    """The command line (and config file) as ServerSettings; SettingsError names what is wrong."""
    warnings: list[str] = []
    base = load_config_file(args.config, warnings) if args.config else ServerSettings()
    for w in warnings:
        print(f"kamado: warning: {w}", file=sys.stderr)
    updates = {"n_predict": args.n_predict, "queue_size": args.queue_size}
    for key in ("host", "port", "api_key", "memory_budget_mb"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    models = list(base.models)
    if args.model or not models:
        if args.model and models:
            raise SettingsError("give either -m or a --config file with 'models', not both")
        models = [ModelSettings(model=args.model or str(default_model_path()), model_alias=args.model_alias,
                                chat_format=args.chat_format, n_gpu_layers=args.n_gpu_layers, n_ctx=args.ctx_size,
                                n_batch=args.batch_size, n_threads=args.threads, n_parallel=args.parallel, verbose=args.verbose)]
        # llama-server answers any model name when it serves one model; an explicit alias makes names matter.
        updates["strict_model_names"] = args.model_alias is not None
    updates["models"] = models
    settings = ServerSettings.model_validate({**base.model_dump(), **updates})
    check_models(settings)
    return settings


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (SettingsError, ValueError) as e:
        fail(str(e))
    _check_chat_formats(settings)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="kamado: %(message)s")
    logging.getLogger("kamado.server").setLevel(logging.INFO)

    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_level="info" if args.verbose else "warning",
                            access_log=args.verbose, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            ssl_keyfile=settings.ssl_keyfile, ssl_certfile=settings.ssl_certfile)
    server = AnnouncingServer(config, settings)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it found installed:
    # this one, so that a requested stop ends with exit code 0 instead of death by signal.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        server.run()
    except _Terminated:
        pass
    except OSError as e:
        fail(f"cannot listen on {settings.host}:{settings.port}: {e.strerror or e}")
    if not server.started:
        fail(f"the server did not start (is {settings.host}:{settings.port} free?)")
    print("kamado: server stopped", file=sys.stderr, flush=True)
    return 0


class _Terminated(Exception):
    pass


def _terminated(signum, frame):
    raise _Terminated()


def _check_chat_formats(settings: ServerSettings) -> None:
    from kamado.chat import ChatTemplateError, get_chat_format

    for m in settings.models:
        if m.chat_format is not None:
            try:
                get_chat_format(m.chat_format)
            except ChatTemplateError as e:
                fail(f"model {m.name!r}: {e}")


def _announce(server, settings: ServerSettings) -> None:
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    scheme = "https" if settings.ssl_certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(settings.model_names())
    print(f"kamado: listening on {scheme}://{shown}:{port} - serving {names} (models load on first use)", flush=True)


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing kamado's startup line once its socket is really listening."""

    def __init__(self, config, settings: ServerSettings):
        super().__init__(config)
        self._settings = settings

    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            _announce(self, self._settings)
