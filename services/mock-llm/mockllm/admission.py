"""At most ``max_concurrency`` requests run at once; the rest wait in FIFO order, as in vLLM.

``running`` and ``waiting`` are read by the metrics collector at scrape time.
A waiter that is cancelled (its client went away) leaves the queue at once; a
slot handed to a waiter that was cancelled in the same instant is passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Admission:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def has_room(self) -> bool:
        """True when a request arriving now would run without waiting."""
        return self.running < self.limit and not self._waiters

    async def acquire(self) -> None:
        if self.has_room():
            self.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() hands its slot over: running is already counted
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted and cancelled at once: pass the slot on
            else:
                self._discard(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
