"""Failures blamed on their cause, through the real gateway and mock replicas.

A request every replica answers with 500 (a field that crashes the server's
handler) is the request's fault: it is answered with a 502 that tells SDKs not
to retry, and it ejects no replica however often it is sent, while honest
traffic flows alongside. A replica that fails alone is still charged. A
context-length error is the client's 400 whatever status it came with.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.balance.outcome import is_context_overflow
from gwkit import MakeBackend, MakeGateway, backend, chat

POISON = {"X-Mock-Fault": "status:500"}
FAST_BREAKER = {"breaker_consecutive_failures": 2, "breaker_base_ejection_s": 30}


def samples(text: str, name: str) -> dict[str, float]:
    return {
        s.labels.get("endpoint", ""): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_requests_that_fail_everywhere_eject_no_replica(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    urls = [await make_backend() for _ in range(3)]
    gw = await make_gateway([backend(u) for u in urls], **FAST_BREAKER)

    async def honest() -> int:
        return (await gw.post("/v1/chat/completions", json=chat("hi"))).status_code

    async def poison() -> httpx.Response:
        return await gw.post("/v1/chat/completions", json=chat("boom"), headers=POISON)

    blamed_on_request = 0
    for _ in range(10):
        answers = await asyncio.gather(*(poison() for _ in range(4)), honest(), honest())
        for resp in answers[:4]:
            assert isinstance(resp, httpx.Response)
            assert resp.status_code == 502
            if resp.json()["error"]["code"] == "request_failed":  # else: no retry budget left
                assert resp.headers["x-should-retry"] == "false"
                blamed_on_request += 1
        assert answers[4:] == [200, 200]
    assert blamed_on_request >= 10
    metrics = (await gw.get("/metrics")).text
    ejections = samples(metrics, "gateway_backend_ejections")
    assert len(ejections) == 3
    assert set(ejections.values()) == {0.0}
    assert sum(samples(metrics, "gateway_panic_routings_total").values()) == 0
    attempts = samples(metrics, "gateway_upstream_attempts_total")
    assert attempts  # the attempts were counted (two per poisoned request)


async def test_a_replica_failing_alone_is_still_ejected(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    good = [await make_backend() for _ in range(2)]
    bad = await make_backend(fault="status:500")
    gw = await make_gateway(
        [backend(u) for u in [*good, bad]], **{**FAST_BREAKER, "breaker_consecutive_failures": 1}
    )
    for _ in range(10):  # concurrent, so that load spreads to every replica
        answers = await asyncio.gather(
            *(gw.post("/v1/chat/completions", json=chat("hi")) for _ in range(6))
        )
        assert [a.status_code for a in answers] == [200] * 6
    text = (await gw.get("/metrics")).text
    ejections = samples(text, "gateway_backend_ejections")
    assert ejections.get(bad, 0) >= 1
    assert all(ejections.get(u, 0) == 0 for u in good)


async def test_a_context_overflow_is_the_clients_400_never_retried(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    hits = 0

    async def overflow(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        body = {"error": {"message": "the request exceeds the available context size", "code": 500}}
        return web.Response(status=500, body=orjson.dumps(body), content_type="application/json")

    apps = []
    for _ in range(2):
        app = web.Application()
        app.router.add_post("/v1/chat/completions", overflow)
        apps.append(await serve_app(app))
    gw = await make_gateway([backend(u, "m") for u in apps], **FAST_BREAKER)
    for _ in range(6):
        resp = await gw.post("/v1/chat/completions", json=chat("long", model="m", stream=True))
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert hits == 6  # one attempt each
    ejections = samples((await gw.get("/metrics")).text, "gateway_backend_ejections")
    assert len(ejections) == 2
    assert set(ejections.values()) == {0.0}


def test_the_three_servers_wordings_are_recognised() -> None:
    for message in (
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens",
        "the request exceeds the available context size, try increasing it",
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000",
        "Input validation error: `inputs` must have less than 2048 tokens. Given: 3000",
    ):
        assert is_context_overflow(message)
    assert not is_context_overflow("CUDA out of memory")


async def _error_stream_app(serve_app: Any, message: str, counter: list[int]) -> str:
    async def erring(request: web.Request) -> web.StreamResponse:
        counter.append(1)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        event = {"error": {"message": message, "type": "InternalServerError", "code": 500}}
        await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", erring)
    url: str = await serve_app(app)
    return url


async def test_a_stream_that_opens_with_an_error_is_blamed_like_a_500(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    overflow: list[int] = []
    crash: list[int] = []
    too_long = [
        await _error_stream_app(serve_app, "This model's maximum context length is 8", overflow)
        for _ in range(2)
    ]
    broken = [await _error_stream_app(serve_app, "bad field", crash) for _ in range(2)]
    gw = await make_gateway(
        [backend(u, "long") for u in too_long] + [backend(u, "crash") for u in broken],
        **FAST_BREAKER,
    )
    for _ in range(4):
        resp = await gw.post("/v1/chat/completions", json=chat("x", model="long", stream=True))
        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == "context_length_exceeded"
        resp = await gw.post("/v1/chat/completions", json=chat("x", model="crash", stream=True))
        assert resp.status_code == 502
        assert resp.headers["x-should-retry"] == "false"
    assert len(overflow) == 4  # never retried
    assert len(crash) == 8  # tried on both, then given up
    ejections = samples((await gw.get("/metrics")).text, "gateway_backend_ejections")
    assert set(ejections.values()) == {0.0}
