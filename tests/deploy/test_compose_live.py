"""deploy/compose.yml built and run for real on the local Docker engine.

Marker ``compose``: ``make test-compose`` runs only this; ``make test`` runs it
whenever a Docker engine is reachable (``make docker-engine`` starts one) and
skips it otherwise. The stack is built from the four Dockerfiles, started with
``--wait`` (every healthcheck passes), and checked as a user would: a streamed
completion through the containerised gateway, the same question answered from
the cache, Prometheus scraping every target, the services running as non-root
on a read-only root file system, and a rebuild that takes every step from
Docker's layer cache. Then everything is torn down, volumes included.

Where the upstream base images are not on this engine and cannot be pulled,
the build uses the stand-ins made from Debian's packages (``make base-images``,
deploy/docker/), and Grafana, which has none, is left out of this run only.
The stack runs as its own compose project with only the gateway's and
Prometheus's ports published, on free ports of 127.0.0.1, so it never collides
with ``make run`` or a user's own ``make compose-up``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploy.local.procs import free_port

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy/compose.yml"
OURS = ("embedder", "cache", "mock-llm-1", "mock-llm-2", "gateway")
LOCAL_ENV = {
    "PYTHON_IMAGE": "llmgw-local/python:3.11",
    "BUILD_IMAGE": "llmgw-local/python-build:3.11",
    "TORCH_INDEX_URL": "",
    "REDIS_IMAGE": "llmgw-local/redis:7.0",
    "PROMETHEUS_IMAGE": "llmgw-local/prometheus:2.42",
}
UPSTREAM_BASES = ("python:3.11-slim-bookworm", "redis:7.4-alpine", "prom/prometheus:v2.53.4")
BUILD_TIMEOUT_S = 1800  # a fresh machine's first build (torch, the model export) fits well
MODEL = "mock-llama-3-8b"
KEY = "sk-example-acme-NOT-SECRET-replace-me"  # docs/deploy.md's example tenant

pytestmark = [pytest.mark.compose, pytest.mark.integration]


def _docker_ready() -> str | None:
    """Why the compose test cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker client (make docker-engine installs one)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine reachable (make docker-engine starts one)"
    version = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if version.returncode != 0:
        return "no Docker Compose v2 plugin (make docker-engine installs it)"
    return None


def _have_image(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    files: list[str]
    services: list[str]
    gateway: str
    prometheus: str
    first_build_s: float

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.project]
        for file in self.files:
            argv += ["-f", file]
        return subprocess.run(
            [*argv, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def container(self, service: str) -> dict[str, object]:
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: expected one container, got {ids}"
        out = subprocess.run(["docker", "inspect", ids[0]], capture_output=True, text=True)
        return dict(json.loads(out.stdout)[0])


def _override(path: Path, gateway_port: int, prometheus_port: int) -> None:
    """Publish only the gateway and Prometheus, on free loopback ports."""
    lines = ["services:"]
    for service in ("embedder", "cache", "mock-llm-1", "mock-llm-2", "grafana"):
        lines += [f"  {service}:", "    ports: !reset []"]
    lines += ["  gateway:", f'    ports: !override ["127.0.0.1:{gateway_port}:8000"]']
    lines += ["  prometheus:", f'    ports: !override ["127.0.0.1:{prometheus_port}:9090"]']
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = _docker_ready()
    if reason is not None:
        pytest.skip(reason)
    env: dict[str, str] = {}
    services = [*OURS, "redis", "prometheus"]
    if not all(_have_image(tag) for tag in UPSTREAM_BASES):
        made = subprocess.run(
            [str(REPO / "deploy/docker/base-images.sh")], capture_output=True, text=True
        )
        assert made.returncode == 0, f"make base-images failed:\n{made.stderr[-3000:]}"
        env = dict(LOCAL_ENV)
    elif _have_image("grafana/grafana:11.4.0"):
        services.append("grafana")
    override = tmp_path_factory.mktemp("compose") / "ports.yml"
    gateway_port, prometheus_port = free_port(), free_port()
    _override(override, gateway_port, prometheus_port)
    built = Stack(
        project=f"llmgw-test-{uuid.uuid4().hex[:8]}",
        env=env,
        files=[str(COMPOSE_FILE), str(override)],
        services=services,
        gateway=f"http://127.0.0.1:{gateway_port}",
        prometheus=f"http://127.0.0.1:{prometheus_port}",
        first_build_s=0.0,
    )
    try:
        started = time.monotonic()
        up = built.compose(
            "up", "--build", "--detach", "--wait", *services, timeout=BUILD_TIMEOUT_S
        )
        built.first_build_s = time.monotonic() - started
        if up.returncode != 0:
            logs = built.compose("logs", "--no-color", "--tail", "20").stdout
            pytest.fail(f"compose up failed:\n{up.stderr[-4000:]}\n{logs[-4000:]}")
        yield built
    finally:
        down = built.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")
        assert down.returncode == 0, down.stderr
        assert built.compose("ps", "--all", "--quiet").stdout.strip() == "", "containers left"


def _chat(stack: Stack, question: str) -> tuple[str, list[str]]:
    """Stream one chat completion through the containerised gateway: the
    X-Cache header and the SSE data lines."""
    body = {
        "model": MODEL,
        "stream": True,
        "temperature": 0,
        "messages": [{"role": "user", "content": question}],
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{stack.gateway}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        data = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
        return reply.headers.get("x-cache", ""), data


def _text(data: list[str]) -> str:
    chunks = [json.loads(item) for item in data if item != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_a_completion_streams_through_the_containers_and_repeats_from_the_cache(
    stack: Stack,
) -> None:
    question = f"What is the capital of France? ({uuid.uuid4().hex[:6]})"
    first_cache, first = _chat(stack, question)
    assert first_cache == "MISS"
    assert first[-1] == "[DONE]" and len(first) > 3, "a real stream: several chunks, then DONE"
    deadline = time.monotonic() + 10  # the store is written after the stream ends
    while True:
        again_cache, again = _chat(stack, question)
        if again_cache.startswith("HIT") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert again_cache == "HIT-EXACT"
    assert _text(again) == _text(first), "the cached answer is the one the model gave"


def test_prometheus_scrapes_every_target_as_up(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    while True:
        targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=5).json()
        active = targets["data"]["activeTargets"]
        health = {t["scrapeUrl"]: (t["health"], t["lastError"]) for t in active}
        if active and all(h == "up" for h, _ in health.values()):
            break
        assert time.monotonic() < deadline, f"targets not all up: {health}"
        time.sleep(2)
    jobs = {t["labels"]["job"] for t in active}
    assert {"gateway", "embedder", "cache", "model-servers", "prometheus"} <= jobs
    model_servers = [t for t in active if t["labels"]["job"] == "model-servers"]
    assert len(model_servers) == 2


@pytest.mark.parametrize("service", OURS)
def test_our_services_run_as_non_root_on_a_read_only_root(stack: Stack, service: str) -> None:
    info = stack.container(service)
    config, host = info["Config"], info["HostConfig"]
    assert isinstance(config, dict) and isinstance(host, dict)
    assert config["User"] not in ("", "0", "root", "0:0")
    assert host["ReadonlyRootfs"] is True
    probe = (
        "import os\ntry:\n open('/probe', 'w')\nexcept OSError as e:\n print(os.getuid(), e.errno)"
    )
    ran = stack.compose("exec", "-T", service, "python", "-c", probe)
    assert ran.returncode == 0, ran.stderr
    uid, errno = ran.stdout.split()
    assert uid != "0"
    assert errno == "30", "EROFS: the root file system refuses writes"


def test_a_rebuild_takes_every_step_from_the_layer_cache(stack: Stack) -> None:
    """Nothing changed since the stack was built: every RUN step of the four
    builds must come from Docker's layer cache (pip and the model export are
    the minutes of a first build)."""
    rebuilt = stack.compose("build", "--progress", "plain", *OURS, timeout=BUILD_TIMEOUT_S)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    log = rebuilt.stdout + rebuilt.stderr
    runs = set(re.findall(r"^#(\d+) \[[^\]]+\] RUN ", log, re.M))
    cached = set(re.findall(r"^#(\d+) CACHED", log, re.M))
    assert runs, f"no RUN step seen in the build log:\n{log[-2000:]}"
    assert runs <= cached, f"steps rebuilt: {sorted(runs - cached)}\n{log[-3000:]}"
