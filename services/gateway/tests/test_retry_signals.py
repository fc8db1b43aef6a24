"""Retry signals: Retry-After / retry-after-ms, x-should-retry, backend error shapes.

The last tests run the pinned official ``openai`` client against the gateway
over a real socket (uvicorn on a free port) and count how many upstream
attempts one SDK call causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import uvicorn
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.balance.outcome import is_context_overflow
from gateway.errors import (
    DependencyUnavailable,
    Overloaded,
    RateLimited,
    RequestFailedEverywhere,
    UpstreamError,
    retry_headers,
)
from gateway.proxy.backend_errors import (
    parse_error,
    retry_hint,
    sanitize_error,
    upstream_error,
)
from gateway.settings import GatewaySettings
from gateway.tenancy import hash_key
from gwkit import MODEL, MakeBackend, MakeGateway, backend, chat

# ---------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("seconds", "after", "ms"),
    [
        (2.4, "3", "2400"),  # was sent as 2: the retry came back early and got another 429
        (0.25, "1", "250"),
        (2.0, "2", "2000"),
        (0.1 * 3, "1", "300"),  # 0.30000000000000004 is not 301 ms
        (59.0001, "60", "59001"),
        (0.0, "1", "1"),
    ],
)
def test_retry_after_is_rounded_up_and_retry_after_ms_is_exact(
    seconds: float, after: str, ms: str
) -> None:
    assert retry_headers(seconds) == {"retry-after": after, "retry-after-ms": ms}


def test_every_answer_with_a_wait_sends_both_headers_and_only_those() -> None:
    waits = [
        RateLimited("tenant", retry_after=2.4),
        Overloaded("shed", retry_after=1),
        DependencyUnavailable("redis", retry_after=1),
    ]
    for error in waits:
        assert set(error.headers()) == {"retry-after", "retry-after-ms"}
    assert waits[0].headers() == {"retry-after": "3", "retry-after-ms": "2400"}
    assert UpstreamError("x").headers() == {}
    assert RequestFailedEverywhere("x").headers() == {"x-should-retry": "false"}
    kept = RateLimited("backend", retry_after=6.5, retry_after_header="7")
    assert kept.headers() == {"retry-after": "7", "retry-after-ms": "6500"}


NOW = 1_800_000_000.0
DATE = email.utils.formatdate(NOW + 30, usegmt=True)
PAST = email.utils.formatdate(NOW - 5, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "after", "ms"),
    [
        ({"Retry-After": "7"}, "7", "7000"),
        ({"Retry-After": DATE}, DATE, "30000"),
        ({"Retry-After": PAST}, PAST, "1"),
        ({"Retry-After": "2.5"}, "3", "2500"),  # not HTTP's form: rounded up
        ({"Retry-After": "7", "retry-after-ms": "250"}, "7", "250"),  # ms first, as the SDK
        ({"retry-after-ms": "1500"}, "2", "1500"),
        ({"Retry-After": "soon"}, "1", "1000"),  # unreadable or none: one second, as before
        ({"Retry-After": "-3"}, "1", "1000"),
        ({}, "1", "1000"),
    ],
)
def test_a_backend_429s_own_wait_is_passed_on(headers: dict[str, str], after: str, ms: str) -> None:
    hint = retry_hint(headers, now=NOW)
    sent = upstream_error(429, b"", hint).headers()
    assert sent == {"retry-after": after, "retry-after-ms": ms}


# ---------------------------------------------------------------- error shapes

CONTEXT_OVERFLOWS = {
    "openai, vllm >= 0.10.1": {
        "error": {
            "message": "This model's maximum context length is 4096 tokens. However, you ...",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    },
    "vllm < 0.10.1": {
        "object": "error",
        "message": "This model's maximum context length is 2048 tokens. However, you ...",
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    },
    "tgi": {
        "error": "Input validation error: `inputs` must have less than 4096 tokens. Given: 5000",
        "error_type": "validation",
    },
    "llama.cpp server": {
        "error": {
            "code": 400,
            "message": "the request exceeds the available context size, try increasing it",
            "type": "exceed_context_size_error",
            "n_prompt_tokens": 5000,
            "n_ctx": 4096,
        }
    },
    "llama-cpp-python": {
        "error": {
            "message": "This model's maximum context length is 2048 tokens. However, you ...",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
}


@pytest.mark.parametrize("shape", sorted(CONTEXT_OVERFLOWS))
def test_every_backends_error_shape_keeps_its_message(shape: str) -> None:
    data = CONTEXT_OVERFLOWS[shape]
    error = parse_error(orjson.dumps(data))
    assert error.message is not None
    assert is_context_overflow(error.message)
    sent = orjson.loads(sanitize_error(400, orjson.dumps(data)))["error"]
    assert sent["message"] == error.message
    assert set(sent) == {"message", "type", "param", "code"}
    assert isinstance(sent["type"], str)


TRACE = 'Traceback (most recent call last):\n  File "/srv/vllm/entrypoints/x.py", line 9\nKeyError'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "temperature must be >= 0\n" + TRACE}}, "temperature must be >= 0"),
        ({"object": "error", "message": "bad n\n" + TRACE, "code": 400}, "bad n"),
        ({"error": "Input validation error: top_p\n" + TRACE}, "Input validation error: top_p"),
        ({"error": {"message": TRACE}}, None),
        ({"error": 'File "/srv/app.py", line 3, in handler'}, None),
        ({"object": "error", "message": '  File "/x.py", line 1\nboom'}, None),
        (
            {"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]},
            "messages: Field required",
        ),
        ({"detail": "Not Found"}, "Not Found"),
        ({"unexpected": True}, None),
        (b"<html><body>502 Bad Gateway</body></html>", None),
        (b"Internal Server Error", None),
    ],
)
def test_a_traceback_is_never_passed_on(body: Any, message: str | None) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    assert parse_error(raw).message == message
    for sent in (sanitize_error(400, raw).decode(), upstream_error(500, raw).message):
        assert "Traceback" not in sent
        assert 'File \\"' not in sent and 'File "' not in sent
        if message is not None:
            assert message.split("\n")[0] in sent
        else:
            assert "rejected the request (400)" in sent or sent == "The model server answered 500"


# ---------------------------------------------------------------- through the gateway


async def answering(serve_app: Any, status: int, body: Any, **headers: str) -> str:
    """A backend that answers every chat request with ``status``, ``body`` and ``headers``."""

    async def handler(_: web.Request) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return await serve_app(app)


RATE_LIMITED = {"error": {"message": "slow down", "type": "RateLimitError", "code": 429}}


async def test_a_backends_retry_after_is_passed_on_the_shortest_after_failover(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    slow = await answering(serve_app, 429, RATE_LIMITED, **{"Retry-After": "7"})
    soon = await answering(serve_app, 429, RATE_LIMITED, **{"Retry-After": "3"})
    gw = await make_gateway([backend(slow), backend(soon)], hedge=False)
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 429
    assert reply.json()["error"]["type"] == "rate_limit_error"
    assert reply.headers["retry-after"] == "3"
    assert reply.headers["retry-after-ms"] == "3000"
    assert "x-should-retry" not in reply.headers


async def test_a_backends_http_date_and_milliseconds_are_kept(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    dated = await answering(serve_app, 429, RATE_LIMITED, **{"Retry-After": date})
    gw = await make_gateway([backend(dated)])
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.headers["retry-after"] == date
    assert 28_000 <= int(reply.headers["retry-after-ms"]) <= 30_000
    exact = await answering(
        serve_app, 429, RATE_LIMITED, **{"Retry-After": "1", "retry-after-ms": "350"}
    )
    gw = await make_gateway([backend(exact)])
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert (reply.headers["retry-after"], reply.headers["retry-after-ms"]) == ("1", "350")


async def test_a_429_wins_over_a_5xx_when_nothing_answered(
    serve_app: Any, make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    limited = await answering(serve_app, 429, RATE_LIMITED, **{"Retry-After": "2"})
    broken = await make_backend(fault="status:503")
    gw = await make_gateway([backend(limited), backend(broken)], hedge=False)
    for _ in range(2):  # whichever is tried first
        reply = await gw.post("/v1/chat/completions", json=chat())
        assert reply.status_code == 429
        assert reply.headers["retry-after"] == "2"


async def test_x_should_retry_false_once_the_gateway_has_retried(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    two = [backend(await make_backend(fault="status:502")) for _ in range(2)]
    gw = await make_gateway(two, hedge=False)
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 502
    assert reply.headers["x-should-retry"] == "false"
    # The retry budget said no: one attempt, and the SDK must not multiply it either.
    gw = await make_gateway(two, hedge=False, retry_budget_ratio=0, retry_budget_min_per_s=0)
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 502
    assert reply.headers["x-should-retry"] == "false"
    # One attempt because the gateway does not retry, or has no other endpoint: the SDK may.
    for gw in (
        await make_gateway(two, hedge=False, max_attempts=1),
        await make_gateway(two[:1], hedge=False),
    ):
        reply = await gw.post("/v1/chat/completions", json=chat())
        assert reply.status_code == 502
        assert "x-should-retry" not in reply.headers


async def test_a_final_504_after_two_timeouts_is_not_retried(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    hung = [backend(await make_backend(fault="hang")) for _ in range(2)]
    gw = await make_gateway(hung, hedge=False, ttft_timeout_s=0.2)
    reply = await gw.post("/v1/chat/completions", json=chat(stream=True))
    assert reply.status_code == 504
    assert reply.headers["x-should-retry"] == "false"


async def test_old_vllm_and_tgi_errors_reach_the_client_in_the_openai_shape(
    serve_app: Any, make_gateway: MakeGateway
) -> None:
    old = {"object": "error", "message": "temperature must be >= 0", "type": "BadRequestError"}
    gw = await make_gateway([backend(await answering(serve_app, 400, old))])
    error = (await gw.post("/v1/chat/completions", json=chat())).json()["error"]
    assert error["message"] == "temperature must be >= 0"
    assert error["type"] == "BadRequestError"
    tgi = CONTEXT_OVERFLOWS["tgi"]
    gw = await make_gateway([backend(await answering(serve_app, 422, tgi))])
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "context_length_exceeded"
    assert "must have less than 4096 tokens" in reply.json()["error"]["message"]
    crashed = {"object": "error", "message": "engine failed\n" + TRACE}
    gw = await make_gateway([backend(await answering(serve_app, 500, crashed))])
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 502
    assert reply.json()["error"]["message"] == "The model server answered 500: engine failed"


# ---------------------------------------------------------------- the official SDK


@contextlib.asynccontextmanager
async def serve_gateway(**settings: Any) -> AsyncIterator[str]:
    app = create_app(GatewaySettings(**settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the gateway did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        await task


async def upstream_attempts(urls: list[str]) -> int:
    """Chat requests the mock backends received, whatever they answered."""
    total = 0.0
    async with httpx.AsyncClient() as client:
        for url in urls:
            text = (await client.get(f"{url}/metrics")).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "mockllm_requests_total":
                        total += sample.value
    return int(total)


async def sdk_call(base_url: str, max_retries: int, api_key: str = "unused") -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries)
    async with client:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )


@pytest.mark.parametrize(
    ("fault", "replicas", "max_retries", "error", "attempts"),
    [
        # 429: the gateway fails over to every replica, then passes the 429 on with
        # the backend's Retry-After (1 s, the mock's); the SDK waits it out and retries.
        ("status:429", 3, 1, openai.RateLimitError, 3 * 2),
        # 502/503: three replicas tried, then x-should-retry: false: no SDK retry.
        ("status:502", 3, 2, openai.InternalServerError, 3),
        ("status:503", 3, 2, openai.InternalServerError, 3),
        # One replica: the gateway had no second opinion, the SDK's retries are the only ones.
        ("status:502", 1, 2, openai.InternalServerError, 1 + 2),
    ],
)
async def test_upstream_attempts_per_sdk_call(
    make_backend: MakeBackend,
    fault: str,
    replicas: int,
    max_retries: int,
    error: type[Exception],
    attempts: int,
) -> None:
    urls = [await make_backend(fault=fault) for _ in range(replicas)]
    async with serve_gateway(backends=[backend(u) for u in urls], hedge=False) as base_url:
        started = time.perf_counter()
        with pytest.raises(error):
            await sdk_call(base_url, max_retries)
        took = time.perf_counter() - started
    assert await upstream_attempts(urls) == attempts
    if fault == "status:429":
        assert took >= 1.0  # the backend's Retry-After: 1 was honoured
    else:
        assert took < 2.0


async def test_the_sdk_waits_retry_after_ms_not_the_rounded_seconds(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    key = "sk-dave-0123456789"
    tenant = {"name": "dave", "key_sha256": [hash_key(key)], "requests_per_s": 4, "burst": 1}
    keys = tmp_path / "tenants.json"
    keys.write_bytes(orjson.dumps({"tenants": [tenant]}))
    url = await make_backend()
    settings: dict[str, Any] = {"auth_enabled": True, "api_keys_file": keys}
    async with serve_gateway(backends=[backend(url)], **settings) as base_url:
        await sdk_call(base_url, 0, key)
        started = time.perf_counter()
        await sdk_call(base_url, 1, key)  # 429, retry-after: 1, retry-after-ms: ~250
        took = time.perf_counter() - started
    assert 0.2 <= took < 0.9
    assert await upstream_attempts([url]) == 2
