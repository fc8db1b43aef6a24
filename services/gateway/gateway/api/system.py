"""``/v1/models``, health, readiness and metrics."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.balance.pool import Pool
from gateway.metrics import GatewayMetrics
from gateway.responses import RawResponse


def scrape_registry(registry: CollectorRegistry, multiprocess: bool) -> CollectorRegistry:
    """This process's registry, or all workers' values in multiprocess mode."""
    if not multiprocess:
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged


def system_router(
    pool: Pool, registry: CollectorRegistry, metrics: GatewayMetrics, *, multiprocess: bool
) -> APIRouter:
    router = APIRouter()
    started = int(time.time())
    scrape = scrape_registry(registry, multiprocess)

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

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    async def prometheus_metrics() -> Response:
        metrics.backends.refresh(pool.snapshot())
        return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)

    return router
