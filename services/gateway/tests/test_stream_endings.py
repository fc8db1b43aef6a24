"""Every way a proxied stream can end is accounted once: the request's log
line, its metrics and the in-flight gauge see it end, even when the task
serving it is cancelled mid-stream or sending to the client raises.

The gateway app is driven as an ASGI callable (no transport in between), so
the test controls exactly when a stream is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import structlog.testing

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gwkit import MakeBackend, backend, chat


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"gw")],
        "client": ("127.0.0.1", 5000),
        "server": ("gw", 80),
    }


@contextlib.asynccontextmanager
async def _gateway(url: str) -> AsyncIterator[Any]:
    app = create_app(GatewaySettings(backends=[backend(url)], log_requests=True))
    async with app.router.lifespan_context(app):
        yield app


async def _in_flight(app: Any) -> float:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {**_scope("/metrics", b""), "method": "GET"}
    await app(scope, receive, send)
    text = b"".join(m.get("body", b"") for m in sent).decode()
    match = re.search(r"^gateway_in_flight_requests (\S+)$", text, re.M)
    assert match, "the gauge is exported"
    return float(match[1])


async def _stream(app: Any, *, cut: str) -> list[Any]:
    """One streamed chat; after two body chunks reach the client, ``cut``
    ends it: ``cancel`` cancels the serving task, ``raise`` makes the next
    send fail as a broken socket does."""
    body = orjson.dumps(chat("tell me a long story", stream=True))
    delivered = False
    chunks = 0
    got_two = asyncio.Event()
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client never leaves on its own
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal chunks
        if message["type"] == "http.response.body" and message.get("body"):
            chunks += 1
            if chunks == 2:
                got_two.set()
            if cut == "raise" and chunks > 2:
                raise OSError("broken pipe")

    with structlog.testing.capture_logs() as logs:
        task = asyncio.ensure_future(app(_scope("/v1/chat/completions", body), receive, send))
        await asyncio.wait_for(got_two.wait(), timeout=10)
        if cut == "cancel":
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await asyncio.wait_for(task, timeout=10)
    return [entry for entry in logs if entry.get("event") == "request_done"]


@pytest.mark.parametrize("cut", ["cancel", "raise"])
async def test_a_stream_cut_mid_serve_is_counted_once_and_the_gauge_comes_down(
    make_backend: MakeBackend, cut: str
) -> None:
    url = await make_backend(output_tokens=200, inter_token_ms=5)
    async with _gateway(url) as app:
        before = await _in_flight(app)
        done = await _stream(app, cut=cut)
        assert len(done) == 1, f"one log line for the request, got {done}"
        assert await _in_flight(app) == before, "the in-flight gauge came back down"
