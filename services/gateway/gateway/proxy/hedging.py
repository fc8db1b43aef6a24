"""The second attempt of a hedged stream (see ``balance.hedge`` for when).

The first attempt is awaited inline, as an unhedged one is; a timer (the
hedge delay) starts the second as a task. If the second produces its first
chunk while the first is still waiting, it interrupts the first by
cancelling the task that awaits it (the pattern of ``asyncio.timeout``: the
interruption is told apart from an outside cancellation by ``uncancel()``),
which closes the first's connection wherever it was waiting. Once the first
attempt has ended, for better or worse, nothing interrupts it any more.

So an unhedged request pays one timer; the task and its callbacks exist only
for the few streams whose first token is late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Race(Generic[T]):
    """The hedge of one attempt; ``fire`` is the timer's callback."""

    __slots__ = ("_start", "_waiter", "lease", "settled", "task", "won")

    def __init__(self, start: Callable[[], tuple[Any, Awaitable[T]] | None]) -> None:
        self._start = start
        self._waiter = asyncio.current_task()
        self.task: asyncio.Future[T] | None = None
        self.lease: Any = None  # the hedge's lease
        self.won = False  # the hedge answered first and interrupted the first attempt
        self.settled = False  # the first attempt has ended: it is never interrupted now

    def fire(self) -> None:
        if self.settled:
            return
        started = self._start()
        if started is None:
            return
        self.lease, attempt = started
        self.task = asyncio.ensure_future(attempt)
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[T]) -> None:
        if self.settled or task.cancelled() or task.exception() is not None:
            return
        self.won = True
        self.settled = True
        assert self._waiter is not None
        self._waiter.cancel()

    def interrupted(self) -> bool:
        """In a ``CancelledError`` handler: whether the cancellation was the hedge's
        win alone (then it is taken back), not a cancellation from outside."""
        if not self.won or self._waiter is None:
            return False
        return self._waiter.uncancel() == 0
