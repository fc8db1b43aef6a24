"""Keeps this replica's index in step with the store.

Start: take the change feed's position, scan the store, build the index, say
ready (health SERVING). Then apply the feed's changes as they come. When the
feed no longer covers what was missed (``ResyncNeeded``: Redis was wiped, or the
stream was trimmed past this replica), rescan while the old index keeps
serving; when the store is unreachable, retry with backoff and carry on from the
same position once it answers. The follower never gives up and never crashes
the service.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from llmgw_common.logs import get_logger
from semcache.cache import ReplicaState
from semcache.errors import CacheError, ResyncNeeded
from semcache.index import VectorIndex
from semcache.metrics import CacheMetrics
from semcache.store import Checkpoint, EntryStore

log = get_logger(__name__)


class Follower:
    def __init__(
        self,
        *,
        store: EntryStore,
        index: VectorIndex,
        state: ReplicaState,
        metrics: CacheMetrics,
        on_ready: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        max_backoff_s: float = 2.0,
    ) -> None:
        self._store = store
        self._index = index
        self._state = state
        self._metrics = metrics
        self._on_ready = on_ready
        self._clock = clock
        self._max_backoff_s = max_backoff_s

    async def run(self) -> None:
        checkpoint: Checkpoint | None = None
        backoff = 0.05
        while True:
            try:
                if checkpoint is None:
                    checkpoint = await self._sync()
                batch = await self._store.read_changes(checkpoint)
                await self._index.apply(batch.changes)
                checkpoint = batch.checkpoint
                self._state.lag_seconds = batch.lag_seconds
                self._metrics.stream_lag.set(batch.lag_seconds)
                backoff = 0.05
            except ResyncNeeded as exc:
                log.warning("resync_needed", reason=str(exc))
                self._metrics.resyncs.inc()
                checkpoint = None
            except CacheError as exc:  # StoreUnavailable mostly: wait, then retry
                log.warning("follower_store_error", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, self._max_backoff_s)

    async def _sync(self) -> Checkpoint:
        """Rebuild the index from a full scan; changes after ``checkpoint`` replay next."""
        started = time.monotonic()
        checkpoint = await self._store.checkpoint()
        now = self._clock()
        vectors = await self._index.load(self._store.scan(now), now)
        log.info(
            "index_synced",
            vectors=vectors,
            seconds=round(time.monotonic() - started, 3),
            stream_id=checkpoint.stream_id,
        )
        if not self._state.ready:
            self._state.ready = True
            await self._on_ready()
        return checkpoint
