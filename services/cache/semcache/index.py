"""This replica's vector index: one FAISS index per namespace, driven from the event loop.

Namespaces are hard walls by construction: a lookup searches only its own
namespace's index, so no similarity, however high, can reach another
namespace's vectors. (A single index with a namespace filter was measured and
rejected: with IVF the probed lists are mostly other namespaces' vectors, so a
small namespace loses recall; see the README.)

Threads, so no FAISS call of more than a few microseconds runs on the loop:

- searches run in a small pool (``search_threads``), sharing each namespace's lock;
- every change (adds, removals, expiry sweeps) runs on one writer thread, in the
  order it was submitted, so a removal is never overtaken by an older add;
- rebuilds (compaction, flat -> IVF) run one at a time on a build thread, with
  one OpenMP thread so searches keep their core; a full load (start, resync)
  uses ``load_threads`` (default: every core), since it mostly runs before the
  replica serves.

Each pool thread sets FAISS's OpenMP thread count itself: ``omp_set_num_threads``
only affects the thread that calls it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import faiss
import numpy as np

from llmgw_common.logs import get_logger
from semcache.model import Added, Candidate, Change, Cleared, NamespaceDropped, Removed
from semcache.namespace_index import IndexParams, NamespaceIndex

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class IndexStats:
    namespaces: int = 0
    vectors: dict[str, int] = field(default_factory=dict)  # by kind: "flat", "ivf"
    tombstones: int = 0

    @property
    def size(self) -> int:
        return sum(self.vectors.values())

    @property
    def kind(self) -> str:
        kinds = sorted(k for k, n in self.vectors.items() if n)
        return "+".join(kinds) if kinds else "flat"


class VectorIndex(Protocol):
    """What the cache needs from a vector index (FAISS here; a fake in tests)."""

    async def search(
        self, namespace: str, vector: np.ndarray, k: int, min_similarity: float, now: float
    ) -> list[Candidate]: ...

    async def apply(self, changes: Sequence[Change]) -> None: ...

    async def load(self, batches: AsyncIterator[list[Added]], now: float) -> int: ...

    async def sweep(self, now: float) -> int: ...

    async def maintain(self, now: float) -> None: ...

    def stats(self) -> IndexStats: ...

    def close(self) -> None: ...


RebuildObserver = Callable[[str, float], None]  # (reason, seconds)


def _pool(threads: int, name: str, omp_threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        threads, name, initializer=faiss.omp_set_num_threads, initargs=(omp_threads,)
    )


class FaissIndex:
    """Per-namespace FAISS indexes (see the module docstring)."""

    def __init__(
        self,
        params: IndexParams,
        *,
        search_threads: int = 2,
        faiss_threads: int = 1,
        load_threads: int = 0,
        on_rebuild: RebuildObserver | None = None,
    ) -> None:
        self.params = params
        self._spaces: dict[str, NamespaceIndex] = {}
        self._search_pool = _pool(search_threads, "faiss-search", faiss_threads)
        self._writer = _pool(1, "faiss-write", faiss_threads)
        self._builder = _pool(1, "faiss-build", 1)
        self._load_threads = load_threads or os.cpu_count() or 1
        self._rebuild: asyncio.Task[None] | None = None
        self._on_rebuild = on_rebuild or (lambda reason, seconds: None)

    async def search(
        self, namespace: str, vector: np.ndarray, k: int, min_similarity: float, now: float
    ) -> list[Candidate]:
        space = self._spaces.get(namespace)
        if space is None:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._search_pool, space.search, vector, k, min_similarity, now
        )

    async def apply(self, changes: Sequence[Change]) -> None:
        if changes:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._apply, list(changes))

    def _apply(self, changes: list[Change]) -> None:
        """Consecutive changes of one kind and namespace go to FAISS as one batch."""

        def run_key(change: Change) -> tuple[type, str]:
            return type(change), getattr(change, "namespace", "")

        for (kind, namespace), run in itertools.groupby(changes, key=run_key):
            if kind is Added:
                added = self._well_formed(list(run))  # type: ignore[arg-type]
                space = self._spaces.get(namespace)
                if space is None and added:
                    space = self._spaces[namespace] = NamespaceIndex(self.params)
                if space is not None:
                    space.add(added)
            elif kind is Removed:
                space = self._spaces.get(namespace)
                if space is not None:
                    space.remove([c.entry_id for c in run])  # type: ignore[union-attr]
            elif kind is NamespaceDropped:
                self._spaces.pop(namespace, None)
            elif kind is Cleared:
                self._spaces = {}

    def _well_formed(self, entries: Iterable[Added]) -> list[Added]:
        """Vectors of this index's dimension; others (a replica set up with another
        CACHE_DIM wrote them) are logged and left out rather than break the batch."""
        size = 4 * self.params.dim
        good = [e for e in entries if len(e.vector) == size]
        if isinstance(entries, list) and len(good) != len(entries):
            log.warning("vectors_skipped", count=len(entries) - len(good), expected_bytes=size)
        return good

    async def load(self, batches: AsyncIterator[list[Added]], now: float) -> int:
        """Replace the whole index with these entries (start, or a resync)."""
        started = time.monotonic()
        columns: dict[str, tuple[list[str], list[np.ndarray], list[np.ndarray]]] = {}
        seen: set[str] = set()  # a scan may return an entry twice (ZSCAN during a rehash)
        async for batch in batches:
            live = []
            for e in self._well_formed(batch):
                if e.expires_at > now and e.entry_id not in seen:
                    seen.add(e.entry_id)
                    live.append(e)
            for namespace, group in itertools.groupby(
                sorted(live, key=lambda e: e.namespace), key=lambda e: e.namespace
            ):
                entries = list(group)
                ids, vectors, expires = columns.setdefault(namespace, ([], [], []))
                ids.extend(e.entry_id for e in entries)
                vectors.append(np.frombuffer(b"".join(e.vector for e in entries), dtype=np.float32))
                expires.append(np.fromiter((e.expires_at for e in entries), np.float64))
        scanned = time.monotonic()
        loop = asyncio.get_running_loop()
        spaces = await loop.run_in_executor(self._builder, self._build_all, columns)
        total = sum(space.stats().vectors for space in spaces.values())
        self._spaces = spaces
        seconds = time.monotonic() - started
        self._on_rebuild("load", seconds)
        log.info(
            "index_loaded",
            vectors=total,
            namespaces=len(spaces),
            seconds=round(seconds, 3),
            scan_seconds=round(scanned - started, 3),
        )
        return total

    def _build_all(
        self, columns: dict[str, tuple[list[str], list[np.ndarray], list[np.ndarray]]]
    ) -> dict[str, NamespaceIndex]:
        faiss.omp_set_num_threads(self._load_threads)  # this thread only; reset below
        try:
            return self._build_each(columns)
        finally:
            faiss.omp_set_num_threads(1)

    def _build_each(
        self, columns: dict[str, tuple[list[str], list[np.ndarray], list[np.ndarray]]]
    ) -> dict[str, NamespaceIndex]:
        spaces: dict[str, NamespaceIndex] = {}
        while columns:
            namespace, (ids, chunks, expires) = columns.popitem()
            vectors = np.concatenate(chunks).reshape(len(ids), self.params.dim)
            chunks.clear()
            spaces[namespace] = NamespaceIndex.from_arrays(
                self.params, ids, vectors, np.concatenate(expires)
            )
        return spaces

    async def sweep(self, now: float) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._sweep, now)

    def _sweep(self, now: float) -> int:
        expired = 0
        for namespace, space in list(self._spaces.items()):
            expired += space.sweep(now)
            stats = space.stats()
            if not stats.vectors and space.rebuild_reason() is None:
                self._spaces.pop(namespace, None)
        return expired

    async def maintain(self, now: float) -> None:
        """Start one rebuild if a namespace needs one and none is running."""
        if self._rebuild is not None and not self._rebuild.done():
            return
        for space in list(self._spaces.values()):
            reason = space.rebuild_reason()
            if reason is not None:
                self._rebuild = asyncio.create_task(self._rebuild_one(space, reason, now))
                return

    async def _rebuild_one(self, space: NamespaceIndex, reason: str, now: float) -> None:
        before = space.stats()
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._builder, space.rebuild, now)
        except (RuntimeError, MemoryError) as exc:  # faiss raises RuntimeError
            log.error("index_rebuild_failed", namespace_vectors=before.vectors, error=str(exc))
            return
        seconds = time.monotonic() - started
        after = space.stats()
        self._on_rebuild(reason, seconds)
        log.info(
            "index_rebuilt",
            reason=reason,
            seconds=round(seconds, 3),
            kind_before=before.kind,
            kind=after.kind,
            vectors=after.vectors,
            tombstones_dropped=before.tombstones,
        )

    async def wait_rebuilt(self) -> None:
        """Wait for the running rebuild, if any (tests, shutdown)."""
        if self._rebuild is not None:
            await asyncio.shield(self._rebuild)

    def stats(self) -> IndexStats:
        vectors: dict[str, int] = {"flat": 0, "ivf": 0}
        tombstones = 0
        spaces = list(self._spaces.values())
        for space in spaces:
            s = space.stats()
            vectors[s.kind] += s.vectors
            tombstones += s.tombstones
        return IndexStats(len(spaces), vectors, tombstones)

    def close(self) -> None:
        if self._rebuild is not None:
            self._rebuild.cancel()
        for pool in (self._search_pool, self._writer, self._builder):
            pool.shutdown(wait=False, cancel_futures=True)
