"""Tracing, when configured: one trace per request across the gateway, sidecars and backend."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from fake_sidecars import FakeSidecars
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.tracing import Tracing
from gwkit import MakeGateway, backend, chat

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"


async def test_request_cache_lookup_and_upstream_share_one_trace_that_reaches_the_backend(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    exporter = InMemorySpanExporter()
    gw = await make_gateway(
        [backend(await serve_app(app))],
        tracing=Tracing.with_processor(SimpleSpanProcessor(exporter)),
        cache_target=sidecars.target,
        cache_lookup_budget_ms=2000,
        cache_head_start_ms=600_000,  # the lookup (exact only: no embedder) ends before upstream
    )
    caller = {"traceparent": f"00-{CALLER_TRACE}-b7ad6b7169203331-01"}
    reply = await gw.post("/v1/chat/completions", json=chat(temperature=0), headers=caller)
    assert reply.status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    root = spans["POST /v1/chat/completions"]
    assert format(root.context.trace_id, "032x") == CALLER_TRACE  # the caller's trace goes on
    for name in ("cache.lookup", "upstream"):
        assert spans[name].parent is not None
        assert spans[name].parent.span_id == root.context.span_id
    # The model server joins the trace as a child of the gateway's span, not the caller's.
    assert seen[0] == f"00-{CALLER_TRACE}-{root.context.span_id:016x}-01"
    assert CALLER_TRACE in sidecars.cache.faults.metadata.get("traceparent", "")
    assert root.attributes is not None and root.attributes["cache"] == "MISS"


async def test_tracing_off_sends_no_trace_headers(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    gw = await make_gateway([backend(await serve_app(app))])
    await gw.post("/v1/chat/completions", json=chat())
    assert "traceparent" not in {k.lower() for k in seen[0]}
