"""Fixtures for the deployment checks.

No Docker engine or cluster is needed: compose files and manifests are read
and rendered offline, and the services whose metric names the dashboards and
alerts rely on are started here, on free loopback ports, and scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from aiohttp.test_utils import TestServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings

from embedder.settings import EmbedderSettings
from gateway.app import create_app
from gateway.settings import GatewaySettings
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from mockllm.app import create_app as create_mock
from mockllm.settings import Settings as MockSettings
from semcache.settings import CacheSettings

REPO = Path(__file__).resolve().parents[2]
MOCK_MODEL = "mock-llama-3-8b"

# Each service reads only the variables with its own prefix, through one class.
SETTINGS_BY_PREFIX: dict[str, type[BaseSettings]] = {
    "GATEWAY_": GatewaySettings,
    "EMBEDDER_": EmbedderSettings,
    "CACHE_": CacheSettings,
    "MOCKLLM_": MockSettings,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def _wait_serving(port: int, within_s: float = 60.0) -> None:  # a loaded CI host is slow
    deadline = time.monotonic() + within_s
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gRPC health on {port} never became SERVING")
            time.sleep(0.05)


@contextlib.contextmanager
def running(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args,
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def _scrape_embedder() -> str:
    grpc_port, metrics_port = free_port(), free_port()
    script = str(Path(__file__).with_name("embedder_with_fake_model.py"))
    with running([sys.executable, script, str(grpc_port), str(metrics_port)], {}):
        _wait_serving(grpc_port)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            stub.Embed(embedder_pb2.EmbedRequest(texts=["one text", "another one"]), timeout=5)
        return _scrape(metrics_port)


def _scrape_cache() -> str:
    """``python -m semcache`` as deployed, on the embedded store."""
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        "CACHE_HOST": "127.0.0.1",
        "CACHE_PORT": str(grpc_port),
        "CACHE_METRICS_PORT": str(metrics_port),
        "CACHE_REDIS_URL": "",
    }
    with running([sys.executable, "-m", "semcache"], env):
        _wait_serving(grpc_port)
        return _scrape(metrics_port)


@pytest.fixture(scope="session")
def service_metrics() -> dict[str, str]:
    """Each service's /metrics text, keyed by compose/job-like service name."""
    with ThreadPoolExecutor(2) as pool:  # the two processes start side by side
        embedder, cache = pool.submit(_scrape_embedder), pool.submit(_scrape_cache)
        gateway, mock = asyncio.run(_scrape_gateway_and_mock())
        return {
            "gateway": gateway,
            "mock-llm": mock,
            "embedder": embedder.result(),
            "cache": cache.result(),
        }
