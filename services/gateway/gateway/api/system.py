"""``/v1/models``, health, readiness and metrics."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.balance.pool import Pool
from gateway.responses import RawResponse


def system_router(pool: Pool, registry: CollectorRegistry) -> APIRouter:
    router = APIRouter()
    started = int(time.time())

    @router.get("/v1/models")
    async def list_models() -> Response:
        data = [
            {"id": m, "object": "model", "created": started, "owned_by": "llmgw"}
            for m in sorted(pool.models())
        ]
        return RawResponse(orjson.dumps({"object": "list", "data": data}), 200, "application/json")

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> Response:
        ready = pool.ready()
        body = {
            "status": "ready" if ready else "no usable backend",
            "endpoints": [
                {"name": s.name, "breaker": str(s.breaker), "pending": s.pending}
                for s in pool.snapshot()
            ],
        }
        return RawResponse(orjson.dumps(body), 200 if ready else 503, "application/json")

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
