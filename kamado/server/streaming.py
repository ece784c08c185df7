"""Blocking engine iterators on the event loop: a pump thread per request, Server-Sent Events, and disconnects.

`Llama.create_*_completion(stream=True)` returns a blocking iterator of chunks. A `ChunkPump` runs it in a thread of
its own (the event loop never blocks, and a long stream does not hold a shared worker), passes chunks to the loop,
and on `cancel()` closes the iterator from that same thread (a generator can only be closed by the thread that is
not running it) - which is how a closed stream cancels its request in the engine and frees its KV pages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

log = logging.getLogger("kamado.server")

_END = object()
# How often a request waiting without output (queued, or generating for a non-streaming client) checks that its
# client is still connected.
DISCONNECT_POLL_S = 0.25


class ChunkPump:
    def __init__(self, make_iterator: Callable[[], Iterator[dict]], on_exit: Callable[[], None] = lambda: None):
        self._make_iterator = make_iterator
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kamado-stream", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down): nobody is listening any more
            pass

    def _run(self) -> None:
        iterator = None
        try:
            iterator = self._make_iterator()
            for chunk in iterator:
                if self._cancelled.is_set():
                    break
                self._put(chunk)
        except BaseException as e:  # handed to the loop, which turns it into an HTTP error
            self._put(e)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing a generation stream failed")
            self._put(_END)
            try:
                self._on_exit()
            except RuntimeError:  # the loop is gone
                pass

    async def next(self) -> dict | None:
        """The next chunk; None at the end. Re-raises what the iterator raised."""
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # stay at the end for any later call
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self._cancelled.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


async def wait_unless_disconnected(request: Request, awaitable) -> Any:
    """Await `awaitable`; if the client goes away first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()


class ClientGone(Exception):
    """The client closed its connection; nothing can be sent any more."""


def sse(data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n"


class EventStream(StreamingResponse):
    """text/event-stream whose body generator is always closed when the response ends, however it ends, so that
    its `finally` (cancel the request, free the slot) runs at once and not whenever the generator is collected."""

    def __init__(self, body: AsyncIterator[str]):
        super().__init__(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
