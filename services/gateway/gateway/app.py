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
from gateway.balance.discovery import Discovery, fetch_models, parse_target
from gateway.balance.engine_poller import EnginePoller
from gateway.balance.pool import Pool, PoolConfig
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
    """Kept for callers of the earlier name: the mapping is ``settings.pool_config()``."""
    return settings.pool_config()


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


class Gateway:
    """The gateway's object graph, built here and nowhere else.

    What needs no running event loop is built at once; what does (the
    upstream session, the sidecars' gRPC channels, the cache layer over them,
    discovery and the engine poller) in :meth:`start`, which the lifespan
    calls; :meth:`stop` takes it all down in reverse.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        pool: Pool | None = None,
        registry: CollectorRegistry | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.pool = pool if pool is not None else Pool(settings.pool_config())
        self.tracing = tracing or Tracing.from_settings(
            settings.otlp_endpoint, settings.trace_sample_ratio
        )
        self.upstream = Upstream(settings, self.pool, self.metrics)
        self.proxy = Proxy(
            self.upstream, self.metrics, log_requests=settings.log_requests, tracing=self.tracing
        )
        self.completions = Completions(settings, self.proxy, self.tracing)
        self.sidecars = Sidecars()
        self.gate = Gate(settings, self.metrics)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings, pool, upstream = self.settings, self.pool, self.upstream
        await upstream.start()
        self.sidecars.open(settings, self.metrics, self.tracing)
        if self.sidecars.cache is not None:
            self.completions.attach_cache(
                CacheLayer(
                    settings,
                    self.metrics,
                    self.sidecars.cache,
                    self.sidecars.embedder,
                    self.tracing,
                )
            )
        discovery = Discovery(
            pool,
            [parse_target(b.url, b.models, b.name) for b in settings.all_backends()],
            interval_s=settings.discovery_interval_s,
            fetch=lambda url: fetch_models(upstream.session, url),
        )
        await discovery.refresh()
        self._tasks = [
            asyncio.create_task(discovery.run(), name="discovery"),
            asyncio.create_task(refresh_backend_gauges(pool, self.metrics), name="gauges"),
        ]
        if settings.engine_metrics:
            poller = EnginePoller(pool, upstream.session)
            self._tasks.append(asyncio.create_task(poller.run(), name="engine"))
        log.info(
            "gateway_started", endpoints=[s.name for s in pool.snapshot()], models=pool.models()
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.completions.drain()
        await self.gate.close()
        await self.sidecars.close()
        await self.upstream.close()
        self.tracing.shutdown()


def create_app(
    settings: GatewaySettings,
    *,
    pool: Pool | None = None,
    registry: CollectorRegistry | None = None,
    tracing: Tracing | None = None,
) -> HotPaths:
    """The ASGI app over a :class:`Gateway`: FastAPI for the routes and the OpenAPI
    document, :class:`HotPaths` in front for the two completion routes."""
    gw = Gateway(settings, pool=pool, registry=registry, tracing=tracing)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        # What exists now lives as long as the process: keep it out of every GC pass.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gw.stop()

    app = FastAPI(
        telemetry={"tracing": False, "metrics": False, "logs": False},
        title="llmgw",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible LLM inference gateway",
    )
    router, hot = completions_routes(settings, gw.completions, gw.gate, gw.tracing)
    app.include_router(router)
    app.include_router(embeddings_router(settings, lambda: gw.sidecars.embedder, gw.gate))
    app.include_router(admin_router(settings, lambda: gw.sidecars.cache, gw.gate))
    app.include_router(
        system_router(gw.pool, gw.registry, gw.metrics, multiprocess=settings.workers > 1)
    )
    install_error_handlers(app)
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
