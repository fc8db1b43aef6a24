"""Commands issued in one event-loop turn go to Redis as one pipeline.

redis-py sends each command on its own pooled connection, so a hundred
concurrent requests would hold a hundred connections and pay a hundred
round trips. Here every command queued during one turn of the loop leaves in
one pipelined write (``transaction=False``: each command stays atomic on its
own; the batch is not a transaction) on one connection, and each caller gets
its own reply. This is what ioredis calls auto-pipelining.

Scripts run by ``EVALSHA``; a server that does not know one (restarted,
flushed) answers ``NOSCRIPT`` and the batch loads it and runs those commands
again. The whole batch has one deadline: past it every caller gets
``TimeoutError`` and decides without Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Abandoned = Callable[[Any], None]


class _Item:
    __slots__ = ("command", "future", "on_abandoned")

    def __init__(
        self,
        command: tuple[Any, ...],
        future: asyncio.Future[Any] | None,
        on_abandoned: Abandoned | None,
    ) -> None:
        self.command = command
        self.future = future
        self.on_abandoned = on_abandoned


class Batcher:
    def __init__(self, redis: aioredis.Redis, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._queue: list[_Item] = []
        self._scripts: dict[str, str] = {}  # sha1 -> source
        self._tasks: set[asyncio.Task[None]] = set()

    def script(self, source: str) -> str:
        """Register a script; returns the SHA1 to pass to :meth:`evalsha`."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        self._scripts[sha] = source
        return sha

    def evalsha(
        self,
        sha: str,
        keys: tuple[str, ...],
        args: tuple[Any, ...],
        on_abandoned: Abandoned | None = None,
    ) -> asyncio.Future[Any]:
        """The script's reply, from the next batch.

        ``on_abandoned(reply)`` runs if the caller stopped waiting (was
        cancelled) before the reply came: the place to undo what the script did.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Item(("EVALSHA", sha, len(keys), *keys, *args), future, on_abandoned))
        return future

    def send(self, *command: Any) -> None:
        """Fire and forget: the command goes with the next batch; errors are ignored."""
        self._enqueue(_Item(command, None, None))

    async def close(self) -> None:
        """Wait for batches already on their way."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        if len(self._queue) == 1:  # the first of this turn schedules the flush
            task = asyncio.get_running_loop().create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        batch, self._queue = self._queue, []
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._run(batch)
        except asyncio.CancelledError:
            self._fail(batch, ConnectionError("the Redis batch was cancelled"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller, none left waiting
            self._fail(batch, exc)
            return
        for item, reply in zip(batch, replies, strict=True):
            self._answer(item, reply)

    @staticmethod
    def _fail(batch: list[_Item], exc: Exception) -> None:
        for item in batch:
            if item.future is not None and not item.future.done():
                item.future.set_exception(exc)

    def _answer(self, item: _Item, reply: Any) -> None:
        future = item.future
        if future is None:
            return
        if future.cancelled():
            if item.on_abandoned is not None and not isinstance(reply, Exception):
                item.on_abandoned(reply)
        elif isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    async def _run(self, batch: list[_Item]) -> list[Any]:
        replies = await self._pipeline([item.command for item in batch])
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for sha in {batch[i].command[1] for i in missing}:
                await self._redis.script_load(self._scripts[sha])
            again = await self._pipeline([batch[i].command for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
