"""The request path for completions: cache policy, a lookup raced with the upstream, store.

::

    decide (policy) ─ bypass ──────────────────────────────────────▶ proxy   X-Cache: BYPASS
      ├─ no-cache (store only) ────────────────────────────────────▶ proxy   X-Cache: MISS
      └─ lookup: exact ─ hit within the head start ────────────────▶ replay  X-Cache: HIT-EXACT
               └─ missed, or the head start ran out: the upstream starts, and
                  the lookup (embed, semantic) races its first byte:
                    a hit first ─ the upstream attempt is cancelled ─▶ replay  X-Cache: HIT-*
                    the upstream first, or a miss ─────────────────▶ proxy   X-Cache: MISS
                                                                     └ success ▶ store

A miss does not wait for the lookup: the upstream attempt (the usual routing,
failover and timeouts of ``Proxy``) starts as soon as the exact stage misses,
and the embedding, the vector search and the verdict run alongside it. The
lookup budget only bounds how late a hit may still come.

Decisions where the issue is silent:

- **When the upstream starts**: when the exact stage misses or the head start
  (``GATEWAY_CACHE_HEAD_START_MS``) runs out, whichever is first. The head
  start is there for exact hits, so that they never start an upstream attempt;
  waiting on after an exact miss would only delay every miss, since the
  semantic stage takes longer than any head start worth having.
- **"First"** is decided before the client has a byte: the upstream is first
  once the gateway holds its first chunk (a stream) or its whole answer (not
  streamed). When both are in at the same moment the hit is served: it is
  complete, and the model server can stop. Nothing sent to a client is ever
  replaced.
- **An upstream that wins** makes the lookup pointless: it is cancelled, and
  the vector it already computed is kept for the store.
- **An upstream that fails everywhere** before the lookup answers does not
  decide: the lookup is still awaited (within its budget), because a cached
  answer is better than an error.
- **A cancelled attempt** closes its connection (the model server stops), is
  neither a success nor a failure for routing (pending drops, the breaker and
  the latency estimate hear nothing), and is counted in
  ``gateway_cache_cancelled_upstream_total`` and ``..._seconds_total`` and in
  the request's log line (``upstream_cancelled_ms``). The request itself is
  accounted once, as the hit it was.
- ``GATEWAY_CACHE_SPECULATIVE=false`` restores waiting for the whole lookup,
  for backends where a cancelled request still costs (billed per request).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from starlette.responses import Response

from gateway.cache.keys import CacheKey, cache_key
from gateway.cache.layer import CacheLayer, Found, Lookup
from gateway.cache.policy import decide
from gateway.errors import GatewayError
from gateway.protocol import answer
from gateway.protocol.calls import AnyRequest
from gateway.protocol.headers import X_CACHE_SIMILARITY, X_REQUEST_ID, CacheOutcome
from gateway.proxy.attempt import Opened
from gateway.proxy.call import Call, Completion
from gateway.proxy.handler import Observer, Proxy, discard, unexpected
from gateway.proxy.stream import STREAM_HEADERS
from gateway.responses import RawResponse
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing

BYPASS_HEADERS = [CacheOutcome.BYPASS.header]
MISS_HEADERS = [CacheOutcome.MISS.header]


class Completions:
    def __init__(self, settings: GatewaySettings, proxy: Proxy, tracing: Tracing) -> None:
        self._settings = settings
        self._proxy = proxy
        self._tracing = tracing
        self._cache: CacheLayer | None = None
        self._head_start_s = settings.cache_head_start_ms / 1000
        self._speculative = settings.cache_speculative

    def attach_cache(self, cache: CacheLayer | None) -> None:
        """Called by the lifespan once the sidecar channels exist."""
        self._cache = cache if self._settings.cache_enabled else None

    async def drain(self) -> None:
        if self._cache is not None:
            await self._cache.drain()

    async def serve(
        self, call: Call, req: AnyRequest, *, tenant: str, cache_control: str, opt_in: str
    ) -> Response:
        decision = decide(
            req, cache_control, opt_in, deterministic_only=self._settings.cache_deterministic_only
        )
        if self._cache is None or decision.bypass:
            return await self._proxy.serve(call, extra_headers=BYPASS_HEADERS)
        key = cache_key(tenant, req)
        self._proxy.admit(call)
        if not decision.lookup:
            store = self._storer(key, None) if decision.store else None
            return await self._upstream(call, self._proxy.open(call), store)
        lookup = self._cache.start(key, call.request_id, call.trace)
        opening: asyncio.Task[Opened] | None = None
        try:
            found, opening = await self._first_answer(call, lookup)
            if found is not None and opening is not None:
                await self._proxy.abandon(call, opening)
        except BaseException as exc:  # nothing was sent yet; nothing is left running
            lookup.abandon()
            if opening is not None:
                discard(opening)
            self._proxy.finish(call, *unexpected(exc))
            raise
        if found is not None:
            return self._replay(call, req, found)
        learned = lookup.abandon()
        store = self._storer(key, learned) if decision.store else None
        return await self._upstream(call, opening or self._proxy.open(call), store)

    async def _first_answer(
        self, call: Call, lookup: Lookup
    ) -> tuple[Found | None, asyncio.Task[Opened] | None]:
        """The hit to serve (or None: serve the upstream), and the upstream attempt if one
        was started. See the module docstring for the rules."""
        if not self._speculative:
            await asyncio.wait((lookup.task,))
        else:
            await lookup.exact_stage(self._head_start_s)
        found = lookup.result()
        if found is not None:
            return (found if found.outcome is not CacheOutcome.MISS else None), None
        opening = asyncio.ensure_future(self._proxy.open(call))
        try:
            while True:
                found = lookup.result()
                if found is not None and found.outcome is not CacheOutcome.MISS:
                    return found, opening
                if found is not None or (opening.done() and not _failed(opening)):
                    return None, opening
                racing = (lookup.task,) if opening.done() else (lookup.task, opening)
                await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            discard(opening)
            raise

    async def _upstream(
        self, call: Call, opening: Awaitable[Opened], store: Observer | None
    ) -> Response:
        call.cache = CacheOutcome.MISS
        return await self._proxy.answer(call, opening, extra_headers=MISS_HEADERS, observe=store)

    def _storer(self, key: CacheKey, found: Found | None) -> Observer:
        """Store the answer once it is complete (only whole, successful answers are)."""
        cache = self._cache
        assert cache is not None

        def store(call: Call, completion: Completion) -> None:
            if completion.succeeded and completion.answer is not None:
                cache.store_later(
                    key, found, completion.answer, completion.upstream_s, call.request_id
                )

        return store

    def _replay(self, call: Call, req: AnyRequest, found: Found) -> Response:
        call.cache = found.outcome
        headers = [found.outcome.header, (X_REQUEST_ID, call.request_id.encode())]
        if found.outcome is not CacheOutcome.HIT_EXACT:
            headers.append((X_CACHE_SIMILARITY, f"{found.similarity:.4f}".encode()))
        if call.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            body = answer.replay_sse(found.stored, include_usage=include_usage)
            response = RawResponse(
                body, 200, "text/event-stream; charset=utf-8", [*STREAM_HEADERS, *headers]
            )
        else:
            response = RawResponse(
                answer.replay_json(found.stored), 200, "application/json", headers
            )
        call.first_token_at = time.perf_counter()
        self._proxy.answered_locally(call, 200)
        return response


def _failed(opening: asyncio.Future[Opened]) -> bool:
    """The upstream failed everywhere (a gateway error), so it cannot serve this call."""
    return not opening.cancelled() and isinstance(opening.exception(), GatewayError)
