"""Serving one generation request: admission, faults, and timed output (streamed or not).

Token ``i`` is due ``ttft + i * inter_token`` after the request is admitted; each
wait is measured against that schedule, so delays do not add up. A client that
goes away cancels the handler (aiohttp's handler cancellation), which stops the
generation where it is and releases the slot in ``finally``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import NoReturn

import orjson
from aiohttp import web

from llmgw_common.logs import get_logger
from mockllm.admission import Admission
from mockllm.engine import Engine
from mockllm.errors import InjectedStatus, MockError
from mockllm.faults import Fault, FaultKind
from mockllm.metrics import Metrics
from mockllm.plan import Plan, make_plan, resolve_fault
from mockllm.render import PING
from mockllm.responses import ResponsesRenderer, Stored, as_chat_body
from mockllm.rich import RichRenderer
from mockllm.schema import Kind
from mockllm.settings import Settings

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}
CLIENT_GONE = 499

log = get_logger("mockllm.generate")


async def _forever() -> NoReturn:
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")  # pragma: no cover


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


class Generator:
    """The two generation endpoints, sharing one admission queue and one set of metrics."""

    def __init__(
        self,
        settings: Settings,
        admission: Admission,
        metrics: Metrics,
        default: Fault | None,
        engine: Engine | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine if engine is not None else Engine(settings)
        self._admission = admission
        self._metrics = metrics
        self._default_fault = default
        self._ping_s = settings.ping_interval_ms / 1000.0
        self.stored = Stored()  # the Responses API's stored responses

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "completion")

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The Responses API: the chat generation, rendered as its events (mockllm.responses)."""
        return await self._handle(request, "chat", responses=True)

    async def _handle(
        self, request: web.Request, kind: Kind, *, responses: bool = False
    ) -> web.StreamResponse:
        status = CLIENT_GONE
        try:
            fault = resolve_fault(request.headers, self._default_fault)
            if fault is not None and fault.kind is FaultKind.STATUS:
                raise InjectedStatus(fault.arg)
            body, store = await request.read(), False
            if responses:
                body, store = as_chat_body(body, self.stored)
            plan = make_plan(kind, body, request.headers, self._settings, fault)
            if responses:
                keep = self.stored if store else None
                plan = replace(
                    plan, renderer=ResponsesRenderer(plan.renderer.model, plan.usage, keep)
                )
            if plan.stream:
                resp = await self._stream(request, plan)
            else:
                resp = await self._respond(request, plan)
            status = resp.status
            return resp
        except MockError as exc:
            status = exc.http_status
            raise
        finally:
            self._metrics.requests.labels(request.path, str(status)).inc()
            log.debug(
                "request_done",
                path=request.path,
                status=status,
                request_id=request.headers.get("X-Request-Id"),
            )

    async def _stream(self, request: web.Request, plan: Plan) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        if self._settings.queue_style == "llamacpp" and not self._admission.has_room():
            await resp.prepare(request)
            await self._wait_with_pings(resp)
        else:
            await self._admission.acquire()
        held = 0
        try:
            held = await self._prefill(plan)
            start = asyncio.get_running_loop().time()
            fault = plan.fault
            if fault is not None and fault.kind is FaultKind.HANG:
                await _forever()
            if not resp.prepared:
                await resp.prepare(request)
            if fault is not None and fault.kind is FaultKind.HANG_AFTER_HEADERS:
                await _forever()
            await self._send_tokens(request, resp, plan, start)
        finally:
            self._engine.release(held)
            self._admission.release()
        return resp

    async def _prefill(self, plan: Plan) -> int:
        """The prompt's prefill (prefix cache, shared compute); the KV blocks it holds."""
        if not self._engine.enabled:
            return 0
        return await self._engine.prefill(
            plan.prompt, plan.usage.prompt_tokens, plan.usage.completion_tokens
        )

    async def _wait_with_pings(self, resp: web.StreamResponse) -> None:
        """llama.cpp style: headers are out; keep the stream alive with comments until admitted."""
        pinger = asyncio.create_task(self._ping(resp))
        try:
            await self._admission.acquire()
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)

    async def _ping(self, resp: web.StreamResponse) -> None:
        while True:
            await asyncio.sleep(self._ping_s)
            await resp.write(PING)

    async def _send_tokens(
        self, request: web.Request, resp: web.StreamResponse, plan: Plan, start: float
    ) -> None:
        render = plan.renderer
        tokens = plan.tokens
        last = len(tokens) - 1
        stop_at = _stop_index(plan.fault)
        loop = asyncio.get_running_loop()
        for i, token in enumerate(tokens):
            delay = start + plan.ttft_s + i * plan.itl_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if i == stop_at:
                break
            chunk = render.token_chunk(token, plan.finish_reason if i == last else None)
            if i == 0:
                chunk = render.role_chunk() + chunk
            if i == last and stop_at is None:
                if plan.include_usage:
                    chunk += render.usage_chunk(plan.usage)
                chunk += render.end
                self._metrics.success.labels(render.model, plan.finish_reason).inc()
            await resp.write(chunk)
        else:
            if stop_at is None:
                return
            # The fault's n is at least the stream's length: it strikes after the last token.
            await _sleep_until(start + plan.token_due(len(tokens)))
        self._strike(request, plan)
        if plan.fault is not None and plan.fault.kind is FaultKind.ERROR_EVENT:
            await resp.write(render.error(f"Injected fault after {stop_at} tokens"))

    async def _respond(self, request: web.Request, plan: Plan) -> web.StreamResponse:
        await self._admission.acquire()
        held = 0
        try:
            held = await self._prefill(plan)
            start = asyncio.get_running_loop().time()
            fault = plan.fault
            if fault is not None and fault.kind is FaultKind.HANG:
                await _forever()
            if fault is not None and fault.kind is FaultKind.HANG_AFTER_HEADERS:
                resp = web.StreamResponse(headers={"Content-Type": "application/json"})
                await resp.prepare(request)
                await _forever()
            stop_at = _stop_index(fault)
            count = len(plan.tokens)
            await _sleep_until(
                start + plan.token_due(count - 1 if stop_at is None else min(stop_at, count))
            )
            if stop_at is not None:
                self._strike(request, plan)
                return web.Response(status=200)  # the connection is closed: nothing is sent
        finally:
            self._engine.release(held)
            self._admission.release()
        render = plan.renderer
        if isinstance(render, RichRenderer):
            body = render.response_of(plan.tokens, plan.finish_reason, plan.usage)
        else:
            body = orjson.dumps(
                render.response("".join(plan.tokens), plan.finish_reason, plan.usage)
            )
        self._metrics.success.labels(render.model, plan.finish_reason).inc()
        return web.Response(body=body, content_type="application/json")

    @staticmethod
    def _strike(request: web.Request, plan: Plan) -> None:
        """Apply a cut (close the connection) or, not streaming, an error-event (500)."""
        fault = plan.fault
        if fault is None:
            return
        if fault.kind is FaultKind.CUT:
            if request.transport is not None:
                request.transport.close()
        elif fault.kind is FaultKind.ERROR_EVENT and not plan.stream:
            raise MockError(f"Injected fault after {fault.arg} tokens")


def _stop_index(fault: Fault | None) -> int | None:
    if fault is not None and fault.kind in (FaultKind.CUT, FaultKind.ERROR_EVENT):
        return fault.arg
    return None
