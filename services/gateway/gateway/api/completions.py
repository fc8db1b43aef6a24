"""``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api.body import parse, read_body, request_id
from gateway.api.schemas import ChatCompletionRequest, CompletionRequest
from gateway.errors import InvalidRequest
from gateway.proxy.call import Call, forwardable_headers
from gateway.proxy.handler import Proxy
from gateway.settings import GatewaySettings

_ERRORS = {
    "400": {"description": "Malformed JSON or an invalid field (OpenAI error object)"},
    "404": {"description": "Unknown model"},
    "413": {"description": "Body over the size limit"},
    "503": {"description": "No backend available"},
}


def _openapi_body(model: type) -> dict[str, object]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")  # type: ignore[attr-defined]
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def completions_router(settings: GatewaySettings, proxy: Proxy) -> APIRouter:
    router = APIRouter()
    limit = settings.max_body_bytes

    def check_limits(tokens: int | None, messages: int = 0) -> None:
        if tokens is not None and tokens > settings.max_tokens_limit:
            raise InvalidRequest(f"max_tokens is over the limit of {settings.max_tokens_limit}")
        if messages > settings.max_messages:
            raise InvalidRequest(f"Too many messages: the limit is {settings.max_messages}")

    def new_call(request: Request, route: str, body: bytes, model: str, stream: bool) -> Call:
        rid = request_id(request)
        request.state.request_id = rid
        return Call(
            route=route,
            path=route,
            model=model,
            stream=stream,
            body=body,
            headers=forwardable_headers(request.scope["headers"], rid),
            request_id=rid,
        )

    @router.post(
        "/v1/chat/completions",
        responses=_ERRORS,  # type: ignore[arg-type]
        openapi_extra=_openapi_body(ChatCompletionRequest),
    )
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, limit)
        req = parse(ChatCompletionRequest, body)
        check_limits(req.token_limit(), len(req.messages))
        call = new_call(request, "/v1/chat/completions", body, req.model, req.stream)
        return await proxy.serve(call)

    @router.post(
        "/v1/completions",
        responses=_ERRORS,  # type: ignore[arg-type]
        openapi_extra=_openapi_body(CompletionRequest),
    )
    async def completions(request: Request) -> Response:
        body = await read_body(request, limit)
        req = parse(CompletionRequest, body)
        check_limits(req.token_limit())
        call = new_call(request, "/v1/completions", body, req.model, req.stream)
        return await proxy.serve(call)

    return router
