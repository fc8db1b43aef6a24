"""Which endpoint answered a response id, for the requests that refer to it.

vLLM keeps a stored response (``/v1/responses`` with ``store``) in the memory
of the replica that made it, so ``previous_response_id`` and the
``/v1/responses/{id}`` routes must reach that replica. The gateway remembers
``id -> (endpoint, model)`` when a replica answers with a response:

* in this process, a bounded LRU (65,536 ids by default, 14 MB when full:
  219 bytes a pin, measured; an id it forgot is routed as any request,
  which is what happens without pinning, or found again in Redis);
* in Redis when ``GATEWAY_REDIS_URL`` is set, so that every gateway replica
  and every worker process finds it: ``{prefix}:pin:{id}`` holds
  ``endpoint \\t model`` for ``TTL_S``. It is written before the client
  can refer to the id: a whole answer is sent once the write is done (or
  timed out); a stream is pinned at its ``response.created`` event, in the
  background (its answer takes longer than the write). A lookup that misses
  locally asks Redis, under the same back-off as the limits; a Redis that is
  away just means "not known".

Without Redis, several gateway replicas (or ``GATEWAY_WORKERS`` > 1) need the
client to come back to the same process for stored responses.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.tenancy.backoff import Backoff
from gateway.tenancy.guard import Guard

# How long a pin is kept in Redis. vLLM keeps stored responses in memory until
# it restarts; a day covers an agent's conversation and bounds Redis's memory
# (about 120 bytes per response).
TTL_S = 86_400


class Pins:
    def __init__(
        self,
        size: int = 65_536,
        redis: aioredis.Redis | None = None,
        *,
        prefix: str = "llmgw",
        timeout_s: float = 0.05,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._where: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._redis = redis
        self._prefix = prefix
        self._guard = Guard("response_pins", Backoff(backoff_s, backoff_max_s), clock, timeout_s)
        self._writes: set[asyncio.Task[None]] = set()

    def key(self, answer_id: str) -> str:
        return f"{self._prefix}:pin:{answer_id}"

    async def pin(self, answer_id: str, endpoint: str, model: str) -> None:
        """Remember where ``answer_id`` is stored, and tell Redis before returning (bounded
        by the timeout): the client may ask another gateway about it at once."""
        if self._learn(answer_id, (endpoint, model)):
            await self._write(answer_id, f"{endpoint}\t{model}")

    def add(self, answer_id: str, endpoint: str, model: str) -> None:
        """Remember where ``answer_id`` is stored (and tell Redis, in the background)."""
        if self._learn(answer_id, (endpoint, model)):
            task = asyncio.get_running_loop().create_task(
                self._write(answer_id, f"{endpoint}\t{model}")
            )
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def get(self, answer_id: str) -> tuple[str, str] | None:
        """``(endpoint, model)`` of a response id, or None when not known."""
        found = self._where.get(answer_id)
        if found is not None:
            self._where.move_to_end(answer_id)
            return found
        if self._redis is None or not self._guard.ready():
            return None
        redis = self._redis
        reply = await self._guard.call(lambda: _one(redis.get(self.key(answer_id))))
        value = reply[0] if reply is not None else None
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        endpoint, _, model = text.partition("\t")
        if not endpoint or not model:
            return None
        self._remember(answer_id, (endpoint, model))
        return endpoint, model

    async def close(self) -> None:
        """Let the writes under way finish (at shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._where)

    def _learn(self, answer_id: str, where: tuple[str, str]) -> bool:
        """Remember a pin; True when it is new and Redis should be told now."""
        if self._where.get(answer_id) == where:
            return False
        self._remember(answer_id, where)
        return self._redis is not None and self._guard.ready()

    def _remember(self, answer_id: str, where: tuple[str, str]) -> None:
        self._where[answer_id] = where
        self._where.move_to_end(answer_id)
        if len(self._where) > self._size:
            self._where.popitem(last=False)

    async def _write(self, answer_id: str, value: str) -> None:
        assert self._redis is not None
        redis = self._redis
        await self._guard.call(lambda: redis.set(self.key(answer_id), value, ex=TTL_S))


async def _one(reply: Awaitable[Any]) -> tuple[Any]:
    """A command's reply in a tuple, so that a missing key (None) is not taken for a failure."""
    return (await reply,)
