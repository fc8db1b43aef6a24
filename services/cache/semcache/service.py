"""The gRPC face of the cache: protobuf in, protobuf out, errors as status codes.

Everything else happens in :class:`semcache.cache.SemanticCache`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from llmgw.cache.v1 import cache_pb2, cache_pb2_grpc
from llmgw_common.logs import get_logger
from semcache.cache import InvalidateTarget, LookupQuery, SemanticCache, StoreCommand
from semcache.errors import CacheError
from semcache.model import HitKind, LookupResult

log = get_logger(__name__)

T = TypeVar("T")

_KINDS = {
    HitKind.MISS: cache_pb2.HIT_KIND_MISS,
    HitKind.EXACT: cache_pb2.HIT_KIND_EXACT,
    HitKind.SEMANTIC: cache_pb2.HIT_KIND_SEMANTIC,
}


async def _answer(work: Awaitable[T], context: grpc.aio.ServicerContext) -> T:
    """Run ``work``; a CacheError becomes its status code with the error's message."""
    try:
        return await work
    except CacheError as exc:
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            log.warning("rpc_failed", code=exc.code.name, error=str(exc))
        await context.abort(exc.code, str(exc))
        raise  # unreachable: abort raises


def _lookup_response(result: LookupResult) -> cache_pb2.LookupResponse:
    reply = cache_pb2.LookupResponse(
        kind=_KINDS[result.kind],
        similarity=result.similarity,
        age_seconds=result.age_seconds,
        rejected_by_verification=result.rejected_by_verification,
        verification_score=result.verification_score,
        verification_reason=result.verification_reason,
    )
    if result.entry is not None:
        reply.entry_id = result.entry.entry_id
        reply.response = result.entry.response
        reply.upstream_seconds = result.entry.upstream_seconds
    return reply


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, cache: SemanticCache) -> None:
        self._cache = cache

    async def Lookup(
        self, request: cache_pb2.LookupRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.LookupResponse:
        started = time.perf_counter()
        query = LookupQuery(
            namespace=request.namespace,
            exact_key=request.exact_key,
            vector=request.vector,
            prompt_text=request.prompt_text,
            min_similarity=request.min_similarity,
        )
        result = await _answer(self._cache.lookup(query), context)
        path = "semantic" if len(request.vector) else "exact"
        self._cache.metrics.lookup_seconds.labels(path).observe(time.perf_counter() - started)
        return _lookup_response(result)

    async def Store(
        self, request: cache_pb2.StoreRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.StoreResponse:
        command = StoreCommand(
            namespace=request.namespace,
            response=request.response,
            exact_key=request.exact_key,
            prompt_text=request.prompt_text,
            vector=request.vector,
            ttl_seconds=request.ttl_seconds,
            upstream_seconds=request.upstream_seconds,
        )
        entry_id, evicted = await _answer(self._cache.store_entry(command), context)
        return cache_pb2.StoreResponse(entry_id=entry_id, evicted=evicted)

    async def Invalidate(
        self, request: cache_pb2.InvalidateRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.InvalidateResponse:
        which = request.WhichOneof("target") or ""
        exact = request.exact
        target = InvalidateTarget(
            kind={"entry_id": "entry", "all": "all" if request.all else ""}.get(which, which),
            entry_id=request.entry_id,
            namespace=exact.namespace if which == "exact" else request.namespace,
            exact_key=exact.exact_key,
        )
        removed = await _answer(self._cache.invalidate(target), context)
        return cache_pb2.InvalidateResponse(removed=removed)

    async def Stats(
        self, request: cache_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> cache_pb2.StatsResponse:
        stats = await _answer(self._cache.stats(), context)
        return cache_pb2.StatsResponse(
            entries=stats.entries,
            namespaces=stats.index.namespaces,
            index_type=stats.index.kind,
            index_size=stats.index.size,
            tombstones=stats.index.tombstones,
            store=stats.store,
            stream_lag_seconds=stats.stream_lag_seconds,
        )
