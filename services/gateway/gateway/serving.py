"""The request path for completions: cache policy, lookup, replay or proxy, store.

::

    decide (policy) ── bypass ─────────────────────────────▶ proxy   X-Cache: BYPASS
          └─ lookup (exact ∥ embed, then semantic; budget) ─ hit ─▶ replay   X-Cache: HIT-*
                                                           └ miss ▶ proxy   X-Cache: MISS
                                                                    └ success ▶ store (background)
"""

from __future__ import annotations

import time

from starlette.responses import Response

from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.cache import stored
from gateway.cache.keys import CacheKey, chat_key, completion_key
from gateway.cache.layer import BYPASS, MISS, CacheLayer, Found
from gateway.cache.policy import decide
from gateway.proxy.call import Call
from gateway.proxy.handler import OnSuccess, Proxy
from gateway.proxy.stream import STREAM_HEADERS
from gateway.responses import RawResponse
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing


class Completions:
    def __init__(self, settings: GatewaySettings, proxy: Proxy, tracing: Tracing) -> None:
        self._settings = settings
        self._proxy = proxy
        self._tracing = tracing
        self._cache: CacheLayer | None = None

    def attach_cache(self, cache: CacheLayer | None) -> None:
        """Called by the lifespan once the sidecar channels exist."""
        self._cache = cache if self._settings.cache_enabled else None

    async def drain(self) -> None:
        if self._cache is not None:
            await self._cache.drain()

    async def serve(
        self,
        call: Call,
        req: ChatCompletionRequest | CompletionRequest,
        *,
        tenant: str,
        cache_control: str,
        opt_in: str,
    ) -> Response:
        decision = decide(
            req, cache_control, opt_in, deterministic_only=self._settings.cache_deterministic_only
        )
        if self._cache is None or decision.bypass:
            return await self._proxy.serve(call, extra_headers=[(b"x-cache", BYPASS.encode())])
        if isinstance(req, ChatCompletionRequest):
            key, kind = chat_key(tenant, req), stored.CHAT
        else:
            key, kind = completion_key(tenant, req), stored.COMPLETION
        found = None
        if decision.lookup:
            with self._tracing.child("cache.lookup", call.trace):
                found = await self._cache.lookup(key, call.request_id)
        if found is not None and found.outcome != MISS:
            return self._replay(call, req, found)
        call.cache = MISS
        on_success = None
        if decision.store:
            on_success = self._storer(key, kind, found)
        return await self._proxy.serve(
            call, extra_headers=[(b"x-cache", MISS.encode())], on_success=on_success
        )

    def _storer(self, key: CacheKey, kind: str, found: Found | None) -> OnSuccess:
        cache = self._cache
        assert cache is not None

        def on_success(call: Call, body: bytes) -> None:
            answer = stored.from_stream(kind, body) if call.stream else stored.from_body(body)
            if answer is not None:
                upstream_s = call.upstream_ended - call.upstream_started
                cache.store_later(key, found, answer, upstream_s, call.request_id)

        return on_success

    def _replay(
        self, call: Call, req: ChatCompletionRequest | CompletionRequest, found: Found
    ) -> Response:
        call.cache = found.outcome
        headers = [
            (b"x-cache", found.outcome.encode()),
            (b"x-request-id", call.request_id.encode()),
        ]
        if found.outcome != "HIT-EXACT":
            headers.append((b"x-cache-similarity", f"{found.similarity:.4f}".encode()))
        if call.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            body = stored.replay_sse(found.stored, include_usage=include_usage)
            response = RawResponse(
                body, 200, "text/event-stream; charset=utf-8", [*STREAM_HEADERS, *headers]
            )
        else:
            response = RawResponse(
                stored.replay_json(found.stored), 200, "application/json", headers
            )
        call.first_token_at = time.perf_counter()
        self._proxy.answered_locally(call, 200)
        return response
