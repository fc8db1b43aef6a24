"""Look answers up before the upstream, store them after: never at the client's cost.

Lookup, within a latency budget (``GATEWAY_CACHE_LOOKUP_BUDGET_MS``): the exact
lookup and the embedding of the text start together; an exact hit returns at
once (the embedding is cancelled); on an exact miss, the vector is searched in
the namespace. Every sidecar call carries a gRPC deadline at the end of the
budget, so a slow sidecar costs at most the budget. Any error, deadline or
skipped sidecar is a miss, counted by outcome; nothing here fails a request.

Store, after the response's last byte: a background task assembles the stored
form, embeds the text if the lookup did not, and sends it to the cache
service. Pending stores are bounded; past the bound new stores are dropped and
counted rather than piling up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.cache.keys import CacheKey
from gateway.clients.cache import CacheClient, HitKind
from gateway.clients.embedder import EmbedderClient
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from llmgw_common.logs import get_logger

log = get_logger("gateway.cache")

HIT_EXACT, HIT_SEMANTIC, MISS, BYPASS = "HIT-EXACT", "HIT-SEMANTIC", "MISS", "BYPASS"
MAX_PENDING_STORES = 256


@dataclass(slots=True)
class Found:
    """What a lookup found: a stored answer, or a miss and what was learned."""

    outcome: str
    stored: bytes = b""
    similarity: float = 0.0
    upstream_s: float = 0.0
    vector: list[float] | None = None
    exact_only: bool = False  # the text was too long for the embedder's window


class CacheLayer:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        cache: CacheClient,
        embedder: EmbedderClient | None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._cache = cache
        self._embedder = embedder if settings.cache_semantic else None
        self._budget_s = settings.cache_lookup_budget_ms / 1000
        self._pending: set[asyncio.Task[None]] = set()

    def _embeddable(self, key: CacheKey) -> bool:
        return (
            self._embedder is not None
            and key.text is not None
            and len(key.text) <= self._settings.cache_max_embed_chars
            and self._embedder.sidecar.available()
        )

    async def lookup(self, key: CacheKey, request_id: str) -> Found:
        if not self._cache.sidecar.available():
            self._metrics.cache_lookups.labels("skipped").inc()
            return Found(MISS)
        started = time.perf_counter()
        try:
            found = await self._lookup(key, request_id, started + self._budget_s)
        except GatewayError:
            found = Found(MISS)
            self._metrics.cache_lookups.labels("error").inc()
        else:
            self._metrics.cache_lookups.labels(_label(found)).inc()
        self._metrics.cache_lookup_seconds.observe(time.perf_counter() - started)
        if found.outcome != MISS:
            self._metrics.cache_time_saved.inc(found.upstream_s)
        return found

    async def _lookup(self, key: CacheKey, request_id: str, deadline: float) -> Found:
        embedding = None
        if self._embeddable(key):
            assert self._embedder is not None and key.text is not None
            embedding = asyncio.ensure_future(
                self._embedder.embed([key.text], deadline_s=self._budget_s, request_id=request_id)
            )
        try:
            exact = await self._cache.lookup(
                key.namespace,
                exact_key=key.exact_key,
                deadline_s=self._budget_s,
                request_id=request_id,
            )
        except BaseException:
            if embedding is not None:
                embedding.cancel()
            raise
        if exact.kind == HitKind.HIT_KIND_EXACT:
            if embedding is not None:
                embedding.cancel()
            return Found(HIT_EXACT, exact.response, 1.0, exact.upstream_seconds)
        if embedding is None:
            return Found(MISS)
        embedded = await embedding
        if embedded.truncated[0]:
            return Found(MISS, exact_only=True)
        vector = embedded.vectors[0]
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return Found(MISS, vector=vector)
        near = await self._cache.lookup(
            key.namespace,
            vector=vector,
            prompt_text=key.text or "",
            deadline_s=remaining,
            request_id=request_id,
        )
        if near.kind == HitKind.HIT_KIND_SEMANTIC:
            return Found(HIT_SEMANTIC, near.response, near.similarity, near.upstream_seconds)
        found = Found(MISS, vector=vector)
        if near.rejected_by_verification:
            self._metrics.cache_lookups.labels("rejected_by_verification").inc()
        return found

    def store_later(
        self,
        key: CacheKey,
        found: Found | None,
        stored: bytes,
        upstream_s: float,
        request_id: str,
    ) -> None:
        if len(self._pending) >= MAX_PENDING_STORES:
            self._metrics.cache_stores.labels("dropped").inc()
            return
        task = asyncio.create_task(self._store(key, found, stored, upstream_s, request_id))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(
        self,
        key: CacheKey,
        found: Found | None,
        stored: bytes,
        upstream_s: float,
        request_id: str,
    ) -> None:
        vector: list[float] = []
        try:
            if found is not None and found.vector is not None:
                vector = found.vector
            elif not (found is not None and found.exact_only) and self._embeddable(key):
                assert self._embedder is not None and key.text is not None
                embedded = await self._embedder.embed(
                    [key.text],
                    deadline_s=self._settings.cache_store_timeout_s,
                    request_id=request_id,
                )
                vector = [] if embedded.truncated[0] else embedded.vectors[0]
            await self._cache.store(
                key.namespace,
                exact_key=key.exact_key,
                prompt_text=key.text or "",
                vector=vector,
                response=stored,
                ttl_s=self._settings.cache_ttl_s,
                upstream_s=upstream_s,
                deadline_s=self._settings.cache_store_timeout_s,
                request_id=request_id,
            )
        except GatewayError as exc:
            self._metrics.cache_stores.labels("error").inc()
            log.warning("cache_store_failed", request_id=request_id, error=exc.message)
        else:
            self._metrics.cache_stores.labels("stored").inc()

    async def drain(self, wait_s: float = 5.0) -> None:
        """Let pending stores finish (at shutdown)."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=wait_s)


def _label(found: Found) -> str:
    return {HIT_EXACT: "exact_hit", HIT_SEMANTIC: "semantic_hit"}.get(found.outcome, "miss")
