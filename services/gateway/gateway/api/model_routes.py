"""``POST /v1/responses`` and the other model-routed POST routes of vLLM's server.

Every route here sends the request body, untouched, to the pool of the model
it names, through the same :class:`Proxy` as chat: the caller's key and limits
(``Gate``), the body limit, routing, failover before the first byte, the
retry budget, timeouts, the breaker, metrics (``route`` is the path), the log
line and traces. None of them is cached.

- ``/v1/responses``, streamed or not (``protocol.responses`` watches its
  events: ``response.completed`` ends it, ``response.failed`` / ``error``
  fail it, and a stream the model server cuts ends with an ``error`` event
  of the gateway's). Not cached: a response may be stored by the model
  server and referred to later (``previous_response_id``), carries tools and
  reasoning items, and its stream is typed events the cache does not replay.
  Not continued after a cut either (continuation is chat and completions).
- **Pinning**: vLLM keeps stored responses in the memory of the replica that
  made them, so a request with ``previous_response_id`` is sent only to the
  replica that answered that id (:class:`gateway.api.pins.Pins`, shared by the
  gateway replicas through Redis when it is configured; an unknown id is
  routed as usual, and that replica answers whether it has it).
  A pinned request does not fail over: another replica would not know the id.
- ``PASSTHROUGH_ROUTES``: vLLM's ``/tokenize``, ``/detokenize``, rerank and
  score routes, pooling and classification; ``/v1/embeddings`` comes here
  when a backend serves the embedding model asked for (``api.embeddings``).
  The answer comes back whole, as the model server sent it.
- ``AUDIO_ROUTES``: vLLM's ``/v1/audio/transcriptions`` and ``translations``,
  multipart forms forwarded untouched to the pool of the form's ``model``
  (read by ``api.forms`` without parsing the audio); a streamed
  transcription comes back whole too.

- ``/v1/responses/{id}`` (retrieve, delete, ``/cancel``, ``/input_items``)
  goes to the endpoint that answered that id, for the model it was; an id
  no gateway replica answered (or that was forgotten) is a 404 of its own.

Where the issue is silent: ``model`` is required on every route (vLLM fills
in its one model when it is missing; a gateway in front of several cannot).
Without Redis, pins live in one gateway process: with several gateway
replicas (or workers), a client that refers to a stored response needs to come
back to the same one, or the model server answers that it does not know the id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from gateway.api import openapi
from gateway.api.body import read_body, request_id
from gateway.api.forms import form_field
from gateway.api.pins import Pins
from gateway.asgi import Handler
from gateway.errors import InvalidRequest
from gateway.gate import Gate
from gateway.protocol.calls import Kind
from gateway.proxy.call import Call, Completion, forwardable_headers, upstream_request_id
from gateway.proxy.handler import Proxy
from gateway.settings import GatewaySettings
from gateway.tenancy import Tenant
from gateway.tracing import Tracing

PASSTHROUGH_ROUTES = (
    "/tokenize",
    "/detokenize",
    "/v1/rerank",
    "/rerank",
    "/v2/rerank",
    "/v1/score",
    "/score",
    "/pooling",
    "/classify",
)
# vLLM's speech-to-text routes: multipart forms (``file``, ``model``...), forwarded
# untouched; the model is read from the form (``api.forms``). An audio file may be
# larger than a JSON body: up to OpenAI's 25 MB, or GATEWAY_MAX_BODY_BYTES if larger.
AUDIO_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
AUDIO_MAX_BYTES = 25 * 1024 * 1024
# gen_ai.operation.name of a passthrough route: the conventions' names where they have one.
_OPERATIONS = {"/v1/embeddings": "embeddings"}

# Forward a request whose body is read: (request, path, body, request id, tenant).
Forward = Callable[[Request, str, bytes, str, Tenant], Awaitable[Response]]


def model_of(body: bytes) -> tuple[str, dict[str, object]]:
    """The ``model`` a JSON body names, and the body; a 400 in the OpenAI shape if none."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("Invalid value for 'model': a model name is required")
    return model, data


def new_call(
    request: Request,
    rid: str,
    kind: Kind,
    model: str,
    body: bytes,
    *,
    stream: bool = False,
    **fields: Any,
) -> Call:
    """The :class:`Call` of a request whose body is read (its headers as forwarded,
    its request id as the backend sees it)."""
    upstream_id = upstream_request_id(rid)
    return Call(
        kind=kind,
        model=model,
        stream=stream,
        body=body,
        headers=forwardable_headers(request.scope["headers"], upstream_id),
        request_id=rid,
        upstream_id=upstream_id if upstream_id != rid else "",
        receive=request.receive,
        **fields,
    )


def model_routes(
    settings: GatewaySettings, proxy: Proxy, gate: Gate, tracing: Tracing, pins: Pins
) -> tuple[APIRouter, dict[str, Handler], Forward]:
    """The router (OpenAPI, fallback), the hot handlers, and ``forward`` for embeddings."""
    router = APIRouter()
    limit = settings.max_body_bytes

    def remember(call: Call, completion: Completion) -> None:
        """A stream whose response.created was not in its first bytes: pinned at its end."""
        if call.stream and completion.succeeded and call.answer_id and call.endpoint:
            pins.add(call.answer_id, call.endpoint, call.model)

    async def send(
        request: Request, kind: Kind, path: str, body: bytes, model: str, rid: str, tenant: Tenant
    ) -> Response:
        call = new_call(request, rid, kind, model, body, path=path)
        return await start(call, kind, tenant)

    async def start(call: Call, kind: Kind, tenant: Tenant, **request: object) -> Response:
        if tracing.enabled:
            operation = kind.value if kind is Kind.RESPONSES else _operation(call.route)
            call.span, call.trace = tracing.start_request(
                call.route,
                call.headers,
                kind=operation,
                model=call.model,
                stream=call.stream,
                request=request,
                tenant=tenant.name,
                request_id=call.request_id,
            )
            tracing.inject(call.trace, call.headers)
        if kind is not Kind.RESPONSES:
            return await proxy.serve(call)
        response = await proxy.serve(call, observe=remember)
        if call.answer_id and call.endpoint and call.stream:
            # Pinned at its response.created (written in the background: the client
            # cannot refer to it before the stream ends; an unsent stream holds a lease).
            pins.add(call.answer_id, call.endpoint, call.model)
        elif call.answer_id and call.endpoint:  # a whole answer goes once Redis has its pin
            await pins.pin(call.answer_id, call.endpoint, call.model)
        return response

    async def enter(request: Request, body_limit: int = limit) -> tuple[str, Tenant, bytes]:
        rid = request_id(request)
        request.state.request_id = rid
        tenant = await gate.enter(request)
        return rid, tenant, await read_body(request, body_limit)

    async def forward(
        request: Request, path: str, body: bytes, rid: str, tenant: Tenant
    ) -> Response:
        model, _ = model_of(body)
        return await send(request, Kind.PASSTHROUGH, path, body, model, rid, tenant)

    @router.post(Kind.RESPONSES.route, responses=openapi.COMPLETION_RESPONSES)
    async def responses(request: Request) -> Response:
        rid, tenant, body = await enter(request)
        model, data = model_of(body)
        tokens = data.get("max_output_tokens")
        if isinstance(tokens, int) and tokens > settings.max_tokens_limit:
            raise InvalidRequest(
                f"max_output_tokens is over the limit of {settings.max_tokens_limit}"
            )
        given = data.get("input")
        if isinstance(given, list) and len(given) > settings.max_messages:
            raise InvalidRequest(f"Too many input items: the limit is {settings.max_messages}")
        call = new_call(
            request, rid, Kind.RESPONSES, model, body, stream=data.get("stream") is True
        )
        previous = data.get("previous_response_id")
        pinned = await pins.get(previous) if isinstance(previous, str) else None
        if pinned is not None and pinned[1] == model:
            call.pinned = pinned[0]
        return await start(
            call,
            Kind.RESPONSES,
            tenant,
            **{
                "gen_ai.request.max_tokens": tokens,
                "gen_ai.request.temperature": data.get("temperature"),
                "gen_ai.request.top_p": data.get("top_p"),
            },
        )

    async def stored(request: Request, response_id: str, method: str, suffix: str = "") -> Response:
        """A request about a stored response: to the endpoint that answered it."""
        rid = request_id(request)
        request.state.request_id = rid
        tenant = await gate.enter(request)
        body = await read_body(request, limit) if method == "POST" else b""
        pinned = await pins.get(response_id)
        if pinned is None:  # not answered through this gateway process (or forgotten)
            raise HTTPException(404, f"No response with id {response_id!r} is known here")
        call = new_call(
            request,
            rid,
            Kind.PASSTHROUGH,
            pinned[1],
            body,
            path=f"{Kind.RESPONSES.route}/{response_id}{suffix}",
            template=f"{Kind.RESPONSES.route}/{{id}}{suffix}",
            method=method,
            pinned=pinned[0],
        )
        return await start(call, Kind.PASSTHROUGH, tenant)

    one = Kind.RESPONSES.route + "/{response_id}"

    @router.get(one, responses=openapi.ERRORS)
    async def retrieve_response(request: Request, response_id: str) -> Response:
        return await stored(request, response_id, "GET")

    @router.delete(one, responses=openapi.ERRORS)
    async def delete_response(request: Request, response_id: str) -> Response:
        return await stored(request, response_id, "DELETE")

    @router.post(one + "/cancel", responses=openapi.ERRORS)
    async def cancel_response(request: Request, response_id: str) -> Response:
        return await stored(request, response_id, "POST", "/cancel")

    @router.get(one + "/input_items", responses=openapi.ERRORS)
    async def response_input_items(request: Request, response_id: str) -> Response:
        return await stored(request, response_id, "GET", "/input_items")

    def audio(path: str) -> Handler:
        async def handler(request: Request) -> Response:
            rid, tenant, body = await enter(request, max(limit, AUDIO_MAX_BYTES))
            model = form_field(body, request.headers.get("content-type", ""), "model")
            if not model:
                raise InvalidRequest(
                    "Invalid value for 'model': a model name is required"
                    " (in a multipart/form-data form)"
                )
            return await send(request, Kind.PASSTHROUGH, path, body, model, rid, tenant)

        return handler

    hot: dict[str, Handler] = {Kind.RESPONSES.route: responses}
    for path in AUDIO_ROUTES:
        hot[path] = audio(path)
        router.add_api_route(
            path, hot[path], methods=["POST"], responses=openapi.ERRORS, summary=f"POST {path}"
        )
    for path in PASSTHROUGH_ROUTES:
        hot[path] = _passthrough(path, enter, forward)
        router.add_api_route(
            path, hot[path], methods=["POST"], responses=openapi.ERRORS, summary=f"POST {path}"
        )
    return router, hot, forward


def _passthrough(
    path: str,
    enter: Callable[[Request], Awaitable[tuple[str, Tenant, bytes]]],
    forward: Forward,
) -> Handler:
    async def handler(request: Request) -> Response:
        rid, tenant, body = await enter(request)
        return await forward(request, path, body, rid, tenant)

    return handler


def _operation(route: str) -> str:
    return _OPERATIONS.get(route) or route.rsplit("/", 1)[-1]
