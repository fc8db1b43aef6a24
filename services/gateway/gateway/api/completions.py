"""``POST /v1/chat/completions`` and ``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.api import openapi
from gateway.api.body import parse, read_body, request_id
from gateway.api.openapi import COMPLETION_RESPONSES
from gateway.asgi import Handler
from gateway.balance.prefix import PromptPrefix, prompt_prefix
from gateway.cache.policy import OPT_IN_HEADER
from gateway.errors import InvalidRequest
from gateway.flow import flow_request
from gateway.gate import Gate
from gateway.protocol.calls import AnyRequest, Kind, prompt_parts, prompt_text
from gateway.protocol.schemas import ChatCompletionRequest, CompletionRequest
from gateway.proxy.call import Call, forwardable_headers, upstream_request_id
from gateway.serving import Completions
from gateway.settings import GatewaySettings
from gateway.tenancy import Tenant
from gateway.tenancy.usage import ask_for_usage
from gateway.tracing import Tracing


def routing_prefix(req: AnyRequest) -> PromptPrefix | None:
    """The prompt as the model server renders it, in order, for prefix affinity."""
    parts = prompt_parts(req)
    return prompt_prefix(parts) if parts is not None else None


def completions_routes(
    settings: GatewaySettings, completions: Completions, gate: Gate, tracing: Tracing
) -> tuple[APIRouter, dict[str, Handler]]:
    """The router (for the OpenAPI document and as a fallback) and the hot handlers."""
    router = APIRouter()
    limit = settings.max_body_bytes
    flow = settings.flow_config(engine_metrics=settings.engine_metrics)

    def check_limits(tokens: int | None, messages: int = 0) -> None:
        if tokens is not None and tokens > settings.max_tokens_limit:
            raise InvalidRequest(f"max_tokens is over the limit of {settings.max_tokens_limit}")
        if messages > settings.max_messages:
            raise InvalidRequest(f"Too many messages: the limit is {settings.max_messages}")

    async def enter(request: Request) -> tuple[str, Tenant]:
        """Request id, header limits, then the caller's key and limits: before any body."""
        rid = request_id(request)
        request.state.request_id = rid
        return rid, await gate.enter(request)

    async def budget(request: Request, call: Call, req: AnyRequest, tenant: Tenant) -> None:
        """Reserve the tenant's tokens (prompt + max_tokens) before anything is sent; ask a
        stream for its usage (tenancy.usage) so the reservation settles on the real one."""
        prompt = call.prefix.tokens if call.prefix is not None else len(call.body) // 4
        limit = req.token_limit() or settings.flow_default_max_tokens
        call.budget = await gate.reserve(request, tenant, prompt, limit)
        if req.stream and (asked := ask_for_usage(call.body)) is not None:
            call.body, call.hide_usage = asked, True

    async def serve(
        request: Request,
        kind: Kind,
        body: bytes,
        req: AnyRequest,
        rid: str,
        tenant: Tenant,
    ) -> Response:
        upstream_id = upstream_request_id(rid)
        call = Call(
            kind=kind,
            model=req.model,
            stream=req.stream,
            body=body,
            headers=forwardable_headers(request.scope["headers"], upstream_id),
            request_id=rid,
            upstream_id=upstream_id if upstream_id != rid else "",
            receive=request.receive,
        )
        if settings.prefix_affinity:
            call.prefix = routing_prefix(req)
        if settings.log_prompts:
            call.prompt = prompt_text(req)
        if flow.active:  # the request's class, weight, cost and deadline (gateway.flow)
            prompt = call.prefix.tokens if call.prefix is not None else len(body) // 4
            call.flow = flow_request(
                flow,
                tenant,
                req.model,
                request.headers,
                prompt_tokens=prompt,
                max_tokens=req.token_limit(),
            )
        if tracing.enabled:
            call.span, call.trace = tracing.start_request(
                kind.route,
                call.headers,
                kind=kind.value,
                model=req.model,
                stream=req.stream,
                request={
                    "gen_ai.request.max_tokens": req.token_limit(),
                    "gen_ai.request.temperature": req.temperature,
                    "gen_ai.request.top_p": req.top_p,
                    "gen_ai.request.seed": req.seed,
                    "gen_ai.request.choice.count": req.n if req.n != 1 else None,
                },
                tenant=tenant.name,
                request_id=rid,
            )
            tracing.inject(call.trace, call.headers)  # traceparent to the model server
        if tenant.tokens_per_min is not None:  # last: nothing may fail before the try
            await budget(request, call, req, tenant)
        try:
            response = await completions.serve(
                call,
                req,
                tenant=tenant.name,
                cache_control=request.headers.get("cache-control", ""),
                opt_in=request.headers.get(OPT_IN_HEADER, ""),
            )
        except BaseException:
            if call.budget is not None:
                call.budget.release()  # (a no-op once the proxy settled it)
            raise
        if call.budget is not None:
            response.raw_headers.extend(call.budget.headers)  # x-ratelimit-*-tokens
        return response

    @router.post(
        Kind.CHAT.route,
        responses=COMPLETION_RESPONSES,
        openapi_extra=openapi.body(ChatCompletionRequest),
    )
    async def chat_completions(request: Request) -> Response:
        rid, tenant = await enter(request)
        body = await read_body(request, limit)
        req = parse(ChatCompletionRequest, body)
        check_limits(req.token_limit(), len(req.messages))
        return await serve(request, Kind.CHAT, body, req, rid, tenant)

    @router.post(
        Kind.COMPLETION.route,
        responses=COMPLETION_RESPONSES,
        openapi_extra=openapi.body(CompletionRequest),
    )
    async def completions_route(request: Request) -> Response:
        rid, tenant = await enter(request)
        body = await read_body(request, limit)
        req = parse(CompletionRequest, body)
        check_limits(req.token_limit())
        return await serve(request, Kind.COMPLETION, body, req, rid, tenant)

    hot: dict[str, Handler] = {
        Kind.CHAT.route: chat_completions,
        Kind.COMPLETION.route: completions_route,
    }
    return router, hot
