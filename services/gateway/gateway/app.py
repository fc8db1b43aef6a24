"""``create_app(settings)``: builds the gateway. Nothing is set up at import time.

The lifespan owns everything with a life: the upstream HTTP session, the
discovery and engine-polling tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.api import openapi
from gateway.api.admin import InvalidateBody, admin_router
from gateway.api.body import request_id
from gateway.api.completions import completions_routes
from gateway.api.embeddings import embeddings_router
from gateway.api.model_routes import model_routes
from gateway.api.pins import Pins
from gateway.api.system import metrics_router, system_router
from gateway.asgi import HotPaths, OnError
from gateway.balance.discovery import Discovery, fetch_models, parse_target
from gateway.balance.engine_poller import EnginePoller
from gateway.balance.pool import Pool, PoolConfig
from gateway.cache.layer import CacheLayer
from gateway.clients.cache import CacheClient
from gateway.clients.embedder import EmbedderClient
from gateway.clients.sidecar import Sidecar
from gateway.errors import (
    Forbidden,
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    Unauthorized,
)
from gateway.flow import FlowControl, FlowMetrics
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

    def embedder_model(self) -> str:
        """The sidecar's embedding model, once it told us ("" before, or without one)."""
        return self.embedder.model if self.embedder is not None else ""

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
        self.metrics = GatewayMetrics(
            self.registry,
            ttft_limit_s=settings.ttft_timeout_s,
            duration_limit_s=settings.total_timeout_s,
        )
        self.pool = pool if pool is not None else Pool(settings.pool_config())
        self.metrics.models.watch(self.pool.has_model)
        self.tracing = tracing or Tracing.from_settings(
            settings.otlp_endpoint, settings.trace_sample_ratio
        )
        self.upstream = Upstream(settings, self.pool, self.metrics)
        self.flow = FlowControl(
            settings.flow_config(engine_metrics=settings.engine_metrics),
            self.pool,
            FlowMetrics(self.registry),
        )
        self.pool.slots = self.flow.config.endpoint_concurrency  # full endpoints routed last
        self.proxy = Proxy(
            self.upstream,
            self.metrics,
            log_requests=settings.log_requests,
            tracing=self.tracing,
            continuations=settings.stream_continuations,
            flow=self.flow if self.flow.active else None,
        )
        self.completions = Completions(settings, self.proxy, self.tracing)
        self.sidecars = Sidecars()
        self.gate = Gate(settings, self.metrics)
        self.pins = Pins(  # /v1/responses: which endpoint stored which response
            redis=self.gate.redis,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
            backoff_s=settings.redis_backoff_s,
            backoff_max_s=settings.redis_backoff_max_s,
        )
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
            [
                parse_target(b.url, b.models, b.name, b.continuation.config())
                for b in settings.all_backends()
            ],
            interval_s=settings.discovery_interval_s,
            fetch=lambda url: fetch_models(upstream.session, url),
        )
        await discovery.refresh()
        self._tasks = [
            asyncio.create_task(discovery.run(), name="discovery"),
            asyncio.create_task(refresh_backend_gauges(pool, self.metrics), name="gauges"),
        ]
        if self.sidecars.embedder is not None:  # its model is listed in /v1/models
            self._tasks.append(
                asyncio.create_task(self.sidecars.embedder.learn_model(), name="embedder-model")
            )
        if self.flow.active:
            self._tasks.append(asyncio.create_task(self.flow.run(), name="flow"))
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
        await self.pins.close()
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
    companion: Companion | None = None,
) -> HotPaths:
    """The ASGI app over a :class:`Gateway`: FastAPI for the routes and the OpenAPI
    document, :class:`HotPaths` in front for the two completion routes.

    With ``GATEWAY_METRICS_PORT`` set, ``/metrics`` and ``/admin/*`` are not on
    this app (404) but on its ``ops`` app, which ``__main__`` serves on that
    port; ``companion(ops)``, when given, is entered by the lifespan once the
    gateway has started and left before it stops (``__main__``'s second server).
    """
    gw = Gateway(settings, pool=pool, registry=registry, tracing=tracing)
    on_error = ErrorAnswers(gw.metrics, log_rejections=settings.log_requests)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        # What exists now lives as long as the process: keep it out of every GC pass.
        gc.collect()
        gc.freeze()
        try:
            async with companion(hot.ops) if companion and hot.ops else contextlib.nullcontext():
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
    router, routes = completions_routes(settings, gw.completions, gw.gate, gw.tracing)
    app.include_router(router)
    others, more, forward = model_routes(settings, gw.proxy, gw.gate, gw.tracing, gw.pins)
    app.include_router(others)
    routes.update(more)
    app.include_router(
        embeddings_router(
            settings,
            lambda: gw.sidecars.embedder,
            gw.gate,
            gw.metrics,
            served=gw.pool.has_model,
            forward=forward,
        )
    )
    app.include_router(system_router(gw.pool, gw.sidecars.embedder_model))
    ops = app
    if settings.metrics_port:
        ops = FastAPI(title="llmgw operations", openapi_url=None, docs_url=None, redoc_url=None)
        install_error_handlers(ops, on_error)
    ops.include_router(admin_router(settings, lambda: gw.sidecars.cache, gw.gate))
    ops.include_router(
        metrics_router(gw.pool, gw.registry, gw.metrics, multiprocess=settings.workers > 1)
    )
    install_error_handlers(app, on_error)
    openapi.install(
        app, [ChatCompletionRequest, CompletionRequest, EmbeddingRequest, InvalidateBody]
    )
    limit = settings.max_header_bytes
    hot = HotPaths(app, routes, on_error, max_header_bytes=limit)
    if ops is not app:
        hot.ops = HotPaths(ops, {}, on_error, max_header_bytes=limit)
    return hot


# Entered by the lifespan with the operations app (see create_app).
Companion = Callable[[HotPaths], contextlib.AbstractAsyncContextManager[object]]


def _rejection(request: Request, exc: Exception) -> str | None:
    """Why a request was refused before it was served, or None (not a refusal)."""
    at_door = getattr(request.state, "rejection", None)  # gate.py: limits, load
    if at_door is not None:
        return str(at_door)
    if isinstance(exc, StarletteHTTPException):
        return "not_found" if exc.status_code in (404, 405) else "invalid_request"
    if isinstance(exc, RequestValidationError):
        return "invalid_request"
    for kind, reason in _REJECTIONS:
        if isinstance(exc, kind):
            return reason
    return None  # 5xx, and 429/503 that came from the backends, are not refusals


_REJECTIONS: tuple[tuple[type[GatewayError], str], ...] = (
    (HeadersTooLarge, "headers_too_large"),
    (PayloadTooLarge, "payload_too_large"),
    (InvalidRequest, "invalid_request"),
    (Unauthorized, "unauthorized"),
    (Forbidden, "forbidden"),
    (ModelNotFound, "model_not_found"),
)


class ErrorAnswers:
    """Every error leaves in the OpenAI shape, with the request id; a request refused
    before it was served is counted by reason (``gateway_rejected_requests_total``)
    and logged (``request_rejected``: request id, method, route, status, reason)."""

    def __init__(self, metrics: GatewayMetrics | None, *, log_rejections: bool) -> None:
        self._metrics = metrics
        self._log = log_rejections

    def __call__(self, request: Request, exc: Exception) -> Response:
        reason = _rejection(request, exc)
        error = as_gateway_error(request, exc)
        rid = getattr(request.state, "request_id", None)
        if reason is not None:
            rid = rid or request_id(request)
            if self._metrics is not None:
                self._metrics.rejected.labels(reason).inc()
            if self._log:
                log.info(
                    "request_rejected",
                    request_id=rid,
                    method=request.scope.get("method", ""),
                    route=request.url.path[:200],
                    status=error.status,
                    reason=reason,
                )
        headers = [(k.encode(), v.encode()) for k, v in error.headers().items()]
        if rid:
            headers.append((b"x-request-id", rid.encode()))
        return RawResponse(error.body(), error.status, "application/json", headers)


def as_gateway_error(request: Request, exc: Exception) -> GatewayError:
    if isinstance(exc, RequestValidationError):  # FastAPI's own (a declared parameter)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        return InvalidRequest(f"Invalid value for '{where}': {first.get('msg', 'invalid')}")
    if isinstance(exc, StarletteHTTPException):
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        return error
    if not isinstance(exc, GatewayError):
        log.error("unhandled_error", path=request.url.path, exc_info=exc)
        return GatewayError("Internal error in the gateway")
    return exc


def error_response(request: Request, exc: Exception) -> Response:
    """An error in the OpenAI shape, neither counted nor logged (see :class:`ErrorAnswers`)."""
    return ErrorAnswers(None, log_rejections=False)(request, exc)


def install_error_handlers(app: FastAPI, on_error: OnError = error_response) -> None:
    async def handler(request: Request, exc: Exception) -> Response:
        return on_error(request, exc)

    for kind in (GatewayError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handler)
