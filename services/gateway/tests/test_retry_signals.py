"""Retry signals: Retry-After / retry-after-ms, x-should-retry, backend error shapes.

The last tests run the pinned official ``openai`` client against the gateway
over a real socket (uvicorn on a free port) and count how many upstream
attempts one SDK call causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tenancy import hash_key
from gwkit import MODEL, MakeBackend, backend

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
