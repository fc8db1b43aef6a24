"""``/v1/models``, health, readiness and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.api import openapi
from gateway.balance.pool import Pool
from gateway.errors import ModelNotFound
from gateway.metrics import GatewayMetrics
from gateway.responses import RawResponse


def scrape_registry(registry: CollectorRegistry, multiprocess: bool) -> CollectorRegistry:
    """This process's registry, or all workers' values in multiprocess mode."""
    if not multiprocess:
        return registry
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return merged


TRUE = frozenset({"1", "true", "yes", "on"})


def system_router(pool: Pool, embedder_model: Callable[[], str] = str) -> APIRouter:
    """``/v1/models``, ``/v1/models/{id}``, ``/healthz`` and ``/readyz``: on the API port.

    The models are the backends' and the embedder sidecar's (``embedder_model()``,
    "" until it is known), each once."""
    router = APIRouter()
    started = int(time.time())

    def models() -> dict[str, str]:
        served = {m: "llmgw" for m in pool.models()}
        sidecar = embedder_model()
        if sidecar and sidecar not in served:
            served[sidecar] = "llmgw-embedder"
        return served

    def model(name: str, owner: str) -> dict[str, object]:
        return {"id": name, "object": "model", "created": started, "owned_by": owner}

    @router.get("/v1/models")
    async def list_models() -> Response:
        data = [model(name, owner) for name, owner in sorted(models().items())]
        return RawResponse(orjson.dumps({"object": "list", "data": data}), 200, "application/json")

    @router.get("/v1/models/{name:path}", responses=openapi.ERRORS)
    async def retrieve_model(name: str) -> Response:
        """One model (a name may hold ``/``: ``meta-llama/Llama-3.1-8B-Instruct``)."""
        owner = models().get(name)
        if owner is None:
            raise ModelNotFound(f"The model {name!r} does not exist")
        return RawResponse(orjson.dumps(model(name, owner)), 200, "application/json")

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Can this gateway answer? Its loop is serving (this answer) and it knows at
        least one model, so every request gets the gateway's own answer, a 503
        in the OpenAI shape included when every breaker is open. Whether the
        backends can answer is ``backends_usable``; ``?backends=1`` makes that
        the status too (the old meaning, for a check that wants it)."""
        # Read by hand, not declared: a probe's query never gets a 400.
        backends = request.query_params.get("backends", "").lower() in TRUE
        models = pool.models()
        usable = pool.ready()
        ready = bool(models) and (usable or not backends)
        if not models:
            status = "no model known"
        else:
            status = "ready" if usable else "ready; no usable backend"
            if backends and not usable:
                status = "no usable backend"
        body = {
            "status": status,
            "models": len(models),
            "backends_usable": usable,
            "endpoints": [
                {"name": s.name, "breaker": str(s.breaker), "pending": s.pending}
                for s in pool.snapshot()
            ],
        }
        return RawResponse(orjson.dumps(body), 200 if ready else 503, "application/json")

    return router


def metrics_router(
    pool: Pool, registry: CollectorRegistry, metrics: GatewayMetrics, *, multiprocess: bool
) -> APIRouter:
    """``/metrics``: on the API port, or on ``GATEWAY_METRICS_PORT`` when it is set."""
    router = APIRouter()
    scrape = scrape_registry(registry, multiprocess)

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    async def prometheus_metrics() -> Response:
        metrics.backends.refresh(pool.snapshot())
        return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)

    return router
