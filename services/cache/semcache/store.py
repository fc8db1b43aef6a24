"""Where entries live: the protocol both stores (Redis, embedded) implement.

The store is the source of truth. It keeps every entry with its TTL, the exact-key
pointers, least-recently-used order and the maximum entry count; it can list
every live entry with a vector (``scan``, to build an index from nothing) and
tell a replica what changed since a point (``read_changes``, the change feed
other replicas write into). The vector index is only ever derived from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from semcache.model import Added, Change, Entry, PutResult, Removed


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A position in the change feed: what this replica has applied."""

    epoch: str = ""  # changes when the store is wiped (a Redis restart without persistence)
    stream_id: str = "0-0"  # last change read
    read: int = 0  # the feed's count of changes ever written, up to stream_id


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    changes: list[Change]
    checkpoint: Checkpoint
    lag_seconds: float  # age of the newest change in the batch when it was read


class EntryStore(Protocol):
    kind: str  # "redis" | "memory"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def put(self, entry: Entry) -> PutResult:
        """Store ``entry``, replacing the entry with the same exact key; evict if full."""
        ...

    async def get_exact(self, namespace: str, exact_key: str, now: float) -> Entry | None:
        """The live entry stored under this exact key, marked as just used."""
        ...

    async def get_many(self, entry_ids: Sequence[str]) -> list[Entry | None]:
        """Live entries by id (without their vectors); None where gone or expired."""
        ...

    async def touch(self, entry_ids: Sequence[str], now: float) -> None: ...

    async def remove(self, entry_id: str) -> list[Removed]: ...

    async def remove_exact(self, namespace: str, exact_key: str) -> list[Removed]: ...

    async def drop_namespace(self, namespace: str) -> int: ...

    async def clear(self) -> int: ...

    async def count(self, now: float) -> int: ...

    async def checkpoint(self) -> Checkpoint:
        """The current end of the change feed (taken before a ``scan``)."""
        ...

    def scan(self, now: float) -> AsyncIterator[list[Added]]:
        """Every live entry that has a vector, in batches."""
        ...

    async def read_changes(self, checkpoint: Checkpoint) -> ChangeBatch:
        """Changes after ``checkpoint``, waiting a little for some.

        Raises ``ResyncNeeded`` when the feed no longer covers everything after
        ``checkpoint`` (trimmed, or the store was wiped), and ``StoreUnavailable``.
        """
        ...
