"""Every way a proxied request can end is accounted once: the request's log
line, its metrics (requests, upstream attempts) and the in-flight gauge see it
end exactly once, with the status and outcome the client saw, whether the
answer is whole, cut by the model server, timed out, left by the client, its
task cancelled, sending raised, or the handler itself raised.

The gateway app is driven as an ASGI callable (no transport in between), so
the test controls exactly when, and how, a request is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import structlog.testing

from gateway.app import create_app
from gateway.proxy.upstream import Upstream
from gateway.settings import GatewaySettings
from gwkit import MakeBackend, backend, chat
from gwkit import metric as _sample


def _scope(
    path: str, method: str = "POST", headers: dict[str, str] | None = None
) -> dict[str, Any]:
    raw = [(b"content-type", b"application/json"), (b"host", b"gw")]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 5000),
        "server": ("gw", 80),
    }


@contextlib.asynccontextmanager
async def _gateway(url: str, **settings: Any) -> AsyncIterator[Any]:
    app = create_app(GatewaySettings(backends=[backend(url)], log_requests=True, **settings))
    async with app.router.lifespan_context(app):
        yield app


async def _metrics(app: Any) -> str:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_scope("/metrics", "GET"), receive, send)
    return b"".join(m.get("body", b"") for m in sent).decode()


@dataclass
class Ending:
    """What one request left behind."""

    status: int | None  # the status the client was sent (None: nothing was sent)
    chunks: int  # body chunks with bytes the client was sent
    logs: list[dict[str, Any]]  # its request_done lines
    raised: BaseException | None


async def _drive(
    app: Any,
    *,
    stream: bool = True,
    cut: str = "",
    headers: dict[str, str] | None = None,
) -> Ending:
    """One chat request. After two body chunks reach the client, ``cut`` ends it:
    ``leave`` (the client disconnects), ``cancel`` (the serving task is
    cancelled) or ``raise`` (the next send fails as a broken socket does)."""
    body = orjson.dumps(chat("tell me a long story", stream=stream))
    delivered = False
    chunks = 0
    status: int | None = None
    got_two = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        if cut == "leave":
            await got_two.wait()
        else:
            await asyncio.Event().wait()  # the client never leaves on its own
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal chunks, status
        if message["type"] == "http.response.start":
            status = message["status"]
        if message["type"] == "http.response.body" and message.get("body"):
            chunks += 1
            if chunks == 2:
                got_two.set()
            if cut == "raise" and chunks > 2:
                raise OSError("broken pipe")

    raised: BaseException | None = None
    with structlog.testing.capture_logs() as logs:
        task = asyncio.ensure_future(
            app(_scope("/v1/chat/completions", headers=headers), receive, send)
        )
        if cut == "cancel":
            await asyncio.wait_for(got_two.wait(), timeout=10)
            task.cancel()
        try:
            await asyncio.wait_for(task, timeout=15)
        except (asyncio.CancelledError, OSError, RuntimeError) as exc:
            raised = exc
    # the gateway's lines (the in-process mock server logs its own request_done)
    done = [e for e in logs if e.get("event") == "request_done" and "route" in e]
    return Ending(status, chunks, done, raised)


# ending -> (mock backend settings, gateway settings, how the request is driven,
#            the status and outcome the request is accounted with)
ENDINGS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any], int, str]] = {
    "whole stream": ({}, {}, {}, 200, "success"),
    "whole answer": ({}, {}, {"stream": False}, 200, "success"),
    "upstream cut": ({}, {}, {"headers": {"x-mock-fault": "cut:3"}}, 200, "stream_truncated"),
    "idle timeout": (
        {"inter_token_ms": 2000, "ping_interval_ms": 60000},
        {"idle_timeout_s": 0.3},
        {},
        200,
        "timeout",
    ),
    "error event": (
        {},
        {},
        {"headers": {"x-mock-fault": "error-event:3"}},
        200,
        "stream_error_event",
    ),
    "client gone": ({}, {}, {"cut": "leave"}, 499, "cancelled"),
    "task cancelled": ({}, {}, {"cut": "cancel"}, 499, "cancelled"),
    "send raised": ({}, {}, {"cut": "raise"}, 499, "cancelled"),
    "every replica 500": ({"fault": "status:500"}, {}, {}, 502, "bad_gateway"),
}


@pytest.mark.parametrize("name", list(ENDINGS))
async def test_every_ending_is_accounted_once(make_backend: MakeBackend, name: str) -> None:
    mock, gateway, drive, status, outcome = ENDINGS[name]
    url = await make_backend(output_tokens=50, inter_token_ms=mock.pop("inter_token_ms", 5), **mock)
    async with _gateway(url, **gateway) as app:
        before = await _metrics(app)
        ending = await _drive(app, **drive)
        after = await _metrics(app)
    assert len(ending.logs) == 1, f"one log line for the request, got {ending.logs}"
    line = ending.logs[0]
    assert (line["status"], line["outcome"]) == (status, outcome), line
    gauge = "gateway_in_flight_requests"
    assert _sample(after, gauge) == _sample(before, gauge), "the in-flight gauge came back down"
    requests = "gateway_requests_total"
    counted = _sample(after, requests, status=str(status)) - _sample(before, requests)
    assert counted == 1, f"the request is counted once, with status {status}"


async def test_an_exception_in_the_handler_is_a_500_accounted_once(
    make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Upstream, call: Any) -> Any:
        raise RuntimeError("a bug in the gateway")

    monkeypatch.setattr(Upstream, "open", broken)
    url = await make_backend()
    async with _gateway(url) as app:
        before = await _metrics(app)
        ending = await _drive(app)
        after = await _metrics(app)
    assert ending.status == 500, "the client is told the gateway failed"
    assert [(line["status"], line["outcome"]) for line in ending.logs] == [(500, "internal")]
    gauge = "gateway_in_flight_requests"
    assert _sample(after, gauge) == _sample(before, gauge)
    counted = _sample(after, "gateway_requests_total", status="500") - _sample(
        before, "gateway_requests_total"
    )
    assert counted == 1
