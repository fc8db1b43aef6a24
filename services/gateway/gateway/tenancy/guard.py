"""One component's use of Redis: back-off, one probe at a time, an outage logged once.

Every part that shares state through Redis (keys, rate and stream limits,
token budgets, response pins) calls it the same way: ask :meth:`Guard.ready`
(false while Redis is backed off and another caller probes), then
:meth:`Guard.call` the command. A Redis error is counted, starts an outage
(logged once as ``{name}_redis_unavailable``) and comes back as ``None``, so
the caller uses its fallback; the success that ends an outage is logged as
``{name}_redis_recovered``. A probe cancelled before it said anything lets
another caller probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from gateway.tenancy.backoff import Backoff
from llmgw_common.logs import get_logger

log = get_logger("gateway.tenancy")

REDIS_ERRORS = (RedisError, OSError, TimeoutError)

T = TypeVar("T")


class Guard:
    __slots__ = ("_clock", "_name", "_timeout_s", "backoff", "errors")

    def __init__(
        self,
        name: str,
        backoff: Backoff,
        clock: Callable[[], float],
        timeout_s: float | None = None,
    ) -> None:
        self._name = name
        self._clock = clock
        self._timeout_s = timeout_s  # None: the client's own socket timeout bounds the call
        self.backoff = backoff
        self.errors = 0  # Redis errors seen

    @property
    def healthy(self) -> bool:
        return self.backoff.healthy

    def ready(self) -> bool:
        """Whether the caller may use Redis now (healthy, or it is the probe)."""
        return self.backoff.try_acquire(self._clock())

    async def call(self, command: Callable[[], Awaitable[T]]) -> T | None:
        """``command()``'s result, or None when Redis failed it (call only when ready).

        A command whose result may itself be None wraps it (in a tuple, say).
        """
        probe = not self.backoff.healthy
        try:
            if self._timeout_s is None:
                result = await command()
            else:
                async with asyncio.timeout(self._timeout_s):
                    result = await command()
        except asyncio.CancelledError:
            if probe:
                self.backoff.abandoned()
            raise
        except REDIS_ERRORS as exc:
            self.errors += 1
            if self.backoff.failed(self._clock()):
                log.warning(
                    f"{self._name}_redis_unavailable", error=type(exc).__name__, detail=str(exc)
                )
            return None
        if self.backoff.succeeded():
            log.info(f"{self._name}_redis_recovered")
        return result
