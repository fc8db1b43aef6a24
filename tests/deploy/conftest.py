"""Fixtures for the deployment checks.

No Docker engine or cluster is needed: compose files and manifests are read
and rendered offline, and the services whose metric names the dashboards and
alerts rely on are started here, on free loopback ports, and scraped.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from aiohttp.test_utils import TestServer
from pydantic_settings import BaseSettings

from deploy.local.harness import Stack
from deploy.local.procs import PYTHON, Proc, free_port, grpc_serving
from embedder.settings import EmbedderSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from mockllm.app import create_app as create_mock
from mockllm.settings import Settings as MockSettings
from semcache.settings import CacheSettings
from tests.deploy import compose_file
from tests.deploy.k8s_docs import Docs

REPO = Path(__file__).resolve().parents[2]
MOCK_MODEL = "mock-llama-3-8b"

# Each service reads only the variables with its own prefix, through one class.
SETTINGS_BY_PREFIX: dict[str, type[BaseSettings]] = {
    "GATEWAY_": GatewaySettings,
    "EMBEDDER_": EmbedderSettings,
    "CACHE_": CacheSettings,
    "MOCKLLM_": MockSettings,
}


@pytest.fixture
def settings_from_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., BaseSettings]:
    """Build a settings class the way its service does: from environment variables only."""

    def build(cls: type[BaseSettings], env: dict[str, str]) -> BaseSettings:
        prefix = str(cls.model_config.get("env_prefix", ""))
        with monkeypatch.context() as m:
            for key in list(os.environ):
                if key.upper().startswith(prefix):
                    m.delenv(key)
            for key, value in env.items():
                m.setenv(key, str(value))
            return cls()

    return build


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "deploy/compose.yml").read_text())


@pytest.fixture
def settings_of(
    compose: dict[str, Any], settings_from_env: Callable[..., BaseSettings]
) -> Callable[[str], Any]:
    """A compose service's settings, built from its environment as the service would."""

    def build(service: str) -> Any:
        return settings_from_env(
            compose_file.SETTINGS[service], compose_file.env_of(compose, service)
        )

    return build


def _render(overlay: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


OVERLAYS = sorted(p.name for p in (REPO / "deploy/k8s/overlays").iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay under deploy/k8s/overlays, rendered by ``kubectl kustomize``."""
    return {name: _render(REPO / "deploy/k8s/overlays" / name) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Docs]) -> Docs:
    """Each overlay's rendered objects in turn."""
    return rendered[request.param]


# --- the services' real /metrics ------------------------------------------


async def _scrape_gateway_and_mock() -> tuple[str, str]:
    """The gateway in-process in front of the real mock on a free port, after one
    streamed request through it, so per-endpoint and per-request series exist."""
    mock = TestServer(
        create_mock(MockSettings(ttft_ms=1, inter_token_ms=0, output_tokens=4)),
        host="127.0.0.1",
        port=0,
    )
    await mock.start_server()
    try:
        url = str(mock.make_url("")).rstrip("/")
        app = create_app(GatewaySettings(backends=[{"url": url, "models": [MOCK_MODEL]}]))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                body = {
                    "model": MOCK_MODEL,
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                }
                answer = await client.post("/v1/chat/completions", json=body)
                assert answer.status_code == 200, answer.text
                gateway = (await client.get("/metrics")).text
        async with httpx.AsyncClient() as client:
            mock_text = (await client.get(f"{url}/metrics")).text
        return gateway, mock_text
    finally:
        await mock.close()


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def _scrape_embedder(log_dir: Path) -> str:
    """The real embedder process with a stand-in model (``embedder_with_fake_model.py``)."""
    grpc_port, metrics_port = free_port(), free_port()
    script = str(Path(__file__).with_name("embedder_with_fake_model.py"))
    argv = [PYTHON, script, str(grpc_port), str(metrics_port)]
    with Stack(log_dir) as stack:
        ready = functools.partial(grpc_serving, grpc_port)
        stack.start(Proc("embedder", argv, log_dir=log_dir), ready, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            stub.Embed(embedder_pb2.EmbedRequest(texts=["one text", "another one"]), timeout=5)
        return _scrape(metrics_port)


def _scrape_cache(log_dir: Path) -> str:
    """``python -m semcache`` as deployed, on the embedded store."""
    metrics_port = free_port()
    with Stack(log_dir) as stack:
        stack.cache(host="127.0.0.1", metrics_port=metrics_port)
        return _scrape(metrics_port)


@pytest.fixture(scope="session")
def service_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each service's /metrics text, keyed by compose/job-like service name."""
    log_dir = tmp_path_factory.mktemp("service-metrics-logs")
    with ThreadPoolExecutor(2) as pool:  # the two processes start side by side
        embedder = pool.submit(_scrape_embedder, log_dir)
        cache = pool.submit(_scrape_cache, log_dir)
        gateway, mock = asyncio.run(_scrape_gateway_and_mock())
        return {
            "gateway": gateway,
            "mock-llm": mock,
            "embedder": embedder.result(),
            "cache": cache.result(),
        }
