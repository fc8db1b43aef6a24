"""``POST /v1/embeddings``: the embedder sidecar, in the OpenAI shape."""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api import openapi
from gateway.api.body import parse, read_body, request_id
from gateway.clients.embedder import EmbedderClient
from gateway.errors import DependencyUnavailable, ModelNotFound
from gateway.gate import Gate
from gateway.protocol.schemas import EmbeddingRequest
from gateway.responses import RawResponse
from gateway.settings import GatewaySettings


def _same_model(asked: str, served: str) -> bool:
    return asked == served or asked.rsplit("/", 1)[-1] == served


def embeddings_router(
    settings: GatewaySettings, embedder: Callable[[], EmbedderClient | None], gate: Gate
) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/embeddings", responses=openapi.ERRORS, openapi_extra=openapi.body(EmbeddingRequest)
    )
    async def embeddings(request: Request) -> Response:
        rid = request_id(request)
        request.state.request_id = rid
        await gate.enter(request)
        body = await read_body(request, settings.max_body_bytes)
        req = parse(EmbeddingRequest, body)
        client = embedder()
        if client is None:
            raise DependencyUnavailable("No embedder is configured on this gateway")
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        result = await client.embed(texts, deadline_s=settings.embeddings_timeout_s, request_id=rid)
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
        return RawResponse(
            orjson.dumps(payload), 200, "application/json", [(b"x-request-id", rid.encode())]
        )

    return router


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        floats = array("f", vector)
        if sys.byteorder == "big":
            floats.byteswap()
        return base64.b64encode(floats.tobytes()).decode()
    return vector
