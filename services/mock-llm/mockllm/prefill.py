"""The replica's prefill compute, shared by the requests prefilling at the same time.

Each prefill needs ``uncached tokens x prefill rate`` seconds of the
replica's compute. Concurrent prefills share it equally (processor
sharing): alone, a 2,000-token prefill takes its full time; with a second
one running beside it both progress at half speed, so a long prefill delays
every other request's first token, as it does on a GPU.

:class:`SharedCompute` is the pure model (virtual time, ``now`` passed in);
:class:`PrefillEngine` runs it on the event loop with one timer.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

_EPSILON = 1e-6  # virtual seconds: a timer may fire a hair before its due time


class SharedCompute:
    """Processor sharing in virtual time: ``V`` grows at ``1 / active`` per second."""

    def __init__(self, now: float) -> None:
        self._virtual = 0.0
        self._at = now
        self._heap: list[tuple[float, int]] = []  # (virtual finish, job id)
        self._live: set[int] = set()
        self._ids = itertools.count()

    @property
    def active(self) -> int:
        return len(self._live)

    def _advance(self, now: float) -> None:
        if self._live and now > self._at:
            self._virtual += (now - self._at) / len(self._live)
        self._at = max(self._at, now)

    def add(self, work_s: float, now: float) -> int:
        """Start a job needing ``work_s`` seconds of the whole replica; returns its id."""
        self._advance(now)
        job = next(self._ids)
        heapq.heappush(self._heap, (self._virtual + max(0.0, work_s), job))
        self._live.add(job)
        return job

    def cancel(self, job: int, now: float) -> None:
        self._advance(now)
        self._live.discard(job)

    def finished(self, now: float) -> list[int]:
        """Jobs done by ``now`` (each returned once)."""
        self._advance(now)
        done = []
        while self._heap and (
            self._heap[0][1] not in self._live or self._heap[0][0] <= self._virtual + _EPSILON
        ):
            _, job = heapq.heappop(self._heap)
            if job in self._live:
                self._live.discard(job)
                done.append(job)
        return done

    def next_finish(self, now: float) -> float | None:
        """When the next job will be done if nothing else starts (None: idle)."""
        self._advance(now)
        while self._heap and self._heap[0][1] not in self._live:
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        return now + max(0.0, self._heap[0][0] - self._virtual) * len(self._live)


class PrefillEngine:
    """Awaitable prefills on one :class:`SharedCompute`, woken by one loop timer."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._compute = SharedCompute(0.0)
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def active(self) -> int:
        return self._compute.active

    async def run(self, work_s: float) -> None:
        """Return once this prefill has had ``work_s`` seconds of the replica's compute."""
        if work_s <= 0:
            return
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._compute = loop, SharedCompute(loop.time())
        job = self._compute.add(work_s, loop.time())
        done: asyncio.Future[None] = loop.create_future()
        self._waiters[job] = done
        self._reschedule()
        try:
            await done
        finally:
            if self._waiters.pop(job, None) is not None:  # cancelled: its share goes to the rest
                self._compute.cancel(job, loop.time())
                self._reschedule()

    def _wake(self) -> None:
        self._timer = None
        assert self._loop is not None
        for job in self._compute.finished(self._loop.time()):
            waiter = self._waiters.pop(job, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._loop is None:
            return
        due = self._compute.next_finish(self._loop.time())
        if due is not None:
            self._timer = self._loop.call_at(due, self._wake)
