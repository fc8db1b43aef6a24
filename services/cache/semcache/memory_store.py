"""The embedded store: the same behaviour as the Redis store, inside the process.

Used when ``CACHE_REDIS_URL`` is empty, so the service runs on a laptop with no
servers: TTLs (checked on read, swept on write), exact-key replacement,
least-recently-used eviction past ``max_entries``, and an optional SQLite
snapshot written on shutdown and loaded at start. There is only one replica,
so the change feed is always empty.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from llmgw_common.logs import get_logger
from semcache import snapshot
from semcache.model import Added, Entry, PutResult, Removed
from semcache.store import ChangeBatch, Checkpoint

log = get_logger(__name__)

_SCAN_BATCH = 4096


class MemoryStore:
    kind = "memory"

    def __init__(
        self,
        *,
        max_entries: int,
        snapshot_path: str = "",
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._max_entries = max_entries
        self._snapshot = Path(snapshot_path) if snapshot_path else None
        self._poll_s = poll_s
        self._clock = clock
        self._entries: dict[str, Entry] = {}
        self._exact: dict[tuple[str, str], str] = {}
        self._by_namespace: dict[str, set[str]] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._expiry: list[tuple[float, str]] = []  # heap; stale items skipped

    async def open(self) -> None:
        if self._snapshot is not None:
            entries = await asyncio.to_thread(snapshot.load, self._snapshot, self._clock())
            for entry in entries:
                self._insert(entry)
            self._evict()
            log.info("snapshot_loaded", path=str(self._snapshot), entries=len(self._entries))

    async def close(self) -> None:
        if self._snapshot is not None:
            self._expire(self._clock())
            ordered = [self._entries[i] for i in self._lru]
            count = await asyncio.to_thread(snapshot.save, self._snapshot, ordered)
            log.info("snapshot_saved", path=str(self._snapshot), entries=count)

    async def put(self, entry: Entry) -> PutResult:
        self._expire(self._clock())
        removed: list[Removed] = []
        old = self._exact.get((entry.namespace, entry.exact_key)) if entry.exact_key else None
        if old is not None:
            removed.extend(self._drop(old))
        self._insert(entry)
        evicted = self._evict()
        return PutResult(removed + evicted, len(evicted))

    def _insert(self, entry: Entry) -> None:
        self._entries[entry.entry_id] = entry
        if entry.exact_key:
            self._exact[(entry.namespace, entry.exact_key)] = entry.entry_id
        self._by_namespace.setdefault(entry.namespace, set()).add(entry.entry_id)
        self._lru[entry.entry_id] = None
        heapq.heappush(self._expiry, (entry.expires_at, entry.entry_id))

    def _evict(self) -> list[Removed]:
        evicted: list[Removed] = []
        while len(self._entries) > self._max_entries:
            evicted.extend(self._drop(next(iter(self._lru))))
        return evicted

    def _drop(self, entry_id: str) -> list[Removed]:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return []
        if self._exact.get((entry.namespace, entry.exact_key)) == entry_id:
            del self._exact[(entry.namespace, entry.exact_key)]
        members = self._by_namespace.get(entry.namespace)
        if members is not None:
            members.discard(entry_id)
            if not members:
                del self._by_namespace[entry.namespace]
        self._lru.pop(entry_id, None)
        return [Removed(entry_id, entry.namespace)]

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, entry_id = heapq.heappop(self._expiry)
            entry = self._entries.get(entry_id)
            if entry is not None and entry.expires_at == expires_at:
                self._drop(entry_id)

    def _live(self, entry_id: str, now: float) -> Entry | None:
        entry = self._entries.get(entry_id)
        if entry is None or entry.expires_at <= now:
            return None
        return entry

    async def get_exact(self, namespace: str, exact_key: str, now: float) -> Entry | None:
        entry_id = self._exact.get((namespace, exact_key))
        entry = self._live(entry_id, now) if entry_id is not None else None
        if entry is not None:
            self._lru.move_to_end(entry.entry_id)
        return entry

    async def get_many(self, entry_ids: Sequence[str]) -> list[Entry | None]:
        now = self._clock()
        found = (self._live(i, now) for i in entry_ids)
        return [replace(e, vector=b"") if e is not None else None for e in found]

    async def touch(self, entry_ids: Sequence[str], now: float) -> None:
        for entry_id in entry_ids:
            if entry_id in self._lru:
                self._lru.move_to_end(entry_id)

    async def remove(self, entry_id: str) -> list[Removed]:
        return self._drop(entry_id)

    async def remove_exact(self, namespace: str, exact_key: str) -> list[Removed]:
        entry_id = self._exact.get((namespace, exact_key))
        return self._drop(entry_id) if entry_id is not None else []

    async def drop_namespace(self, namespace: str) -> int:
        now = self._clock()
        members = list(self._by_namespace.get(namespace, ()))
        live = sum(1 for i in members if self._live(i, now) is not None)
        for entry_id in members:
            self._drop(entry_id)
        return live

    async def clear(self) -> int:
        live = await self.count(self._clock())
        self._entries.clear()
        self._exact.clear()
        self._by_namespace.clear()
        self._lru.clear()
        self._expiry.clear()
        return live

    async def count(self, now: float) -> int:
        self._expire(now)
        return len(self._entries)

    async def checkpoint(self) -> Checkpoint:
        return Checkpoint()

    async def scan(self, now: float) -> AsyncIterator[list[Added]]:
        batch: list[Added] = []
        for entry in list(self._entries.values()):
            if entry.vector and entry.expires_at > now:
                batch.append(Added(entry.entry_id, entry.namespace, entry.vector, entry.expires_at))
                if len(batch) >= _SCAN_BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch

    async def read_changes(self, checkpoint: Checkpoint) -> ChangeBatch:
        await asyncio.sleep(self._poll_s)  # one replica: nobody else writes
        return ChangeBatch([], checkpoint, 0.0)
