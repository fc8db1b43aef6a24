"""The Redis store: every entry lives in Redis with its TTL; replicas follow a stream.

Writes are Lua scripts (``redis_scripts``), one atomic round trip each, that also
append to the change stream (``XADD MAXLEN ~``). A replica follows the stream
with ``XREAD BLOCK`` from the last id it applied, on its own connection.

Before every read of the stream the follower checks that the stream still
covers what it has not applied: the epoch key must be unchanged (a Redis that
restarted without persistence has lost everything, so the index must be
rebuilt) and ``entries-added - read <= length`` (else trimming took changes it
never saw). Either failure is ``ResyncNeeded``: rescan Redis.

The stream is trimmed by count in every write (``MAXLEN ~``) and by age, every
few seconds after a write (``XTRIM MINID ~``, ``stream_max_age_s`` by Redis's
own clock), so a quiet fleet's stream does not keep ``MAXLEN`` changes
forever; a replica further behind than that resyncs, as it does past
``MAXLEN``.

Sockets have short timeouts and connection errors are retried once at most, so
a Redis that is down gives ``StoreUnavailable`` (UNAVAILABLE) at once; callers
fail open.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from llmgw_common.logs import get_logger
from semcache import redis_scripts
from semcache.errors import CacheError, ResyncNeeded, StoreUnavailable
from semcache.model import (
    Added,
    Change,
    Cleared,
    Entry,
    NamespaceDropped,
    PutResult,
    Removed,
    key_digest,
)
from semcache.store import ChangeBatch, Checkpoint

log = get_logger(__name__)

_FIELDS = ("ns", "key", "prompt", "resp", "created", "exp", "up")
_SCAN_COUNT = 1000
_SCAN_ATTEMPTS = 3  # per batch: a slow reply is retried at the same cursor
_DROP_BATCH = 1000
_READ_COUNT = 1000
_TRIM_EVERY_S = 5.0  # how often a writer trims the change stream by age

ErrorObserver = Callable[[str], None]  # called with the operation's name


def _client(url: str, socket_timeout: float, connect_timeout: float) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        # One immediate retry on a broken connection (a restarted Redis); none on timeouts.
        retry=Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: str, fields: Sequence[Any]) -> Entry:
    ns, key, prompt, resp, created, expires, upstream = fields
    return Entry(
        entry_id=entry_id,
        namespace=_text(ns),
        exact_key=_text(key),
        prompt_text=_text(prompt),
        vector=b"",
        response=bytes(resp),
        created_at=float(created),
        expires_at=float(expires),
        upstream_seconds=float(upstream),
    )


def _change(fields: dict[bytes, bytes]) -> Change | None:
    """The change a stream message describes; None (logged) if it is not one."""
    try:
        return _parse_change(fields)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        log.warning("stream_message_skipped", error=repr(exc), op=repr(fields.get(b"op")))
        return None


def _parse_change(fields: dict[bytes, bytes]) -> Change | None:
    op = fields.get(b"op")
    if op == b"add":
        return Added(
            _text(fields[b"id"]), _text(fields[b"ns"]), fields[b"vec"], float(fields[b"exp"])
        )
    if op == b"del":
        return Removed(_text(fields[b"id"]), _text(fields[b"ns"]))
    if op == b"dropns":
        return NamespaceDropped(_text(fields[b"ns"]))
    if op == b"clear":
        return Cleared()
    return None


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "{llmgw-cache}:",
        max_entries: int = 1_000_000,
        stream_maxlen: int = 50_000,
        stream_max_age_s: float = 600.0,
        block_ms: int = 1000,
        socket_timeout_s: float = 0.5,
        connect_timeout_s: float = 0.25,
        scan_timeout_s: float = 30.0,
        on_error: ErrorObserver | None = None,
    ) -> None:
        self._prefix = prefix
        self._max_entries = max_entries
        self._maxlen = stream_maxlen
        self._max_age_s = stream_max_age_s  # 0: by count only
        self._trim_at = 0.0
        self._block_ms = block_ms
        self._redis = _client(url, socket_timeout_s, connect_timeout_s)
        self._follow = _client(url, block_ms / 1000 + socket_timeout_s, connect_timeout_s)
        # Scans move megabytes per call: a slow reply is not an unavailable Redis.
        self._bulk = _client(url, scan_timeout_s, connect_timeout_s)
        self._on_error = on_error or (lambda op: None)
        self._lru, self._exp = prefix + "lru", prefix + "exp"
        self._stream, self._epoch_key = prefix + "stream", prefix + "epoch"
        scripts = {
            name: self._redis.register_script(getattr(redis_scripts, name))
            for name in ("PUT", "GET_EXACT", "REMOVE", "REMOVE_EXACT")
        }
        scripts["DROP_NAMESPACE_BATCH"] = self._redis.register_script(
            redis_scripts.DROP_NAMESPACE_BATCH
        )
        scripts["CLEAR_BATCH"] = self._redis.register_script(redis_scripts.CLEAR_BATCH)
        self._scripts = scripts

    @contextmanager
    def _translate(self, op: str) -> Iterator[None]:
        """redis-py errors become the service's, once, here."""
        try:
            yield
        except (rexc.ConnectionError, rexc.TimeoutError) as exc:
            self._on_error(op)
            raise StoreUnavailable(f"redis unavailable ({op}): {exc}") from exc
        except rexc.RedisError as exc:
            self._on_error(op)
            raise CacheError(f"redis error ({op}): {exc}") from exc

    def _keys(self) -> list[str]:
        return [self._lru, self._exp, self._stream]

    def _args(self, *args: Any) -> list[Any]:
        return [self._prefix, self._maxlen, *args]

    def _exact_key(self, namespace: str, exact_key: str) -> str:
        return f"{self._prefix}x:{key_digest(namespace, exact_key)}"

    def _namespace_key(self, namespace: str) -> str:
        return f"{self._prefix}n:{key_digest(namespace)}"

    async def open(self) -> None:
        """Nothing to do: connections are made on first use, and remade after errors."""

    async def close(self) -> None:
        for client in (self._redis, self._follow, self._bulk):
            await client.aclose()

    def _put_args(self, entry: Entry, now: float) -> list[Any]:
        ttl_ms = max(1, round((entry.expires_at - entry.created_at) * 1000))
        xk = self._exact_key(entry.namespace, entry.exact_key) if entry.exact_key else ""
        return self._args(
            entry.entry_id, entry.namespace, entry.exact_key, entry.prompt_text, entry.vector,
            entry.response, repr(entry.created_at), repr(entry.expires_at),
            repr(entry.upstream_seconds), ttl_ms, repr(now), self._max_entries, xk,
            self._namespace_key(entry.namespace),
        )  # fmt: skip

    @staticmethod
    def _put_result(entry: Entry, reply: list[bytes]) -> PutResult:
        removed = [Removed(_text(reply[0]), entry.namespace)] if reply[0] else []
        evicted = [
            Removed(_text(reply[i]), _text(reply[i + 1])) for i in range(1, len(reply) - 1, 2)
        ]
        return PutResult(removed + evicted, len(evicted))

    async def put(self, entry: Entry) -> PutResult:
        with self._translate("put"):
            reply = await self._scripts["PUT"](
                keys=self._keys(), args=self._put_args(entry, time.time())
            )
        await self._trim_by_age()
        return self._put_result(entry, reply)

    async def _trim_by_age(self) -> None:
        """Drop the changes older than ``stream_max_age_s`` (Redis's clock), at most
        every few seconds; a failure here fails nothing (the write is done)."""
        now = time.monotonic()
        if self._max_age_s <= 0 or now < self._trim_at:
            return
        self._trim_at = now + _TRIM_EVERY_S
        try:
            seconds, micros = await self._redis.time()
            oldest_ms = int(seconds * 1000 + micros // 1000 - self._max_age_s * 1000)
            await self._redis.xtrim(self._stream, minid=f"{oldest_ms}-0", approximate=True)
        except rexc.RedisError:
            self._on_error("trim")

    async def put_many(self, entries: Sequence[Entry]) -> list[PutResult]:
        """Bulk load (benchmarks, migrations): one pipelined round trip."""
        now = time.time()
        with self._translate("put"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry in entries:
                    await self._scripts["PUT"](
                        keys=self._keys(), args=self._put_args(entry, now), client=pipe
                    )
                replies = await pipe.execute()
        return [self._put_result(e, r) for e, r in zip(entries, replies, strict=True)]

    async def get_exact(self, namespace: str, exact_key: str, now: float) -> Entry | None:
        with self._translate("get_exact"):
            reply = await self._scripts["GET_EXACT"](
                keys=[self._lru],
                args=[self._exact_key(namespace, exact_key), self._prefix, repr(now)],
            )
        if not reply:
            return None
        return _entry(_text(reply[0]), reply[1:])

    async def get_many(self, entry_ids: Sequence[str]) -> list[Entry | None]:
        with self._translate("get_many"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry_id in entry_ids:
                    pipe.hmget(f"{self._prefix}e:{entry_id}", _FIELDS)
                replies = await pipe.execute()
        return [
            _entry(i, fields) if fields[0] is not None else None
            for i, fields in zip(entry_ids, replies, strict=True)
        ]

    async def touch(self, entry_ids: Sequence[str], now: float) -> None:
        if entry_ids:
            with self._translate("touch"):
                await self._redis.zadd(self._lru, dict.fromkeys(entry_ids, now), xx=True)

    async def remove(self, entry_id: str) -> list[Removed]:
        with self._translate("remove"):
            reply = await self._scripts["REMOVE"](keys=self._keys(), args=self._args(entry_id))
        return [Removed(_text(reply[0]), _text(reply[1]))] if reply else []

    async def remove_exact(self, namespace: str, exact_key: str) -> list[Removed]:
        with self._translate("remove"):
            reply = await self._scripts["REMOVE_EXACT"](
                keys=self._keys(), args=self._args(self._exact_key(namespace, exact_key))
            )
        return [Removed(_text(reply[0]), _text(reply[1]))] if reply else []

    async def drop_namespace(self, namespace: str) -> int:
        """Removes in batches (no long Lua call), then announces ``dropns``."""
        removed, done = 0, 0
        args = self._args(self._namespace_key(namespace), namespace, _DROP_BATCH)
        with self._translate("drop_namespace"):
            while not done:
                count, done = await self._scripts["DROP_NAMESPACE_BATCH"](
                    keys=self._keys(), args=args
                )
                removed += int(count)
        return removed

    async def clear(self) -> int:
        removed, done = 0, 0
        with self._translate("clear"):
            while not done:
                count, done = await self._scripts["CLEAR_BATCH"](
                    keys=self._keys(), args=self._args(_DROP_BATCH)
                )
                removed += int(count)
            # Left over: namespace sets, and pointers whose entry expired first.
            for pattern in ("n:*", "x:*"):
                keys = [k async for k in self._bulk.scan_iter(self._prefix + pattern, count=1000)]
                for start in range(0, len(keys), _DROP_BATCH):
                    await self._redis.unlink(*keys[start : start + _DROP_BATCH])
            await self._redis.xadd(
                self._stream, {"op": "clear"}, maxlen=self._maxlen, approximate=True
            )
        return removed

    async def count(self, now: float) -> int:
        with self._translate("count"):
            return int(await self._redis.zcount(self._exp, f"({now!r}", "+inf"))

    async def _epoch(self) -> str:
        """This data set's epoch; a fresh Redis gets a new one."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._epoch_key, secrets.token_hex(8), nx=True)
            pipe.get(self._epoch_key)
            _, epoch = await pipe.execute()
        return _text(epoch)

    async def _stream_info(self) -> tuple[str, int, int]:
        """(last id, entries ever added, length); an absent stream is empty."""
        try:
            info = await self._redis.xinfo_stream(self._stream)
        except rexc.ResponseError:
            return "0-0", 0, 0
        return _text(info["last-generated-id"]), int(info["entries-added"]), int(info["length"])

    async def checkpoint(self) -> Checkpoint:
        with self._translate("checkpoint"):
            epoch = await self._epoch()
            last_id, added, _ = await self._stream_info()
        return Checkpoint(epoch, last_id, added)

    async def scan(self, now: float) -> AsyncIterator[list[Added]]:
        cursor: bytes | str = "0"
        script = self._bulk.register_script(redis_scripts.SCAN)
        while True:
            reply = await self._scan_batch(script, cursor, now)
            cursor, items = reply[0], reply[1:]
            batch = [
                Added(_text(items[i]), _text(items[i + 1]), items[i + 2], float(items[i + 3]))
                for i in range(0, len(items), 4)
            ]
            if batch:
                yield batch
            if cursor in (b"0", "0"):
                return

    async def _scan_batch(self, script: Any, cursor: bytes | str, now: float) -> Any:
        args = [cursor, _SCAN_COUNT, self._prefix, repr(now)]
        for attempt in range(1, _SCAN_ATTEMPTS + 1):
            try:
                with self._translate("scan"):
                    return await script(keys=[self._exp], args=args)
            except StoreUnavailable:
                if attempt == _SCAN_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    async def read_changes(self, checkpoint: Checkpoint) -> ChangeBatch:
        with self._translate("read_changes"):
            epoch = await self._redis.get(self._epoch_key)
            _, added, length = await self._stream_info()
            if epoch is None or _text(epoch) != checkpoint.epoch:
                raise ResyncNeeded("the store was wiped (new epoch)")
            if added < checkpoint.read:
                raise ResyncNeeded("the change stream was recreated")
            if added - checkpoint.read > length:
                raise ResyncNeeded("the change stream was trimmed past this replica")
            reply = await self._follow.xread(
                {self._stream: checkpoint.stream_id}, count=_READ_COUNT, block=self._block_ms
            )
        return self._batch(checkpoint, reply)

    def _batch(self, checkpoint: Checkpoint, reply: Any) -> ChangeBatch:
        messages = reply[0][1] if reply else []  # [[stream, [(id, fields), ...]]] (RESP2)
        if not messages:
            return ChangeBatch([], checkpoint, 0.0)
        changes = [c for _, fields in messages if (c := _change(fields)) is not None]
        last_id = _text(messages[-1][0])
        lag = max(0.0, time.time() - int(last_id.split("-")[0]) / 1000)
        cp = Checkpoint(checkpoint.epoch, last_id, checkpoint.read + len(messages))
        return ChangeBatch(changes, cp, lag)
