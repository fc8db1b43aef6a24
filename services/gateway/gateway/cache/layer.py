"""Look answers up alongside the upstream, store them after: never at the client's cost.

A lookup runs in three stages, every sidecar call with a gRPC deadline at the
end of one budget (``GATEWAY_CACHE_LOOKUP_BUDGET_MS``):

1. **exact**: the canonical key, in the cache service. A hit ends the lookup;
   the embedder is never asked (it would compute a vector nobody uses).
2. **embed**: only after an exact miss, the text (too long: exact-only).
3. **semantic**: the vector searched in the namespace and the best candidates
   verified, in the cache service.

:meth:`CacheLayer.start` runs a lookup as a task, a :class:`Lookup`, so that
the request path can race it against the upstream (``gateway.serving``): it
says when the exact stage has answered, and keeps what the lookup learned (the
vector), so that a lookup abandoned because the upstream answered first still
spares the store an embedding. Any error, deadline or skipped sidecar is a
miss; an abandoned lookup is counted as ``abandoned``; nothing here fails a
request.

A lookup's ending is the ``outcome`` label of ``gateway_cache_lookups_total``
(``LookupOutcome``): it has more endings than a request's answer
(``protocol.headers.CacheOutcome``, the ``X-Cache`` header), so it is its own
vocabulary, spelled as Prometheus labels are.

Store, after the response's last byte: an answer a replay could not give back
whole (``protocol.fidelity``) is not stored (``outcome="unreplayable"``);
otherwise a background task embeds the text if the lookup did not, and sends
the stored form to the cache service. Pending stores are bounded; past the
bound new stores are dropped and counted rather than piling up.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from gateway.cache.keys import CacheKey
from gateway.clients.cache import CacheClient, HitKind
from gateway.clients.embedder import EmbedderClient
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.protocol import answer
from gateway.protocol.headers import CacheOutcome
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing
from llmgw_common.logs import get_logger

log = get_logger("gateway.cache")

MAX_PENDING_STORES = 256


class LookupOutcome(enum.StrEnum):
    """How a lookup ended: the ``outcome`` label of ``gateway_cache_lookups_total``."""

    EXACT_HIT = "exact_hit"
    SEMANTIC_HIT = "semantic_hit"
    MISS = "miss"
    REJECTED_BY_VERIFICATION = "rejected_by_verification"  # also a miss
    ABANDONED = "abandoned"  # the upstream answered first
    SKIPPED = "skipped"  # the cache service is unavailable (its breaker is open)
    ERROR = "error"


_ENDED_AS = {
    CacheOutcome.HIT_EXACT: LookupOutcome.EXACT_HIT,
    CacheOutcome.HIT_SEMANTIC: LookupOutcome.SEMANTIC_HIT,
}


@dataclass(slots=True)
class Found:
    """What a lookup found: a stored answer, or a miss and what was learned."""

    outcome: CacheOutcome
    stored: bytes = b""
    similarity: float = 0.0
    upstream_s: float = 0.0
    vector: list[float] | None = None
    exact_only: bool = False  # the text was too long for the embedder's window


class Lookup:
    """One lookup under way, as a task the request path can race and abandon."""

    __slots__ = ("_exact", "learned", "task")

    def __init__(self, run: Callable[[Lookup], Coroutine[Any, Any, Found]]) -> None:
        self.learned = Found(CacheOutcome.MISS)  # the vector (or exact_only), as soon as known
        self._exact: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.ensure_future(run(self))
        self.task.add_done_callback(self.exact_answered)

    def exact_answered(self, *_: object) -> None:
        if not self._exact.done():
            self._exact.set_result(None)

    async def exact_stage(self, within_s: float) -> None:
        """Return when the exact stage has answered (or the lookup ended), at most ``within_s``."""
        if within_s > 0 and not self._exact.done():
            await asyncio.wait((self._exact,), timeout=within_s)

    def result(self) -> Found | None:
        """The lookup's answer once it has one, else None."""
        return self.task.result() if self.task.done() else None

    def abandon(self) -> Found:
        """Stop the lookup if it still runs; what it found or learned, for the store."""
        if not self.task.done():
            self.task.cancel()
        elif not self.task.cancelled() and self.task.exception() is None:
            return self.task.result()
        return self.learned


class CacheLayer:
    def __init__(
        self,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        cache: CacheClient,
        embedder: EmbedderClient | None,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._cache = cache
        self._embedder = embedder if settings.cache_semantic else None
        self._tracing = tracing or Tracing(None)
        self._budget_s = settings.cache_lookup_budget_ms / 1000
        self._pending: set[asyncio.Task[None]] = set()

    def _embeddable(self, key: CacheKey) -> bool:
        return (
            self._embedder is not None
            and key.text is not None
            and len(key.text) <= self._settings.cache_max_embed_chars
            and self._embedder.sidecar.available()
        )

    def start(self, key: CacheKey, request_id: str, trace: Any = None) -> Lookup:
        """Start a lookup (its span a child of ``trace``); it runs until it answers or is
        abandoned."""

        async def run(lookup: Lookup) -> Found:
            with self._tracing.child("cache.lookup", trace):
                return await self.lookup(key, request_id, lookup)

        return Lookup(run)

    async def lookup(self, key: CacheKey, request_id: str, progress: Lookup | None = None) -> Found:
        learned = progress.learned if progress is not None else Found(CacheOutcome.MISS)
        if not self._cache.sidecar.available():
            self._metrics.cache_lookups.labels(LookupOutcome.SKIPPED).inc()
            return learned
        started = time.perf_counter()
        try:
            found = await self._lookup(key, request_id, started + self._budget_s, learned, progress)
        except GatewayError:
            found = learned
            self._metrics.cache_lookups.labels(LookupOutcome.ERROR).inc()
        except asyncio.CancelledError:
            self._metrics.cache_lookups.labels(LookupOutcome.ABANDONED).inc()
            raise
        else:
            self._metrics.cache_lookups.labels(
                _ENDED_AS.get(found.outcome, LookupOutcome.MISS)
            ).inc()
        self._metrics.cache_lookup_seconds.observe(time.perf_counter() - started)
        if found.outcome is not CacheOutcome.MISS:
            self._metrics.cache_time_saved.inc(found.upstream_s)
        return found

    async def _lookup(
        self,
        key: CacheKey,
        request_id: str,
        deadline: float,
        learned: Found,
        progress: Lookup | None,
    ) -> Found:
        exact = await self._cache.lookup(
            key.namespace, exact_key=key.exact_key, deadline_s=self._budget_s, request_id=request_id
        )
        if exact.kind == HitKind.HIT_KIND_EXACT:
            return Found(CacheOutcome.HIT_EXACT, exact.response, 1.0, exact.upstream_seconds)
        if progress is not None:
            progress.exact_answered()
        vector = await self._embed(key, request_id, deadline, learned)
        remaining = deadline - time.perf_counter()
        if vector is None or remaining <= 0:
            return learned
        near = await self._cache.lookup(
            key.namespace,
            vector=vector,
            prompt_text=key.text or "",
            deadline_s=remaining,
            request_id=request_id,
        )
        if near.kind == HitKind.HIT_KIND_SEMANTIC:
            return Found(
                CacheOutcome.HIT_SEMANTIC, near.response, near.similarity, near.upstream_seconds
            )
        if near.rejected_by_verification:
            self._metrics.cache_lookups.labels(LookupOutcome.REJECTED_BY_VERIFICATION).inc()
        return learned

    async def _embed(
        self, key: CacheKey, request_id: str, deadline: float, learned: Found
    ) -> list[float] | None:
        """The text's vector (kept in ``learned``), or None: not embeddable, no time left,
        or too long for the model (then the entry is exact-only)."""
        remaining = deadline - time.perf_counter()
        if not self._embeddable(key) or remaining <= 0:
            return None
        assert self._embedder is not None and key.text is not None
        embedded = await self._embedder.embed(
            [key.text], deadline_s=remaining, request_id=request_id
        )
        if embedded.truncated[0]:
            learned.exact_only = True
            return None
        learned.vector = embedded.vectors[0]
        return learned.vector

    def store_later(
        self,
        key: CacheKey,
        found: Found | None,
        stored: bytes,
        upstream_s: float,
        request_id: str,
    ) -> None:
        field = answer.unreplayable(stored)
        if field is not None:  # a replay would lose it: better a miss than a lossy hit
            self._metrics.cache_stores.labels("unreplayable").inc()
            log.info("cache_store_unreplayable", request_id=request_id, field=field)
            return
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
