"""``create_app(settings)``: builds the gateway. Nothing is set up at import time.

The lifespan owns everything with a life: the upstream HTTP session, the
discovery and engine-polling tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.api import openapi
from gateway.api.admin import InvalidateBody, admin_router
from gateway.api.body import describe
from gateway.api.completions import completions_routes
from gateway.api.embeddings import embeddings_router
from gateway.api.system import system_router
from gateway.asgi import HotPaths
from gateway.balance.affinity import AffinityConfig
from gateway.balance.breaker import BreakerConfig
from gateway.balance.discovery import Discovery, fetch_models, parse_target
from gateway.balance.engine_poller import EnginePoller
from gateway.balance.pool import Pool, PoolConfig
from gateway.balance.retry_budget import RetryBudgetConfig
from gateway.cache.layer import CacheLayer
from gateway.clients.cache import CacheClient
from gateway.clients.embedder import EmbedderClient
from gateway.clients.sidecar import Sidecar
from gateway.errors import GatewayError, InvalidRequest
from gateway.gate import Gate
from gateway.metrics import GatewayMetrics
from gateway.protocol.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.proxy.handler import Proxy
from gateway.proxy.upstream import Upstream
from gateway.responses import RawResponse
from gateway.serving import Completions
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing
from llmgw_common.logs import get_logger

log = get_logger("gateway")


def pool_config(settings: GatewaySettings) -> PoolConfig:
    return PoolConfig(
        tau_s=settings.ewma_tau_s,
        default_rtt_s=settings.default_rtt_s,
        penalty_s=settings.failure_penalty_s,
        decode_weight=settings.decode_weight,
        ttft_failure_limit_s=settings.slow_ttft_s,
        affinity=AffinityConfig(
            enabled=settings.prefix_affinity,
            capacity_tokens=settings.prefix_cache_tokens,
            token_cost_s=settings.prefill_s_per_token,
            load_factor=settings.prefix_load_factor,
        ),
        breaker=BreakerConfig(
            consecutive_failures=settings.breaker_consecutive_failures,
            failure_rate=settings.breaker_failure_rate,
            min_requests=settings.breaker_min_requests,
            window_s=settings.breaker_window_s,
            base_ejection_s=settings.breaker_base_ejection_s,
            max_ejection_s=settings.breaker_max_ejection_s,
            probes=settings.breaker_probes,
        ),
        retry_budget=RetryBudgetConfig(
            ratio=settings.retry_budget_ratio, min_per_s=settings.retry_budget_min_per_s
        ),
    )


class Sidecars:
    """The gRPC clients, created by the lifespan (channels need the running loop)."""

    def __init__(self) -> None:
        self.embedder: EmbedderClient | None = None
        self.cache: CacheClient | None = None

    def open(self, settings: GatewaySettings, metrics: GatewayMetrics, tracing: Tracing) -> None:
        def sidecar(name: str, target: str) -> Sidecar:
            return Sidecar(
                name,
                target,
                metrics,
                failures=settings.sidecar_breaker_failures,
                open_s=settings.sidecar_breaker_open_s,
                propagate=tracing.enabled,
            )

        if settings.embedder_target:
            self.embedder = EmbedderClient(sidecar("embedder", settings.embedder_target))
        if settings.cache_target:
            self.cache = CacheClient(sidecar("cache", settings.cache_target))

    async def close(self) -> None:
        for client in (self.embedder, self.cache):
            if client is not None:
                await client.sidecar.close()


async def refresh_backend_gauges(pool: Pool, metrics: GatewayMetrics) -> None:
    while True:
        metrics.backends.refresh(pool.snapshot())
        await asyncio.sleep(1.0)


def create_app(
    settings: GatewaySettings,
    *,
    pool: Pool | None = None,
    registry: CollectorRegistry | None = None,
    tracing: Tracing | None = None,
) -> HotPaths:
    registry = registry if registry is not None else CollectorRegistry()
    metrics = GatewayMetrics(registry)
    pool = pool if pool is not None else Pool(pool_config(settings))
    upstream = Upstream(settings, pool, metrics)
    tracing = tracing or Tracing.from_settings(settings.otlp_endpoint, settings.trace_sample_ratio)
    proxy = Proxy(upstream, metrics, log_requests=settings.log_requests, tracing=tracing)
    completions = Completions(settings, proxy, tracing)
    sidecars = Sidecars()
    gate = Gate(settings, metrics)
    targets = [parse_target(b.url, b.models) for b in settings.all_backends()]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await upstream.start()
        sidecars.open(settings, metrics, tracing)
        if sidecars.cache is not None:
            completions.attach_cache(
                CacheLayer(settings, metrics, sidecars.cache, sidecars.embedder, tracing)
            )
        discovery = Discovery(
            pool,
            targets,
            interval_s=settings.discovery_interval_s,
            fetch=lambda url: fetch_models(upstream.session, url),
        )
        await discovery.refresh()
        tasks = [
            asyncio.create_task(discovery.run(), name="discovery"),
            asyncio.create_task(refresh_backend_gauges(pool, metrics), name="gauges"),
        ]
        if settings.engine_metrics:
            poller = EnginePoller(pool, upstream.session)
            tasks.append(asyncio.create_task(poller.run(), name="engine"))
        log.info(
            "gateway_started", endpoints=[s.name for s in pool.snapshot()], models=pool.models()
        )
        # What exists now lives as long as the process: keep it out of every GC pass.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await completions.drain()
            await gate.close()
            await sidecars.close()
            await upstream.close()
            tracing.shutdown()

    app = FastAPI(
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="llmgw",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible LLM inference gateway",
    )
    router, hot = completions_routes(settings, completions, gate, tracing)
    app.include_router(router)
    app.include_router(embeddings_router(settings, lambda: sidecars.embedder, gate))
    app.include_router(admin_router(settings, lambda: sidecars.cache, gate))
    app.include_router(system_router(pool, registry, metrics, multiprocess=settings.workers > 1))
    install_error_handlers(app)
    app.state.pool = pool
    app.state.metrics = metrics
    openapi.install(
        app, [ChatCompletionRequest, CompletionRequest, EmbeddingRequest, InvalidateBody]
    )
    return HotPaths(app, hot, error_response, max_header_bytes=settings.max_header_bytes)


def error_response(request: Request, exc: Exception) -> Response:
    """Every error leaves in the OpenAI shape, with the request id when there is one."""
    if isinstance(exc, RequestValidationError):
        exc = InvalidRequest(describe(exc))  # type: ignore[arg-type]
    elif isinstance(exc, StarletteHTTPException):
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        exc = error
    elif not isinstance(exc, GatewayError):
        log.error("unhandled_error", path=request.url.path, exc_info=exc)
        exc = GatewayError("Internal error in the gateway")
    headers = [(k.encode(), v.encode()) for k, v in exc.headers().items()]
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers.append((b"x-request-id", rid.encode()))
    return RawResponse(exc.body(), exc.status, "application/json", headers)


def install_error_handlers(app: FastAPI) -> None:
    async def handler(request: Request, exc: Exception) -> Response:
        return error_response(request, exc)

    for kind in (GatewayError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handler)
