"""Client of the cache service (``llmgw.cache.v1``)."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.clients.sidecar import Sidecar
from llmgw.cache.v1 import cache_pb2, cache_pb2_grpc

HitKind = cache_pb2.HitKind


class CacheClient:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._stub = cache_pb2_grpc.CacheServiceStub(sidecar.channel)

    async def lookup(
        self,
        namespace: str,
        *,
        exact_key: str = "",
        vector: Sequence[float] = (),
        prompt_text: str = "",
        deadline_s: float,
        request_id: str = "",
    ) -> cache_pb2.LookupResponse:
        request = cache_pb2.LookupRequest(
            namespace=namespace, exact_key=exact_key, vector=vector, prompt_text=prompt_text
        )
        return await self.sidecar.call(
            self._stub.Lookup, request, deadline_s=deadline_s, request_id=request_id
        )

    async def store(
        self,
        namespace: str,
        *,
        exact_key: str,
        prompt_text: str,
        vector: Sequence[float],
        response: bytes,
        ttl_s: int,
        upstream_s: float,
        deadline_s: float,
        request_id: str = "",
    ) -> str:
        request = cache_pb2.StoreRequest(
            namespace=namespace,
            exact_key=exact_key,
            prompt_text=prompt_text,
            vector=vector,
            response=response,
            ttl_seconds=ttl_s,
            upstream_seconds=upstream_s,
        )
        reply = await self.sidecar.call(
            self._stub.Store, request, deadline_s=deadline_s, request_id=request_id
        )
        return str(reply.entry_id)

    async def invalidate(
        self, *, namespace: str = "", everything: bool = False, deadline_s: float = 5.0
    ) -> int:
        request = (
            cache_pb2.InvalidateRequest(all=True)
            if everything
            else cache_pb2.InvalidateRequest(namespace=namespace)
        )
        reply = await self.sidecar.call(self._stub.Invalidate, request, deadline_s=deadline_s)
        return int(reply.removed)

    async def stats(self, *, deadline_s: float = 5.0) -> cache_pb2.StatsResponse:
        return await self.sidecar.call(
            self._stub.Stats, cache_pb2.StatsRequest(), deadline_s=deadline_s
        )
