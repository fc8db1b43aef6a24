"""deploy/compose.yml, checked without a Docker engine.

The file's structure (services, ports, start order by health), that every
variable it sets is a setting the service really reads (and parses), that
the addresses it wires together match the ports those settings open, that
its healthcheck commands pass or fail against the real servers, and that the
gateway it describes requires keys and accepts the example keys docs/deploy.md
tells a user to curl with.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import yaml
from aiohttp.test_utils import TestServer
from pydantic_settings import BaseSettings

from embedder.settings import EmbedderSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tenancy import FileKeyStore, hash_key
from llmgw_common.grpc_server import GrpcServer
from mockllm.app import create_app as create_mock
from mockllm.settings import Settings as MockSettings
from semcache.settings import CacheSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DEPLOY_DOC = REPO / "docs/deploy.md"
# The example keys docs/deploy.md publishes for curl against the stack.
EXAMPLE_KEY = re.compile(r"sk-example-[a-z]+-NOT-SECRET-replace-me")

SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "embedder": EmbedderSettings,
    "cache": CacheSettings,
    "mock-llm-1": MockSettings,
    "mock-llm-2": MockSettings,
}
PREFIXES = ("GATEWAY_", "EMBEDDER_", "CACHE_", "MOCKLLM_")
PUBLISHED = {
    "gateway": {8000},
    "embedder": {50051, 9101},
    "cache": {50052, 9102},
    "mock-llm-1": {8001},
    "mock-llm-2": {8002},
    "prometheus": {9090},
    "grafana": {3000},
}


def env_of(compose: dict[str, Any], service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: write environment as a mapping"
    return {key: str(value) for key, value in env.items()}


@pytest.fixture
def settings_of(
    compose: dict[str, Any], settings_from_env: Callable[..., BaseSettings]
) -> Callable[[str], Any]:
    """A compose service's settings, built from its environment as the service would."""

    def build(service: str) -> Any:
        return settings_from_env(SETTINGS[service], env_of(compose, service))

    return build


def ports_of(compose: dict[str, Any], service: str) -> set[int]:
    published = set()
    for spec in compose["services"][service].get("ports", []):
        host, container = str(spec).rsplit(":", 1)[-2:] if ":" in str(spec) else (spec, spec)
        assert host.split(":")[-1] == container, f"{service}: {spec} maps a port to another"
        published.add(int(container))
    return published


# --- structure -----------------------------------------------------------------


def test_the_stack_has_every_service_on_its_port(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*PUBLISHED, "redis"}
    for service, ports in PUBLISHED.items():
        assert ports_of(compose, service) == ports, service


def test_services_start_in_order_of_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    needs = {
        "gateway": {"redis", "embedder", "cache", "mock-llm-1", "mock-llm-2"},
        "cache": {"redis"},
        "grafana": {"prometheus"},
    }
    for service, deps in needs.items():
        assert set(services[service]["depends_on"]) == deps, service
    for name, spec in services.items():
        for dep, how in spec.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert "healthcheck" in services[dep], (
                f"{name} waits on {dep}, which has no healthcheck"
            )
    for name, spec in services.items():
        check = spec["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_our_images_build_from_the_repo_root_and_run_hardened(compose: dict[str, Any]) -> None:
    for service in SETTINGS:
        spec = compose["services"][service]
        build = spec["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO, service
        assert (REPO / build["dockerfile"]).is_file(), service
        assert spec["image"].startswith("llmgw/"), service
        assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"], service
        assert "/tmp" in spec["tmpfs"], service


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


# --- variables are real settings --------------------------------------------------


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_variable_is_a_setting_the_service_reads(
    service: str, compose: dict[str, Any], settings_of: Callable[[str], Any]
) -> None:
    cls = SETTINGS[service]
    prefix = str(cls.model_config["env_prefix"])
    fields = {prefix + name.upper() for name in cls.model_fields}
    env = env_of(compose, service)
    assert env, f"{service} sets no variable"
    for key in env:
        assert key.startswith(prefix), f"{service} gets {key}: it reads only {prefix}*"
        assert key in fields, f"{service}: {key} is not a field of {cls.__name__}"
    settings_of(service)  # every value parses (JSON lists, numbers, ...)


def test_no_service_gets_another_services_variables(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        own = str(SETTINGS[name].model_config["env_prefix"]) if name in SETTINGS else None
        for key in spec.get("environment", {}):
            if key.startswith(PREFIXES):
                assert key.startswith(own or "-"), f"{name} gets {key}"


def test_services_listen_on_every_interface(settings_of: Callable[[str], Any]) -> None:
    for service in SETTINGS:
        assert settings_of(service).host == "0.0.0.0", service


# --- the wiring between services matches their settings ---------------------------


def test_gateway_reaches_each_model_server_on_the_port_it_listens_on(
    compose: dict[str, Any], settings_of: Callable[[str], Any]
) -> None:
    gateway = settings_of("gateway")
    seen = set()
    for backend in gateway.all_backends():
        url = urlsplit(backend.url)
        assert url.scheme == "http"
        mock = settings_of(url.hostname)
        assert url.port == mock.port, backend.url
        assert set(backend.models) <= set(mock.models), backend.url
        seen.add(url.hostname)
    assert seen == {"mock-llm-1", "mock-llm-2"}, "one endpoint per model server"


def test_gateway_reaches_the_sidecars_with_dns_targets(settings_of: Callable[[str], Any]) -> None:
    gateway = settings_of("gateway")
    for target, service in ((gateway.embedder_target, "embedder"), (gateway.cache_target, "cache")):
        assert target == f"dns:///{service}:{settings_of(service).port}"


def test_cache_uses_the_redis_service(settings_of: Callable[[str], Any]) -> None:
    url = urlsplit(settings_of("cache").redis_url)
    assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)


def test_prometheus_scrapes_each_service_where_it_serves_metrics(
    settings_of: Callable[[str], Any],
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]}
        for job in config["scrape_configs"]
    }
    metrics_port = {
        "gateway": settings_of("gateway").port,
        "embedder": settings_of("embedder").metrics_port,
        "cache": settings_of("cache").metrics_port,
        "mock-llm-1": settings_of("mock-llm-1").port,
        "mock-llm-2": settings_of("mock-llm-2").port,
    }
    assert targets["gateway"] == {f"gateway:{metrics_port['gateway']}"}
    assert targets["embedder"] == {f"embedder:{metrics_port['embedder']}"}
    assert targets["cache"] == {f"cache:{metrics_port['cache']}"}
    assert targets["model-servers"] == {
        f"{name}:{metrics_port[name]}" for name in ("mock-llm-1", "mock-llm-2")
    }


def test_gateway_shares_limits_through_the_caches_redis(
    compose: dict[str, Any], settings_of: Callable[[str], Any]
) -> None:
    gateway, cache = settings_of("gateway"), settings_of("cache")
    assert gateway.redis_url, "without Redis each replica enforces the whole limit on its own"
    url, cache_url = urlsplit(gateway.redis_url), urlsplit(cache.redis_url)
    assert (url.scheme, url.hostname, url.port, url.path) == (
        cache_url.scheme,
        cache_url.hostname,
        cache_url.port,
        cache_url.path,
    ), "one Redis for both"
    prefixes = (gateway.redis_prefix, cache.redis_prefix)
    assert not prefixes[0].startswith(prefixes[1]) and not prefixes[1].startswith(prefixes[0])
    replicas = compose["services"]["gateway"].get("deploy", {}).get("replicas", 1)
    assert gateway.expected_replicas == replicas


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

                async def stats(key: str) -> int:
                    headers = {"Authorization": f"Bearer {key}"}
                    return (await client.get("/admin/cache/stats", headers=headers)).status_code

                assert await stats(keys["acme"]) == 403
                assert await stats(keys["admin"]) == 503, "admitted; no cache service here"

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
