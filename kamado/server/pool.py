"""The served models: found by name, loaded on first use, kept loaded while they fit the memory budget (the least
recently used idle model is unloaded first).

A request names a model only by a configured name; nothing in a request is ever used as a path, so a request can
never make the server read a file that is not a configured model.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from kamado.server.errors import APIError
from kamado.server.settings import ModelSettings, ServerSettings
from kamado.server.slots import Slots

log = logging.getLogger("kamado.server")

Loader = Callable[[ModelSettings], Any]


@dataclass(eq=False)
class LoadedModel:
    settings: ModelSettings
    llm: Any
    slots: Slots
    memory_bytes: int
    last_used: float = field(default_factory=time.monotonic)
    users: int = 0

    @property
    def name(self) -> str:
        return self.settings.name


def load_llama(ms: ModelSettings):
    """The real backend: a kamado.Llama with the model entry's settings."""
    from kamado.llama import Llama

    return Llama(
        model_path=ms.model, n_ctx=ms.n_ctx, n_gpu_layers=ms.n_gpu_layers, n_batch=ms.n_batch, n_threads=ms.n_threads,
        chat_format=ms.chat_format, embedding=ms.embedding, last_n_tokens_size=ms.last_n_tokens_size, verbose=ms.verbose,
        n_seq_max=ms.n_parallel,
    )


def estimate_model_bytes(ms: ModelSettings) -> int:
    """Weights (the file) plus an f16 KV cache of n_ctx tokens, from the GGUF header; the file size alone if the
    header lacks the shapes."""
    from kamado.gguf import GGUFReader

    size = Path(ms.model).stat().st_size
    try:
        meta = GGUFReader(ms.model).metadata
        arch = meta["general.architecture"]
        n_ctx = ms.n_ctx or int(meta[f"{arch}.context_length"])
        n_layer = int(meta[f"{arch}.block_count"])
        n_head = int(meta[f"{arch}.attention.head_count"])
        n_head_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
        n_head_kv = max(n_head_kv) if isinstance(n_head_kv, list) else int(n_head_kv)
        head_dim = int(meta.get(f"{arch}.attention.key_length", int(meta[f"{arch}.embedding_length"]) // n_head))
    except (KeyError, ValueError, TypeError, OSError):
        return size
    return size + 2 * 2 * n_layer * n_ctx * n_head_kv * head_dim


def default_memory_budget() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 3 // 4)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class ModelPool:
    def __init__(self, settings: ServerSettings, loader: Loader = load_llama,
                 memory_of: Callable[[ModelSettings], int] = estimate_model_bytes):
        self.settings = settings
        self._loader = loader
        self._memory_of = memory_of
        self.budget = settings.memory_budget_mb * 2**20 if settings.memory_budget_mb else default_memory_budget()
        self._by_name = {m.name: m for m in settings.models}
        self.loaded: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()

    @property
    def default(self) -> ModelSettings:
        return self.settings.models[0]

    def resolve(self, name: str | None) -> ModelSettings:
        """The model a request names. With one model served and no alias given, any name means that model
        (llama-server's behaviour, which seed scripts rely on); otherwise an unknown name is a 404."""
        if name is None or name == "":
            return self.default
        found = self._by_name.get(name)
        if found is not None:
            return found
        if not self.settings.strict_model_names and len(self._by_name) == 1:
            return self.default
        served = ", ".join(sorted(self._by_name))
        raise APIError(404, f"The model '{name}' does not exist; this server serves: {served}", param="model", code="model_not_found")

    async def acquire(self, name: str | None) -> LoadedModel:
        """The named model, loaded; the caller must `release` it. A model in use is never unloaded."""
        ms = self.resolve(name)
        entry = self.loaded.get(ms.name)
        if entry is None:
            # Loads (seconds) are serialised; requests for models already loaded never wait for them.
            async with self._lock:
                entry = self.loaded.get(ms.name) or await self._load(ms)
        entry.users += 1
        entry.last_used = time.monotonic()
        return entry

    def release(self, entry: LoadedModel) -> None:
        entry.users -= 1
        entry.last_used = time.monotonic()

    async def _load(self, ms: ModelSettings) -> LoadedModel:
        need = self._memory_of(ms)
        for victim in sorted(self.loaded.values(), key=lambda e: e.last_used):
            if self._used() + need <= self.budget:
                break
            if victim.users == 0:
                await self._unload(victim, "least recently used, to make room")
        if self.loaded and self._used() + need > self.budget:
            busy = ", ".join(sorted(self.loaded))
            raise APIError(503, f"cannot load model '{ms.name}' now: the memory budget ({self.budget >> 20} MiB) is held by models "
                                f"serving requests ({busy}); retry later", param="model", code="model_busy",
                           headers={"Retry-After": "5"})
        log.info("loading model %s from %s", ms.name, ms.model)
        started = time.monotonic()
        try:
            llm = await anyio.to_thread.run_sync(self._loader, ms)
        except Exception as e:
            log.exception("loading model %s failed", ms.name)
            raise APIError(500, f"model '{ms.name}' failed to load: {e}", param="model", code="model_load_failed") from e
        log.info("loaded model %s in %.1f s", ms.name, time.monotonic() - started)
        entry = LoadedModel(ms, llm, Slots(ms.n_parallel, self.settings.queue_size), need)
        self.loaded[ms.name] = entry
        return entry

    def _used(self) -> int:
        return sum(e.memory_bytes for e in self.loaded.values())

    async def _unload(self, entry: LoadedModel, why: str) -> None:
        log.info("unloading model %s (%s)", entry.name, why)
        del self.loaded[entry.name]
        close = getattr(entry.llm, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)

    async def close(self) -> None:
        async with self._lock:
            for entry in list(self.loaded.values()):
                await self._unload(entry, "server stopping")
