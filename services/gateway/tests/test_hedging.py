"""Hedged first tokens through the whole gateway, against real mock servers.

The pool is told which endpoint to try first (the slow one), so the race is
deterministic; everything after (the hedge delay, the second endpoint, the
winner, the loser's connection closed) is the gateway's own doing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, generate_latest

from gateway.app import create_app
from gateway.balance.config import PoolConfig
from gateway.balance.hedge import HedgeConfig
from gateway.balance.retry_budget import RetryBudgetConfig
from gateway.protocol.calls import Kind
from gateway.settings import GatewaySettings
from gwkit import FirstTry, MakeBackend, MakeGateway, backend, chat, content, metric


def hedging(
    delay_s: float = 0.05, ratio: float = 1.0, min_per_s: float = 100.0, enabled: bool = True
) -> PoolConfig:
    return PoolConfig(
        hedge=HedgeConfig(
            enabled=enabled,
            min_samples=10**6,  # never learned here: the initial delay rules
            initial_delay_s=delay_s,
            budget=RetryBudgetConfig(ratio=ratio, min_per_s=min_per_s),
        )
    )


async def stream(gw: httpx.AsyncClient) -> tuple[float, str]:
    """Seconds to the first body bytes, and the whole text."""
    started = time.perf_counter()
    first = 0.0
    body = ""
    async with gw.stream("POST", Kind.CHAT.route, json=chat("hi", stream=True)) as reply:
        assert reply.status_code == 200
        async for text in reply.aiter_text():
            first = first or time.perf_counter() - started
            body += text
    return first, body


async def test_a_late_first_token_is_won_by_the_hedge_and_the_slow_attempt_stopped(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    slow = await make_backend(ttft_ms=3000)
    fast = await make_backend(ttft_ms=5)
    gw = await make_gateway([backend(slow), backend(fast)], pool=FirstTry(slow, hedging(0.05)))
    first, body = await stream(gw)
    assert first < 1.0, "answered by the hedge, not after the slow first token"
    assert "[DONE]" in body and content(body)
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_hedges_total", winner="hedge") == 1
    assert metric(text, "gateway_upstream_attempts_total", endpoint=slow, outcome="cancelled") == 1
    assert metric(text, "gateway_upstream_attempts_total", endpoint=fast, outcome="success") == 1


async def test_when_the_first_attempt_answers_first_the_hedge_is_cancelled(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    first_ep = await make_backend(ttft_ms=200)
    slower = await make_backend(ttft_ms=3000)
    gw = await make_gateway(
        [backend(first_ep), backend(slower)], pool=FirstTry(first_ep, hedging(0.05))
    )
    first, body = await stream(gw)
    assert 0.15 < first < 1.0 and "[DONE]" in body
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_hedges_total", winner="first") == 1
    assert (
        metric(text, "gateway_upstream_attempts_total", endpoint=slower, outcome="cancelled") == 1
    )


async def test_no_hedge_beyond_the_budget_or_for_a_non_streamed_request(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    slow = await make_backend(ttft_ms=400)
    fast = await make_backend(ttft_ms=5)
    no_budget = hedging(0.05, ratio=0.0, min_per_s=0.0)
    gw = await make_gateway([backend(slow), backend(fast)], pool=FirstTry(slow, no_budget))
    first, _ = await stream(gw)
    assert first >= 0.35, "the slow first token was waited for"
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_hedges_total") == 0
    assert metric(text, "gateway_hedge_budget_exhausted_total") == 1

    gw = await make_gateway([backend(slow), backend(fast)], pool=FirstTry(slow, hedging(0.05)))
    reply = await gw.post(Kind.CHAT.route, json=chat("hi"))
    assert reply.status_code == 200
    assert metric((await gw.get("/metrics")).text, "gateway_hedges_total") == 0


async def test_hedging_off_waits_for_the_first_attempt(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    slow = await make_backend(ttft_ms=400)
    fast = await make_backend(ttft_ms=5)
    gw = await make_gateway(
        [backend(slow), backend(fast)], pool=FirstTry(slow, hedging(enabled=False))
    )
    first, _ = await stream(gw)
    assert first >= 0.35
    assert metric((await gw.get("/metrics")).text, "gateway_hedges_total") == 0


async def test_a_first_attempt_that_fails_while_hedged_leaves_the_answer_to_the_hedge(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    breaking = await make_backend(ttft_ms=300, fault="cut:0")  # closes at its first token
    other = await make_backend(ttft_ms=500)
    pool = FirstTry(breaking, hedging(0.05))
    gw = await make_gateway([backend(breaking), backend(other)], pool=pool)
    first, body = await stream(gw)
    assert 0.4 < first < 2.0 and "[DONE]" in body and content(body)
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_hedges_total", winner="hedge") == 1
    failed = metric(text, "gateway_upstream_attempts_total", endpoint=breaking)
    assert failed == 1 and metric(text, "gateway_upstream_attempts_total", outcome="success") == 1
    assert all(state.pending == 0 for state in pool.snapshot())


async def test_a_client_that_leaves_a_hedged_race_frees_both_endpoints(
    make_backend: MakeBackend,
) -> None:
    one = await make_backend(ttft_ms=3000)
    two = await make_backend(ttft_ms=3000)
    pool = FirstTry(one, hedging(0.05))
    registry = CollectorRegistry()
    settings = GatewaySettings(backends=[backend(one), backend(two)])
    app = create_app(settings, pool=pool, registry=registry)
    body = orjson.dumps(chat("hi", stream=True))
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(0.3)  # both attempts are waiting for a first token by now
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": Kind.CHAT.route,
        "raw_path": Kind.CHAT.route.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("gw", 80),
    }
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app(scope, receive, send), timeout=2.5)
        assert all(state.pending == 0 for state in pool.snapshot()), "both attempts stopped"
    text = generate_latest(registry).decode()
    assert metric(text, "gateway_hedges_total") == 0, "nobody won"
    assert metric(text, "gateway_upstream_attempts_total", outcome="cancelled") == 2
    assert metric(text, "gateway_in_flight_requests") == 0
