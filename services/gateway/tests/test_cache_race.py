"""A cache lookup raced against the upstream: a miss never waits, a hit stops the upstream.

The order of events is forced, never timed: a sidecar is held (its calls wait
for an event the test sets) and the model server below can take a request and
never send its first byte, so "the lookup answered after the upstream started"
and "the upstream answered while the lookup was still running" are facts of
the test, not likelihoods.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import structlog
from aiohttp import web
from fake_sidecars import FakeSidecars, Faults

from gwkit import MakeBackend, MakeGateway, backend, chat, content

CHAT = "/v1/chat/completions"
QUESTION = "how do I learn python quickly"
PARAPHRASE = "quickly learn python how do I"  # the fake embedder's bag of words: a paraphrase
ANSWER = "Practise every day."
FOREVER_MS = 600_000.0


class ModelServer:
    """Answers at once; when ``held``, takes the request and never sends a byte of the
    answer (for a stream: the headers only). It notices a client that goes away."""

    def __init__(self) -> None:
        self.held = False
        self.failing = False
        self.requests = 0
        self.arrived = asyncio.Event()
        self.aborted = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT, self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        if self.failing:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if not self.held:
            return web.json_response(_completion())
        self.arrived.set()
        try:
            if body.get("stream"):
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
            await asyncio.get_running_loop().create_future()  # never
        except asyncio.CancelledError:
            self.aborted.set()
            raise
        raise AssertionError("unreachable")


def _completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "mock-llama-3-8b",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
    }


def det(text: str, **extra: Any) -> dict[str, Any]:
    return chat(text, temperature=0, **extra)


def total(metrics: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    out = 0.0
    for line in metrics.splitlines():
        series, _, value = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            out += float(value)
    return out


async def until(check: Any, within_s: float = 10.0) -> None:
    """Wait (bounded) for a condition the gateway reaches on its own."""
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110 (a metric to poll, no event to wait on)
            await asyncio.sleep(0.005)


async def gateway(
    make_gateway: MakeGateway, sidecars: FakeSidecars, url: str, **settings: Any
) -> Any:
    return await make_gateway(
        [backend(url)],
        cache_target=sidecars.target,
        embedder_target=sidecars.target,
        cache_lookup_budget_ms=FOREVER_MS,  # a held lookup is late, never over budget
        **settings,
    )


async def primed(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars, **settings: Any
) -> tuple[Any, ModelServer]:
    """A gateway whose cache holds ANSWER for QUESTION, and its model server."""
    server = ModelServer()
    gw = await gateway(make_gateway, sidecars, await serve_app(server.app()), **settings)
    first = await gw.post(CHAT, json=det(QUESTION))
    assert first.headers["x-cache"] == "MISS"
    await sidecars.wait_stores(1)
    return gw, server


def hold(faults: Faults) -> asyncio.Event:
    faults.hold = asyncio.Event()
    return faults.hold


@pytest.mark.parametrize("stage", ["exact", "semantic"])
async def test_a_miss_is_answered_while_its_lookup_is_still_held(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars, stage: str
) -> None:
    # Exact stage held: the upstream starts when the head start runs out. Semantic
    # stage held: it starts when the exact lookup misses, the head start notwithstanding.
    faults = sidecars.cache.faults if stage == "exact" else sidecars.embedder.faults
    release = hold(faults)
    head_start = 1.0 if stage == "exact" else FOREVER_MS
    gw = await gateway(make_gateway, sidecars, await make_backend(), cache_head_start_ms=head_start)
    reply = await gw.post(CHAT, json=det("a question nobody asked", stream=True))
    assert (reply.status_code, reply.headers["x-cache"]) == (200, "MISS")
    assert content(reply.text)

    async def abandoned() -> bool:  # before the lookup was allowed to answer
        metrics = (await gw.get("/metrics")).text
        return total(metrics, "gateway_cache_lookups_total", outcome="abandoned") == 1

    await until(abandoned)
    release.set()
    await sidecars.wait_stores(1)  # the miss is stored as usual
    metrics = (await gw.get("/metrics")).text
    assert total(metrics, "gateway_cache_cancelled_upstream_total") == 0
    assert total(metrics, "gateway_in_flight_requests") == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("stage", ["exact", "semantic"])
async def test_a_hit_after_the_upstream_started_cancels_it_and_is_accounted_once(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars, stage: str, stream: bool
) -> None:
    gw, server = await primed(serve_app, make_gateway, sidecars, cache_head_start_ms=1.0)
    server.held = True
    release = hold(sidecars.cache.faults if stage == "exact" else sidecars.embedder.faults)
    asked, expected = (QUESTION, "HIT-EXACT") if stage == "exact" else (PARAPHRASE, "HIT-SEMANTIC")
    with structlog.testing.capture_logs() as logs:
        request = asyncio.ensure_future(gw.post(CHAT, json=det(asked, stream=stream)))
        await asyncio.wait_for(server.arrived.wait(), 10)  # the upstream has the request
        release.set()  # only now may the lookup answer
        reply = await request
        await asyncio.wait_for(server.aborted.wait(), 10)  # the model server saw it go
    assert (reply.status_code, reply.headers["x-cache"]) == (200, expected)
    answer = content(reply.text) if stream else reply.json()["choices"][0]["message"]["content"]
    assert answer == ANSWER
    metrics = (await gw.get("/metrics")).text
    assert total(metrics, "gateway_cache_cancelled_upstream_total") == 1
    assert total(metrics, "gateway_cache_cancelled_upstream_seconds_total") > 0
    assert total(metrics, "gateway_upstream_attempts_total", outcome="cancelled") == 1
    assert total(metrics, "gateway_requests_total", cache=expected) == 1
    assert total(metrics, "gateway_in_flight_requests") == 0
    assert total(metrics, "gateway_backend_pending_requests") == 0
    assert total(metrics, "gateway_backend_breaker_state", state="closed") == 1
    assert total(metrics, "gateway_client_disconnects_total") == 0
    [done] = [e for e in logs if e["event"] == "request_done"]
    assert (done["status"], done["cache"]) == (200, expected)
    assert done["upstream_cancelled_ms"] > 0


async def test_an_exact_hit_starts_neither_the_upstream_nor_the_embedder(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    # A head start longer than the test: the exact lookup always answers within it.
    gw, server = await primed(serve_app, make_gateway, sidecars, cache_head_start_ms=FOREVER_MS)
    requests, embeds = server.requests, sidecars.embedder.faults.calls
    for stream in (False, True):
        reply = await gw.post(CHAT, json=det(QUESTION, stream=stream))
        assert reply.headers["x-cache"] == "HIT-EXACT"
    assert server.requests == requests
    assert sidecars.embedder.faults.calls == embeds


async def test_an_upstream_that_fails_everywhere_still_gives_way_to_a_hit(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw, server = await primed(serve_app, make_gateway, sidecars, cache_head_start_ms=0.0)
    server.failing = True
    release = hold(sidecars.embedder.faults)
    request = asyncio.ensure_future(gw.post(CHAT, json=det(PARAPHRASE)))

    async def upstream_failed() -> bool:
        metrics = (await gw.get("/metrics")).text
        return total(metrics, "gateway_upstream_attempts_total", outcome="server_error") > 0

    await until(upstream_failed)
    release.set()
    reply = await request
    assert (reply.status_code, reply.headers["x-cache"]) == (200, "HIT-SEMANTIC")
    assert reply.json()["choices"][0]["message"]["content"] == ANSWER


async def test_without_speculation_a_paraphrase_hit_never_starts_the_upstream(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw, server = await primed(serve_app, make_gateway, sidecars, cache_speculative=False)
    requests = server.requests
    reply = await gw.post(CHAT, json=det(PARAPHRASE))
    assert reply.headers["x-cache"] == "HIT-SEMANTIC"
    assert server.requests == requests


async def test_a_request_cancelled_mid_race_stops_both_and_is_accounted_once(
    serve_app: Any, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw, server = await primed(serve_app, make_gateway, sidecars, cache_head_start_ms=0.0)
    server.held = True
    hold(sidecars.embedder.faults)
    sidecars.embedder.faults.entered.clear()
    before = (await gw.get("/metrics")).text
    abandoned = total(before, "gateway_cache_lookups_total", outcome="abandoned")
    with structlog.testing.capture_logs() as logs:
        request = asyncio.ensure_future(gw.post(CHAT, json=det("something new")))
        await asyncio.wait_for(server.arrived.wait(), 10)
        await asyncio.wait_for(sidecars.embedder.faults.entered.wait(), 10)
        request.cancel()  # the server shuts down, say: the handler is cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await request
        await asyncio.wait_for(server.aborted.wait(), 10)

    async def lookup_abandoned() -> bool:
        metrics = (await gw.get("/metrics")).text
        return total(metrics, "gateway_cache_lookups_total", outcome="abandoned") > abandoned

    await until(lookup_abandoned)
    metrics = (await gw.get("/metrics")).text
    assert total(metrics, "gateway_in_flight_requests") == 0
    assert total(metrics, "gateway_backend_pending_requests") == 0
    assert total(metrics, "gateway_cache_cancelled_upstream_total") == 0
    [done] = [e for e in logs if e["event"] == "request_done"]
    assert done["status"] == 499
