"""Component fixtures: the mock app in-process on a free port, driven by an aiohttp client.

Test modules cannot import each other (pytest's importlib mode), so the helpers
come with the fixture: ``make_mock(**settings)`` returns a :class:`MockApi`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from mockllm.app import create_app
from mockllm.settings import Settings

MODEL = "mock-llama-3-8b"


class MockApi:
    """One running mock app plus the helpers the component tests share."""

    model = MODEL

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    def chat_body(self, content: str = "hello", **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": content}], **extra}

    def completion_body(self, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "prompt": prompt, **extra}

    async def post(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> ClientResponse:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return await self.client.post(path, data=data, headers=headers)

    async def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> list[Any]:
        """POST with ``stream: true`` and return the decoded ``data:`` payloads."""
        resp = await self.post(path, {**body, "stream": True}, headers)
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return self.payloads(await self.events(resp))

    @staticmethod
    async def events(resp: ClientResponse) -> list[bytes]:
        """Every SSE event (comments included), without its blank-line terminator."""
        events = []
        while not resp.content.at_eof():
            event = await resp.content.readuntil(b"\n\n")
            if event:
                events.append(event.rstrip(b"\n"))
        return events

    @staticmethod
    def payloads(events: list[bytes]) -> list[Any]:
        """The ``data:`` payloads, JSON-decoded except ``[DONE]``."""
        out: list[Any] = []
        for event in events:
            if event.startswith(b"data: "):
                raw = event[len(b"data: ") :]
                out.append("[DONE]" if raw == b"[DONE]" else orjson.loads(raw))
        return out

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every metric sample, keyed by (name, sorted labels)."""
        text = await (await self.client.get("/metrics")).text()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def until_gauges(self, running: int, waiting: int | None = None) -> None:
        """Wait until /metrics shows these gauges; fail after a few seconds."""
        async with asyncio.timeout(5):
            while True:
                now_running, now_waiting = await self.gauges()
                if now_running == running and waiting in (None, now_waiting):
                    return
                await asyncio.sleep(0.01)

    async def gauges(self) -> tuple[float, float]:
        """(running, waiting) as /metrics reports them."""
        samples = await self.metrics()
        label = (("model_name", self.model),)
        return (
            samples[("vllm:num_requests_running", label)],
            samples[("vllm:num_requests_waiting", label)],
        )


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see the documented defaults, whatever the shell exported."""
    for name in list(os.environ):
        if name.startswith("MOCKLLM_"):
            monkeypatch.delenv(name)


@pytest.fixture
async def make_mock() -> AsyncIterator[Callable[..., Awaitable[MockApi]]]:
    """Start the app with fast timings (1 ms) unless a test overrides them; stop it after."""
    clients: list[TestClient[Any, Any]] = []

    async def make(**overrides: Any) -> MockApi:
        settings = Settings(**{"ttft_ms": 1, "inter_token_ms": 1, **overrides})
        server = TestServer(create_app(settings))
        await server.start_server(shutdown_timeout=1.0)
        client: TestClient[Any, Any] = TestClient(server)
        await client.start_server()
        clients.append(client)
        return MockApi(client)

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def mock(make_mock: Callable[..., Awaitable[MockApi]]) -> MockApi:
    return await make_mock()
