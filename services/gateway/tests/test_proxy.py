"""The proxy as a client sees it: streams pass through whole, failures are explicit."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import structlog.testing
from aiohttp import web

from gwkit import MODEL, MakeBackend, MakeGateway, backend, chat, content, events


async def test_stream_passes_every_token_and_done(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend()
    gw = await make_gateway([backend(url)])
    reply = await gw.post("/v1/chat/completions", json=chat("tell me", stream=True))
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.headers["x-accel-buffering"] == "no"
    assert events(reply.text)[-1] == "[DONE]"
    direct = await gw.post("/v1/chat/completions", json=chat("tell me"))
    assert content(reply.text) == direct.json()["choices"][0]["message"]["content"]
    assert len(content(reply.text).split()) == 8


async def test_non_stream_and_completions_pass_through(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    reply = await gw.post("/v1/chat/completions", json=chat("hi", max_tokens=3))
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] == 3
    completion = await gw.post("/v1/completions", json={"model": MODEL, "prompt": "once"})
    assert completion.status_code == 200
    assert completion.json()["object"] == "text_completion"


async def test_request_id_is_kept_and_passed_on_and_gateway_credentials_are_not(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"id": "x", "object": "chat.completion", "choices": []})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    gw = await make_gateway([backend(await serve_app(app))])
    reply = await gw.post(
        "/v1/chat/completions",
        json=chat(),
        headers={"X-Request-ID": "abc-123", "Authorization": "Bearer secret"},
    )
    assert reply.headers["x-request-id"] == "abc-123"
    # Backends get a UUID (llama-cpp-python refuses other ids); the client keeps its own.
    assert uuid.UUID(seen[0]["X-Request-ID"])
    assert "Authorization" not in seen[0]
    fresh = await gw.post("/v1/chat/completions", json=chat())
    assert len(fresh.headers["x-request-id"]) >= 16
    assert seen[1]["X-Request-ID"] == fresh.headers["x-request-id"]
    given = str(uuid.uuid4())
    await gw.post("/v1/chat/completions", json=chat(), headers={"X-Request-ID": given})
    assert seen[2]["X-Request-ID"] == given


async def test_bad_input_gets_openai_errors(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())], max_body_bytes=2048)
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "invalid_request_error"),
        (orjson.dumps({"model": MODEL, "messages": "hi"}), 400, "invalid_request_error"),
        (orjson.dumps({"model": MODEL, "messages": []}), 400, "invalid_request_error"),
        (orjson.dumps(chat(temperature="hot")), 400, "invalid_request_error"),
        (orjson.dumps(chat(max_tokens=10**9)), 400, "invalid_request_error"),
        (orjson.dumps(chat(top_k="many")), 400, "invalid_request_error"),
        (orjson.dumps(chat(repetition_penalty=-1)), 400, "invalid_request_error"),
        (orjson.dumps(chat(repeat_penalty="x")), 400, "invalid_request_error"),
        (orjson.dumps(chat(logit_bias={"50256": "ban"})), 400, "invalid_request_error"),
        (orjson.dumps({**chat(), "model": "no-such-model"}), 404, "invalid_request_error"),
        (orjson.dumps(chat("x" * 4096)), 413, "invalid_request_error"),
    ]
    for body, status, kind in cases:
        reply = await gw.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert reply.status_code == status, (body[:60], reply.text)
        error = reply.json()["error"]
        assert error["type"] == kind
        assert error["message"]


async def test_failover_before_first_byte_hides_a_failing_backend(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    bad = await make_backend(fault="status:503")
    good = await make_backend()
    gw = await make_gateway([backend(bad), backend(good)])
    for stream in (True, False) * 5:
        reply = await gw.post("/v1/chat/completions", json=chat(stream=stream))
        assert reply.status_code == 200
        if stream:
            assert events(reply.text)[-1] == "[DONE]"


async def test_every_backend_failing_gives_a_clean_error(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend(fault="status:500"))])
    reply = await gw.post("/v1/chat/completions", json=chat(stream=True))
    assert reply.status_code == 502
    assert reply.json()["error"]["type"] == "upstream_error"
    nobody = await make_gateway([backend("http://127.0.0.1:9")], connect_timeout_s=0.5)
    reply = await nobody.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 502
    assert "could not be reached" in reply.json()["error"]["message"]


async def test_error_event_inside_200_stream_reaches_the_client_and_counts_as_failure(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    reply = await gw.post(
        "/v1/chat/completions", json=chat(stream=True), headers={"X-Mock-Fault": "error-event:3"}
    )
    assert reply.status_code == 200
    errors = [e for e in events(reply.text) if e.startswith("{") and "error" in orjson.loads(e)]
    assert len(errors) == 1  # the backend's own event, not doubled by the gateway
    metrics = (await gw.get("/metrics")).text
    assert 'outcome="stream_error_event"} 1.0' in metrics


async def test_stream_cut_before_done_ends_with_an_error_event(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    reply = await gw.post(
        "/v1/chat/completions", json=chat(stream=True), headers={"X-Mock-Fault": "cut:3"}
    )
    data = events(reply.text)
    assert "[DONE]" not in data
    error = orjson.loads(data[-1])["error"]
    assert error["type"] == "upstream_error"
    assert "before it was complete" in error["message"]


async def test_backend_that_stops_mid_stream_times_out_with_an_error_event(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend(output_tokens=50, inter_token_ms=1)
    gw = await make_gateway([backend(url)], idle_timeout_s=0.3)
    reply = await gw.post(
        "/v1/chat/completions",
        json=chat(stream=True),
        headers={"X-Mock-Fault": "hang-after-headers"},
    )
    assert reply.status_code == 504 or orjson.loads(events(reply.text)[-1])["error"]["code"] == (
        "upstream_timeout"
    )


async def test_hanging_backend_times_out_before_first_byte(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(
        [backend(await make_backend(fault="hang"))], ttft_timeout_s=0.3, total_timeout_s=0.5
    )
    for stream in (True, False):
        reply = await gw.post("/v1/chat/completions", json=chat(stream=stream))
        assert reply.status_code == 504, reply.text
        assert reply.json()["error"]["code"] == "upstream_timeout"


async def test_backend_4xx_is_passed_without_its_internals(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, text="Traceback (most recent call last):\n  File x")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    gw = await make_gateway([backend(await serve_app(app))])
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 400
    assert "Traceback" not in reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


async def test_models_health_readiness_and_metrics(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    one = await make_backend(models="alpha")
    two = await make_backend(models="beta,alpha")
    gw = await make_gateway([backend(one, "alpha"), backend(two, "beta", "alpha")])
    models = await gw.get("/v1/models")
    assert [m["id"] for m in models.json()["data"]] == ["alpha", "beta"]
    assert (await gw.get("/healthz")).status_code == 200
    assert (await gw.get("/readyz")).status_code == 200
    await gw.post("/v1/chat/completions", json={**chat(), "model": "beta"})
    text = (await gw.get("/metrics")).text
    assert (
        'gateway_requests_total{cache="BYPASS",model="beta",'
        'route="/v1/chat/completions",status="200"} 1.0' in text
    )
    assert "gateway_backend_ewma_cost_seconds" in text
    empty = await make_gateway([])
    assert (await empty.get("/readyz")).status_code == 503
    assert (await empty.post("/v1/chat/completions", json=chat())).status_code == 404


async def test_a_backend_s_configured_name_names_its_endpoint(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend()
    gw = await make_gateway([{**backend(url), "name": "replica-a"}])
    await gw.post("/v1/chat/completions", json=chat())
    text = (await gw.get("/metrics")).text
    assert 'endpoint="replica-a"' in text
    assert f'endpoint="{url}"' not in text


async def test_models_are_read_from_backends_that_do_not_declare_them(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend(models="gamma")
    gw = await make_gateway([{"url": url}])
    assert [m["id"] for m in (await gw.get("/v1/models")).json()["data"]] == ["gamma"]
    reply = await gw.post("/v1/chat/completions", json={**chat(), "model": "gamma"})
    assert reply.status_code == 200


async def test_prompts_and_completions_stay_out_of_logs_unless_enabled(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend()
    secret = "my secret diagnosis is zebra"
    for enabled in (False, True):
        gw = await make_gateway([backend(url)], log_prompts=enabled)
        with structlog.testing.capture_logs() as logs:
            for stream in (False, True):
                reply = await gw.post("/v1/chat/completions", json=chat(secret, stream=stream))
                assert reply.status_code == 200
        lines = [e for e in logs if e["event"] == "request_done" and "route" in e]
        assert len(lines) == 2
        dumped = str(logs)
        answer = content(reply.text)
        if enabled:
            assert all(line["prompt"] == secret for line in lines)
            assert answer and all(line["completion"] == answer for line in lines)
        else:
            assert secret not in dumped and answer not in dumped


async def test_oversized_headers_get_431(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())], max_header_bytes=1024)
    reply = await gw.post("/v1/chat/completions", json=chat(), headers={"X-Big": "x" * 2000})
    assert reply.status_code == 431
    assert reply.json()["error"]["code"] == "headers_too_large"


async def test_token_metrics_come_from_usage_or_counted_chunks(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend(output_tokens=6))])
    await gw.post("/v1/chat/completions", json=chat("count me"))
    await gw.post("/v1/chat/completions", json=chat("count me", stream=True))
    text = (await gw.get("/metrics")).text
    assert 'gateway_tokens_total{direction="out",model="mock-llama-3-8b"} 12.0' in text
    assert 'gateway_tokens_total{direction="in",model="mock-llama-3-8b"}' in text
