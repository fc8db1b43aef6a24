"""Tracing, when configured: one trace per request across the gateway, sidecars and backend."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from fake_sidecars import FakeSidecars
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.tracing import Tracing, traces_endpoint
from gwkit import MODEL, MakeBackend, MakeGateway, backend, chat

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
                "model": "served-name",
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
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
    for name in ("cache.lookup", f"chat {MODEL}"):
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


async def test_the_inference_span_follows_the_genai_conventions(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    """OpenTelemetry's GenAI semantic conventions (client inference span), with
    today's attribute names beside them for one release."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "model": "served-name",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    url = await serve_app(app)
    exporter = InMemorySpanExporter()
    gw = await make_gateway(
        [backend(url)],
        tracing=Tracing.with_processor(SimpleSpanProcessor(exporter)),
        cache_target=sidecars.target,  # a cached request keeps its answer: model, id, reasons
    )
    body = chat(temperature=0, top_p=0.5, max_tokens=9, seed=3)
    assert (await gw.post("/v1/chat/completions", json=body)).status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    call = spans[f"chat {MODEL}"]
    assert call.kind.name == "CLIENT"
    attrs = dict(call.attributes or {})
    port = int(url.rsplit(":", 1)[1])
    assert attrs == attrs | {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": MODEL,
        "gen_ai.request.stream": False,
        "gen_ai.request.max_tokens": 9,
        "gen_ai.request.temperature": 0.0,
        "gen_ai.request.top_p": 0.5,
        "gen_ai.request.seed": 3,
        "gen_ai.response.model": "served-name",
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.finish_reasons": ("length",),
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": 1,
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
        "llmgw.endpoint": url,
        "llmgw.attempts": 1,
        # today's names, for one release
        "model": MODEL,
        "endpoint": url,
        "attempts": 1,
    }
    assert "error.type" not in attrs and "gen_ai.request.choice.count" not in attrs
    root = dict(spans["POST /v1/chat/completions"].attributes or {})
    assert root == root | {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
        "llmgw.tenant": "default",
        "llmgw.cache": "MISS",
        "llmgw.outcome": "success",
        # today's names, for one release
        "llm.model": MODEL,
        "llm.stream": False,
        "tenant": "default",
        "cache": "MISS",
        "outcome": "success",
    }


async def test_a_streamed_text_completion_is_text_completion_with_its_first_chunk_time(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    exporter = InMemorySpanExporter()
    gw = await make_gateway(
        [backend(await make_backend(output_tokens=3))],
        tracing=Tracing.with_processor(SimpleSpanProcessor(exporter)),
    )
    body = {
        "model": MODEL,
        "prompt": "hi",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert (await gw.post("/v1/completions", json=body)).status_code == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    attrs: dict[str, Any] = dict(spans[f"text_completion {MODEL}"].attributes or {})
    assert attrs["gen_ai.operation.name"] == "text_completion"
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert 0 < attrs["gen_ai.response.time_to_first_chunk"] < 5
    root = dict(spans["POST /v1/completions"].attributes or {})
    assert root["gen_ai.operation.name"] == "text_completion"


async def test_a_failed_call_says_why_in_error_type(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom"}}, status=500)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    exporter = InMemorySpanExporter()
    gw = await make_gateway(
        [backend(await serve_app(app))],
        tracing=Tracing.with_processor(SimpleSpanProcessor(exporter)),
    )
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code >= 500
    call = {s.name: s for s in exporter.get_finished_spans()}[f"chat {MODEL}"]
    assert call.attributes is not None and call.attributes["error.type"]
    assert call.status.status_code.name == "ERROR"
    assert "gen_ai.usage.output_tokens" not in call.attributes


@pytest.mark.parametrize(
    ("setting", "environ", "expected"),
    [
        ("", {}, ""),
        ("http://gw:4318/v1/traces", {}, "http://gw:4318/v1/traces"),
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"),
        (
            "",
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom",
            },
            "http://t:4318/custom",
        ),
        (
            "http://gw:4318/v1/traces",
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"},
            "http://gw:4318/v1/traces",
        ),
        ("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_TRACES_EXPORTER": "none"}, ""),
        ("http://gw:4318/v1/traces", {"OTEL_SDK_DISABLED": "true"}, ""),
    ],
)
def test_the_standard_otlp_variables_enable_tracing(
    setting: str, environ: dict[str, str], expected: str
) -> None:
    assert traces_endpoint(setting, environ) == expected


def test_an_otlp_endpoint_in_the_environment_alone_turns_tracing_on() -> None:
    tracing = Tracing.from_settings("", 1.0, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        assert tracing.enabled
    finally:
        tracing.shutdown()
    assert not Tracing.from_settings("", 1.0, {}).enabled


def _service_name(tracing: Tracing) -> Any:
    assert tracing._provider is not None
    return tracing._provider.resource.attributes["service.name"]


def test_otel_service_name_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert _service_name(Tracing.with_processor(SimpleSpanProcessor(InMemorySpanExporter()))) == (
        "llmgw-gateway"
    )
    monkeypatch.setenv("OTEL_SERVICE_NAME", "edge-gateway")
    assert _service_name(Tracing.with_processor(SimpleSpanProcessor(InMemorySpanExporter()))) == (
        "edge-gateway"
    )
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-resource,team=x")
    assert _service_name(Tracing.with_processor(SimpleSpanProcessor(InMemorySpanExporter()))) == (
        "from-resource"
    )


def test_a_stream_cut_after_its_200_is_an_error_and_a_cancelled_one_is_not() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exporter))
    for outcome in ("stream_truncated", "cancelled", "success"):
        _, context = tracing.start_request(
            "/v1/chat/completions", {}, kind="chat", model="m", stream=True
        )
        span = tracing.start_inference(context)
        Tracing.end_inference(span, 200 if outcome != "cancelled" else 499, outcome)
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["chat m"] * 3
    assert [(s.attributes or {}).get("error.type") for s in spans] == [
        "stream_truncated",
        "cancelled",
        None,
    ]
    assert [s.status.status_code.name for s in spans] == ["ERROR", "UNSET", "UNSET"]
