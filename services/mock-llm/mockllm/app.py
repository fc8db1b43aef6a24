"""``create_app(settings)``: the mock's aiohttp application.

POST /v1/chat/completions   POST /v1/completions   POST /v1/responses   GET /v1/responses/{id}
                            (stream or not; faults; X-Mock-* overrides)
POST /tokenize /detokenize /v1/embeddings /v1/rerank /v1/score   (mockllm.pooling)
POST /v1/audio/transcriptions /v1/audio/translations             (mockllm.audio)
GET  /v1/models             GET  /health            GET  /metrics
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from llmgw_common.logs import get_logger
from mockllm.admission import Admission
from mockllm.engine import Engine
from mockllm.errors import MockError, error_body
from mockllm.faults import parse_fault
from mockllm.generate import Generator
from mockllm.metrics import CONTENT_TYPE, Metrics
from mockllm.pooling import Pooling
from mockllm.settings import Settings

ADMISSION_KEY = web.AppKey("admission", Admission)
METRICS_KEY = web.AppKey("metrics", Metrics)
MAX_MODEL_LEN = 8192

log = get_logger("mockllm.app")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(
    message: str, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(message, status)),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as an OpenAI error object."""
    try:
        return await handler(request)
    except MockError as exc:
        return _error_response(exc.message, exc.http_status, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(exc.reason, exc.status)


def create_app(settings: Settings) -> web.Application:
    admission = Admission(settings.max_concurrency)
    engine = Engine(settings)
    cache = engine.cache
    metrics = Metrics(
        admission,
        settings.models[0],
        kv_usage=engine.kv_usage,
        prefix=(lambda: (cache.queries, cache.hits)) if cache is not None else lambda: None,
    )
    generator = Generator(settings, admission, metrics, parse_fault(settings.fault), engine)
    created = int(time.time())
    models_body = orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": name,
                    "parent": None,
                    "max_model_len": MAX_MODEL_LEN,
                }
                for name in settings.models
            ],
        }
    )

    async def models(_: web.Request) -> web.Response:
        return web.Response(body=models_body, content_type="application/json")

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application(middlewares=[openai_errors], client_max_size=8 * 1024 * 1024)
    app[ADMISSION_KEY] = admission
    app[METRICS_KEY] = metrics
    app.router.add_post("/v1/chat/completions", generator.chat)
    app.router.add_post("/v1/completions", generator.completions)
    app.router.add_post("/v1/responses", generator.responses)
    app.router.add_get("/v1/responses/{response_id}", generator.stored.retrieve)
    Pooling(settings.models, metrics, parse_fault(settings.fault)).add_routes(app)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_page)
    return app
