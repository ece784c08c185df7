"""Servers for the HTTP tests: the real uvicorn on a free loopback port, in a thread, around the app under test."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import uvicorn

from kamado.server import ModelSettings, ServerSettings, create_app
from tests.server.fake_backend import FakeLlama


@contextlib.contextmanager
def serve_in_thread(app):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class FakeServer:
    """A running server whose models are FakeLlama stand-ins; `backends[name]` is the loaded stand-in."""

    def __init__(self, url: str, app, backends: dict[str, FakeLlama]):
        self.url = url
        self.app = app
        self.backends = backends


@pytest.fixture
def fake_server(tmp_path):
    """Factory: fake_server(names=("fake",), **server_settings, n_ctx=…, token_delay_s=…, n_parallel=…)."""
    stack = contextlib.ExitStack()

    def start(names=("fake",), n_ctx=256, token_delay_s=0.0, n_parallel=2, memory_of=lambda ms: 1, **server):
        backends: dict[str, FakeLlama] = {}
        models = []
        for name in names:
            path = tmp_path / f"{name}.gguf"
            path.write_bytes(b"GGUF")
            models.append(ModelSettings(model=str(path), model_alias=name, n_ctx=n_ctx, n_parallel=n_parallel))

        def loader(ms: ModelSettings) -> FakeLlama:
            backends[ms.name] = FakeLlama(n_ctx=ms.n_ctx, token_delay_s=token_delay_s, name=ms.name)
            return backends[ms.name]

        app = create_app(ServerSettings(models=models, **server), loader=loader, memory_of=memory_of)
        url = stack.enter_context(serve_in_thread(app))
        return FakeServer(url, app, backends)

    yield start
    stack.close()
