"""Shared pieces of the cache service's unit and component tests."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

# The tests import their helpers (cachekit) by name, as the gateway's do; the
# gateway's folder is on pytest's pythonpath in pyproject.toml, this one is added here.
sys.path.insert(0, str(Path(__file__).parent))

import grpc
import pytest
from cachekit import FakeVerifier, settings
from prometheus_client import CollectorRegistry

from llmgw.cache.v1 import cache_pb2_grpc
from semcache.memory_store import MemoryStore
from semcache.server import CacheServer, create_server


@pytest.fixture
def make_server() -> Callable[..., CacheServer]:
    """Builds (not starts) a server on the embedded store with the fake verifier."""

    def build(**overrides: object) -> CacheServer:
        s = settings(**overrides)
        return create_server(
            s,
            store=MemoryStore(max_entries=s.max_entries, poll_s=0.05),
            verifier=FakeVerifier(),
            min_similarity=0.8,
            registry=CollectorRegistry(),
        )

    return build


@pytest.fixture
async def server(make_server: Callable[..., CacheServer]) -> AsyncIterator[CacheServer]:
    srv = make_server()
    await srv.start()
    await wait_ready(srv)
    try:
        yield srv
    finally:
        await srv.stop()


async def wait_ready(srv: CacheServer) -> None:
    async with asyncio.timeout(10):
        while not srv.cache.state.ready:  # noqa: ASYNC110 (polling a flag with a deadline)
            await asyncio.sleep(0.01)


@pytest.fixture
async def stub(server: CacheServer) -> AsyncIterator[cache_pb2_grpc.CacheServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield cache_pb2_grpc.CacheServiceStub(channel)
