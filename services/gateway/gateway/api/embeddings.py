"""``POST /v1/embeddings``: a backend's embedding model, or the embedder sidecar's.

A model that a backend serves (it is in the pool: a vLLM server running an
embedding model lists it in its ``/v1/models``) is forwarded to that pool
like any model-routed route (``api.model_routes``: routing, failover, limits,
metered by the proxy). Any other name is for the sidecar: its model (by its
full name or the part after the last ``/``) answers, in the OpenAI shape; a
name neither serves is a 404. The sidecar's model is listed in ``/v1/models``.

Metered as the completions are: ``gateway_requests_total{route="/v1/embeddings"}``
by model and status, ``gateway_request_duration_seconds``, the texts embedded
(``gateway_embedding_inputs_total``) and their tokens (``gateway_tokens_total``).
A request refused before its body was read is a rejection (``app.ErrorAnswers``).
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time
from array import array
from collections.abc import Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api import openapi
from gateway.api.body import parse, read_body, request_id
from gateway.api.model_routes import Forward, model_of
from gateway.clients.embedder import EmbedderClient
from gateway.errors import GatewayError, ModelNotFound
from gateway.gate import Gate
from gateway.metrics import GatewayMetrics
from gateway.protocol.headers import CacheOutcome
from gateway.protocol.schemas import EmbeddingRequest
from gateway.responses import RawResponse
from gateway.settings import GatewaySettings


def _same_model(asked: str, served: str) -> bool:
    return asked == served or asked.rsplit("/", 1)[-1] == served


ROUTE = "/v1/embeddings"


def embeddings_router(
    settings: GatewaySettings,
    embedder: Callable[[], EmbedderClient | None],
    gate: Gate,
    metrics: GatewayMetrics,
    *,
    served: Callable[[str], bool] = lambda model: False,
    forward: Forward | None = None,
) -> APIRouter:
    """``served(model)``: a backend serves ``model``, and ``forward`` sends it there."""
    router = APIRouter()

    def account(model: str, status: int, started: float, texts: int, tokens: int) -> None:
        metrics.requests.labels(ROUTE, model, str(status), CacheOutcome.BYPASS).inc()
        metrics.duration.labels(ROUTE, "false").observe(time.perf_counter() - started)
        if texts:
            metrics.embedding_inputs.labels(model).inc(texts)
        if tokens:
            metrics.tokens.labels(model, "in").inc(tokens)

    @router.post(ROUTE, responses=openapi.ERRORS, openapi_extra=openapi.body(EmbeddingRequest))
    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        rid = request_id(request)
        request.state.request_id = rid
        tenant = await gate.enter(request)
        body = await read_body(request, settings.max_body_bytes)
        if forward is not None and served(model_of(body)[0]):
            return await forward(request, ROUTE, body, rid, tenant)
        req = parse(EmbeddingRequest, body)
        try:
            response, model, texts, tokens = await embed(req, rid)
        except GatewayError as exc:
            account(req.model, exc.status, started, 0, 0)
            raise
        except asyncio.CancelledError:
            account(req.model, 499, started, 0, 0)  # the client went away
            raise
        except BaseException:
            account(req.model, 500, started, 0, 0)
            raise
        account(model, 200, started, texts, tokens)
        return response

    async def embed(req: EmbeddingRequest, rid: str) -> tuple[Response, str, int, int]:
        """The answer, the model that served it, the texts embedded and their tokens."""
        client = embedder()
        if client is None:  # and no backend serves the model
            raise ModelNotFound(f"The embedding model {req.model!r} does not exist")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        result = await client.embed(texts, deadline_s=settings.embeddings_timeout_s, request_id=rid)
        metrics.models.add(result.model)  # a model this gateway serves: its own label
        if not _same_model(req.model, result.model):
            raise ModelNotFound(
                f"The embedding model {req.model!r} does not exist; "
                f"this gateway serves {result.model!r}"
            )
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vector, req.encoding_format)}
            for i, vector in enumerate(result.vectors)
        ]
        tokens = sum(result.token_counts)
        payload = {
            "object": "list",
            "data": data,
            "model": result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        response = RawResponse(
            orjson.dumps(payload), 200, "application/json", [(b"x-request-id", rid.encode())]
        )
        return response, result.model, len(texts), tokens

    return router


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        floats = array("f", vector)
        if sys.byteorder == "big":
            floats.byteswap()
        return base64.b64encode(floats.tobytes()).decode()
    return vector
