"""Admission control for one model: `n_parallel` requests generate at once (llama-server's -np slots, decoded
together by the engine's continuous batching), up to `queue_size` more wait in line, and beyond that the server
answers 503 at once instead of letting a backlog grow without bound."""

from __future__ import annotations

import asyncio
from collections import deque

from kamado.server.errors import APIError


class Slots:
    def __init__(self, n_parallel: int, queue_size: int):
        self.n_parallel = n_parallel
        self.queue_size = queue_size
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line (FIFO) if all are busy; 503 when the line is full.
        Cancelling the wait (the client left) gives up the place in line."""
        if self.running < self.n_parallel and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.queue_size:
            raise APIError(503, f"server busy: {self.running} requests running and {len(self._waiters)} waiting (queue full); retry later",
                           code="queue_full", headers={"Retry-After": "1"})
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: running stays counted
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived just as the wait was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1
