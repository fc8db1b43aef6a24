"""Admin endpoints: cache stats and invalidation.

They need the admin key (``GATEWAY_ADMIN_KEY`` or its digest
``GATEWAY_ADMIN_KEY_SHA256``, compared in constant time) or the key of a
tenant marked ``admin``. With neither configured they answer 403.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, model_validator

from gateway.api import openapi
from gateway.api.body import parse, read_body
from gateway.cache.keys import chat_key, completion_key
from gateway.clients.cache import CacheClient
from gateway.errors import DependencyUnavailable, InvalidRequest
from gateway.gate import Gate
from gateway.protocol.schemas import ChatCompletionRequest, CompletionRequest
from gateway.responses import RawResponse
from gateway.settings import GatewaySettings


class InvalidateBody(BaseModel):
    """Invalidate everything, or the namespace a sample request falls in."""

    model_config = ConfigDict(extra="forbid")

    all: bool = False
    tenant: str | None = None
    chat_request: ChatCompletionRequest | None = None
    completion_request: CompletionRequest | None = None

    @model_validator(mode="after")
    def _one_target(self) -> InvalidateBody:
        targets = [self.all, self.chat_request is not None, self.completion_request is not None]
        if sum(targets) != 1:
            raise ValueError("give exactly one of all, chat_request, completion_request")
        return self


def admin_router(
    settings: GatewaySettings, cache: Callable[[], CacheClient | None], gate: Gate
) -> APIRouter:
    router = APIRouter(prefix="/admin")

    async def authorize(request: Request) -> CacheClient:
        await gate.authorize_admin(request)
        client = cache()
        if client is None:
            raise DependencyUnavailable("No cache service is configured on this gateway")
        return client

    @router.get("/cache/stats", responses=openapi.ADMIN_RESPONSES)
    async def stats(request: Request) -> Response:
        reply = await (await authorize(request)).stats()
        body = {
            "entries": reply.entries,
            "namespaces": reply.namespaces,
            "index_type": reply.index_type,
            "index_size": reply.index_size,
            "tombstones": reply.tombstones,
            "store": reply.store,
            "stream_lag_seconds": reply.stream_lag_seconds,
        }
        return RawResponse(orjson.dumps(body), 200, "application/json")

    @router.post(
        "/cache/invalidate",
        responses=openapi.ADMIN_RESPONSES,
        openapi_extra=openapi.body(InvalidateBody),
    )
    async def invalidate(request: Request) -> Response:
        client = await authorize(request)
        req = parse(InvalidateBody, await read_body(request, settings.max_body_bytes))
        tenant = req.tenant or settings.default_tenant
        if req.all:
            removed = await client.invalidate(everything=True)
        elif req.chat_request is not None:
            removed = await client.invalidate(
                namespace=chat_key(tenant, req.chat_request).namespace
            )
        elif req.completion_request is not None:
            key = completion_key(tenant, req.completion_request)
            removed = await client.invalidate(namespace=key.namespace)
        else:  # pragma: no cover - the validator requires one target
            raise InvalidRequest("nothing to invalidate")
        return RawResponse(orjson.dumps({"removed": removed}), 200, "application/json")

    return router
