"""Fixtures for tests that run the real processes on free local ports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.procs import (
    PYTHON,
    Proc,
    free_port,
    grpc_serving,
    http_ok,
    redis_proc,
    redis_ready,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def redis_server(log_dir: Path) -> Iterator[tuple[Proc, int]]:
    """A real redis-server on a free port, persistence off; stopped afterwards."""
    port = free_port()
    proc = redis_proc(port, log_dir=log_dir).start()
    proc.wait_until(redis_ready(port), timeout=10)
    try:
        yield proc, port
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_server: tuple[Proc, int]) -> str:
    return f"redis://127.0.0.1:{redis_server[1]}/0"


MOCK_MODEL = "mock-llama-3-8b"


@pytest.fixture
def stack(log_dir: Path) -> Iterator[Stack]:
    """Start real mock-llm and gateway processes on free ports; all stopped afterwards."""
    s = Stack(log_dir)
    try:
        yield s
    finally:
        s.stop()


class Stack:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def mock(self, name: str = "mock", **env: object) -> tuple[Proc, str]:
        port = free_port()
        environ = {"MOCKLLM_PORT": str(port), "MOCKLLM_MODELS": MOCK_MODEL}
        environ.update({f"MOCKLLM_{k.upper()}": str(v) for k, v in env.items()})
        proc = Proc(f"{name}-{port}", [PYTHON, "-m", "mockllm"], env=environ, log_dir=self.log_dir)
        self.procs.append(proc.start())
        url = f"http://127.0.0.1:{port}"
        proc.wait_until(lambda: http_ok(f"{url}/health"), timeout=30)
        return proc, url

    def gateway(self, backend_urls: list[str], **env: object) -> tuple[Proc, str]:
        port = free_port()
        environ = {
            "GATEWAY_PORT": str(port),
            "GATEWAY_BACKENDS": json.dumps(
                [{"url": u, "models": [MOCK_MODEL]} for u in backend_urls]
            ),
        }
        environ.update({f"GATEWAY_{k.upper()}": str(v) for k, v in env.items()})
        proc = Proc(f"gateway-{port}", [PYTHON, "-m", "gateway"], env=environ, log_dir=self.log_dir)
        self.procs.append(proc.start())
        url = f"http://127.0.0.1:{port}"
        proc.wait_until(lambda: http_ok(f"{url}/healthz"), timeout=30)
        return proc, url

    def embedder(self, **env: object) -> tuple[Proc, str]:
        """The real embedder (ONNX int8 model; built on first use into .cache/embedder)."""
        port = free_port()
        environ = {"EMBEDDER_PORT": str(port), "EMBEDDER_METRICS_PORT": "0"}
        environ.update({f"EMBEDDER_{k.upper()}": str(v) for k, v in env.items()})
        proc = Proc(
            f"embedder-{port}", [PYTHON, "-m", "embedder"], env=environ, log_dir=self.log_dir
        )
        self.procs.append(proc.start())
        proc.wait_until(lambda: grpc_serving(port), timeout=300)
        return proc, f"127.0.0.1:{port}"

    def cache(self, redis_url: str = "", **env: object) -> tuple[Proc, str]:
        """The real cache service; the embedded store unless ``redis_url`` is given."""
        port = free_port()
        environ = {"CACHE_PORT": str(port), "CACHE_METRICS_PORT": "0", "CACHE_REDIS_URL": redis_url}
        environ.update({f"CACHE_{k.upper()}": str(v) for k, v in env.items()})
        proc = Proc(f"cache-{port}", [PYTHON, "-m", "semcache"], env=environ, log_dir=self.log_dir)
        self.procs.append(proc.start())
        proc.wait_until(lambda: grpc_serving(port), timeout=120)
        return proc, f"127.0.0.1:{port}"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
