"""deploy/compose.yml against real servers, without a Docker engine.

Its healthcheck commands pass or fail against the real servers, and the
gateway it describes requires keys and accepts the example keys
docs/deploy.md tells a user to curl with.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiohttp.test_utils import TestServer
from pydantic_settings import BaseSettings

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tenancy import FileKeyStore, hash_key
from llmgw_common.grpc_server import GrpcServer
from mockllm.app import create_app as create_mock
from mockllm.settings import Settings as MockSettings
from tests.deploy.compose_file import DEPLOY, PUBLISHED, env_of

DEPLOY_DOC = DEPLOY.parent / "docs/deploy.md"
# The example keys docs/deploy.md publishes for curl against the stack.
EXAMPLE_KEY = re.compile(r"sk-example-[a-z]+-NOT-SECRET-replace-me")


# --- authentication with the example keys -------------------------------------------


def mounted_file(compose: dict[str, Any], service: str, target: Path) -> Path:
    """The repository file a service sees at ``target``, mounted read-only."""
    for volume in compose["services"][service].get("volumes", []):
        source, dest, *mode = volume.split(":")
        if Path(dest) == target:
            assert mode == ["ro"], f"{service}: mount {dest} read-only"
            return (DEPLOY / source).resolve()
    raise AssertionError(f"{service}: nothing is mounted at {target}")


def documented_keys() -> set[str]:
    return set(EXAMPLE_KEY.findall(DEPLOY_DOC.read_text()))


def test_auth_is_on_with_the_example_tenants_and_the_documented_keys(
    compose: dict[str, Any], settings_of: Callable[[str], Any]
) -> None:
    gateway = settings_of("gateway")
    assert gateway.auth_enabled is True
    assert not gateway.admin_key, "the admin key goes in as its digest only"
    path = mounted_file(compose, "gateway", gateway.api_keys_file)
    assert path == DEPLOY / "tenants.example.yaml"
    assert "REPLACE BEFORE ANY REAL USE" in path.read_text()
    store = FileKeyStore(path)  # the file the gateway will load, as it loads it
    keys = documented_keys()
    digests = {hash_key(key): key for key in keys}
    assert gateway.admin_key_sha256 in digests, "docs/deploy.md names the admin key"
    tenants = {t.name: t for t in store.tenants}
    found = {asyncio.run(store.lookup(digest)) for digest in digests}
    names = {t.name for t in found if t is not None}
    assert names == set(tenants), "every example tenant has a documented key"
    assert any(t.requests_per_s for t in tenants.values()), "one example shows a rate limit"


async def test_the_documented_curl_works_against_the_compose_gateway(
    compose: dict[str, Any], settings_from_env: Callable[..., BaseSettings]
) -> None:
    """The compose gateway's settings, with the example tenants file from the
    repository, in front of a real mock: the documented keys get answers, the
    admin key reaches /admin, anything else is refused, and the rate-limited
    example tenant gets 429 past its burst."""
    env = env_of(compose, "gateway")
    mock = TestServer(
        create_mock(MockSettings(ttft_ms=1, inter_token_ms=0, output_tokens=2)),
        host="127.0.0.1",
        port=0,
    )
    await mock.start_server()
    try:
        env.update(
            GATEWAY_API_KEYS_FILE=str(
                mounted_file(compose, "gateway", Path(env["GATEWAY_API_KEYS_FILE"]))
            ),
            GATEWAY_BACKENDS=f'[{{"url": "http://127.0.0.1:{mock.port}", '
            '"models": ["mock-llama-3-8b"]}]',
            GATEWAY_REDIS_URL="",  # no redis here: the limits are decided in process
            GATEWAY_EMBEDDER_TARGET="",
            GATEWAY_CACHE_TARGET="",
        )
        settings = settings_from_env(GatewaySettings, env)
        keys = {key.split("-")[2]: key for key in documented_keys()}
        body = {"model": "mock-llama-3-8b", "messages": [{"role": "user", "content": "Say hello"}]}
        app = create_app(settings)  # type: ignore[arg-type]
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

                async def chat(key: str | None) -> httpx.Response:
                    headers = {"Authorization": f"Bearer {key}"} if key else {}
                    return await client.post("/v1/chat/completions", json=body, headers=headers)

                for tenant in ("acme", "bravo"):
                    answer = await chat(keys[tenant])
                    assert answer.status_code == 200, answer.text
                assert (await chat(None)).status_code == 401
                assert (await chat("sk-example-nobody-NOT-SECRET-replace-me")).status_code == 401
                assert (await chat(keys["admin"])).status_code == 401, "admin is not a tenant"

                async def stats(key: str, on: httpx.AsyncClient) -> int:
                    headers = {"Authorization": f"Bearer {key}"}
                    return (await on.get("/admin/cache/stats", headers=headers)).status_code

                # /admin/* is on the metrics port (GATEWAY_METRICS_PORT), not the API's.
                assert await stats(keys["admin"], client) == 404
                ops_transport = httpx.ASGITransport(app=app.ops)
                async with httpx.AsyncClient(transport=ops_transport, base_url="http://gw") as ops:
                    assert await stats(keys["acme"], ops) == 403
                    assert await stats(keys["admin"], ops) == 503, "admitted; no cache here"

                statuses = [(await chat(keys["acme"])).status_code for _ in range(15)]
                assert 429 in statuses, "example-acme: 5 requests per second, burst 10"
                assert set(statuses) == {200, 429}
                assert (await chat(keys["bravo"])).status_code == 200, "tenants are apart"
    finally:
        await mock.close()


# --- healthchecks, run against the real servers --------------------------------------


async def run_check(compose: dict[str, Any], service: str, port: int) -> int:
    """Run the service's healthcheck (CMD python -c ...) aimed at ``port``."""
    test = compose["services"][service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    published = {str(p) for p in PUBLISHED[service]}
    code = test[3]
    hits = [p for p in published if f"127.0.0.1:{p}" in code]
    assert len(hits) == 1, f"{service}'s healthcheck must target one of its own ports"
    code = code.replace(f"127.0.0.1:{hits[0]}", f"127.0.0.1:{port}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), 20)


@pytest.mark.parametrize("service", ["embedder", "cache"])
async def test_sidecar_healthcheck_passes_only_once_serving(
    service: str, compose: dict[str, Any]
) -> None:
    """NOT_SERVING while the model or the index loads: the gateway waits for it."""
    server = GrpcServer(host="127.0.0.1", port=0, service_names=["llmgw.test.v1.Nothing"])
    await server.start()
    try:
        assert await run_check(compose, service, server.port) != 0
        await server.set_serving(True)
        assert await run_check(compose, service, server.port) == 0
    finally:
        await server.server.stop(0)


@pytest.mark.parametrize("service", ["mock-llm-1", "mock-llm-2"])
async def test_model_server_healthcheck_passes_on_the_real_mock(
    service: str, compose: dict[str, Any]
) -> None:
    mock = TestServer(create_mock(MockSettings()), host="127.0.0.1", port=0)
    await mock.start_server()
    try:
        assert await run_check(compose, service, mock.port) == 0
    finally:
        await mock.close()
    assert await run_check(compose, service, mock.port) != 0


@contextlib.asynccontextmanager
async def serve_gateway(settings: GatewaySettings) -> AsyncIterator[int]:
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "gateway did not start"
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def test_gateway_is_healthy_only_with_a_usable_backend(compose: dict[str, Any]) -> None:
    async with serve_gateway(GatewaySettings()) as port:  # no backend at all
        assert await run_check(compose, "gateway", port) != 0
    mock = TestServer(create_mock(MockSettings()), host="127.0.0.1", port=0)
    await mock.start_server()
    try:
        backend = {"url": f"http://127.0.0.1:{mock.port}", "models": ["mock-llama-3-8b"]}
        async with serve_gateway(GatewaySettings(backends=[backend])) as port:
            assert await run_check(compose, "gateway", port) == 0
    finally:
        await mock.close()
