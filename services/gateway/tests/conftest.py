"""Component fixtures: the gateway in-process against upstreams on free local ports.

``make_backend(**mock_settings)`` runs the real mock-llm app on a free port and
returns its base URL; ``make_gateway(backends, **settings)`` builds the gateway
with ``create_app``, runs its lifespan, and returns an httpx client bound to it
through ``ASGITransport`` (which buffers streams: timing and disconnects are
tested with real processes in tests/integration).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_sidecars import FakeSidecars

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tenancy import hash_key
from gwkit import KEYS, FakeClock, MakeBackend, MakeGateway
from mockllm.app import create_app as create_mock
from mockllm.settings import Settings as MockSettings


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Serve any aiohttp app on a free port; returns its base URL."""
    servers: list[TestServer] = []

    async def serve(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield serve
    for server in servers:
        await server.close()


@pytest.fixture
async def make_backend(serve_app: Callable[[web.Application], Awaitable[str]]) -> MakeBackend:
    async def make(**settings: Any) -> str:
        settings.setdefault("ttft_ms", 1)
        settings.setdefault("inter_token_ms", 0)
        settings.setdefault("output_tokens", 8)
        return await serve_app(create_mock(MockSettings(**settings)))

    return make


@pytest.fixture
async def make_gateway() -> AsyncIterator[MakeGateway]:
    stack = contextlib.AsyncExitStack()

    async def make(
        backends: list[dict[str, Any]], tracing: Any = None, pool: Any = None, **settings: Any
    ) -> httpx.AsyncClient:
        app = create_app(GatewaySettings(backends=backends, **settings), tracing=tracing, pool=pool)
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30)
        return await stack.enter_async_context(client)

    yield make
    await stack.aclose()


@pytest.fixture
async def sidecars() -> AsyncIterator[FakeSidecars]:
    fakes = FakeSidecars()
    await fakes.server.start()
    yield fakes
    await fakes.server.stop(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    """A tenants file for ``gwkit.KEYS``: bob rate limited, ops an admin with one stream."""
    tenants = [
        {"name": "alice", "key_sha256": [hash_key(KEYS["alice"])]},
        {"name": "bob", "key_sha256": [hash_key(KEYS["bob"])], "requests_per_s": 1, "burst": 1},
        {"name": "ops", "key_sha256": [hash_key(KEYS["ops"])], "admin": True, "max_streams": 1},
        {"name": "carol", "key_sha256": [hash_key(KEYS["carol"])]},
    ]
    path = tmp_path / "tenants.json"
    path.write_bytes(orjson.dumps({"tenants": tenants}))
    return path
