"""The processes of ``bench.routing_live``: three mock replicas (the third slow if
asked) behind one gateway on free ports, the gateway's routing metrics, and the
gateway served with a given pool decode weight (``--serve-gateway``)."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.harness import HTTP_READY_S, MOCK_MODEL
from deploy.local.harness import Stack as Harness
from deploy.local.procs import PYTHON, ROOT, Proc, free_port, http_ok
from gateway.app import create_app, pool_config
from gateway.balance import Pool
from gateway.settings import GatewaySettings
from llmgw_common.logs import configure_logging

MODEL = MOCK_MODEL  # "mock-llama-3-8b"
MOCK_SETTINGS: dict[str, Any] = {  # MOCKLLM_<KEY>; the mocks serve MODEL
    "ttft_ms": 20,
    "inter_token_ms": 5,
    "output_tokens": 32,
    "max_concurrency": 256,
    "log_level": "warning",
}
SLOW_TTFT_MS = 200
LOG_DIR = ROOT / "var" / "log" / "bench-routing"
PATH = "/v1/chat/completions"


@dataclass
class Stack:
    replicas: list[tuple[Proc, str]]
    gateway: str

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.replicas]


def healthy(url: str) -> Callable[[], bool]:
    return lambda: http_ok(f"{url}/health")


def start_stack(
    harness: Harness,
    tag: str,
    *,
    slow: bool,
    gateway_env: dict[str, str],
    decode_weight: float | None = None,
) -> Stack:
    """Three mock replicas (the third slow if asked) and a gateway, all on free ports.

    With ``decode_weight`` the gateway is started by :func:`serve_gateway`: not
    ``python -m gateway``, so not by the harness's ``gateway()``, but recorded by
    the harness all the same."""
    replicas = []
    for i in range(3):
        ttft_ms = SLOW_TTFT_MS if slow and i == 2 else MOCK_SETTINGS["ttft_ms"]
        settings = {**MOCK_SETTINGS, "ttft_ms": ttft_ms}
        replicas.append(harness.mock(f"{tag}-mock{i}", **settings))
    urls = [url for _, url in replicas]
    if decode_weight is None:
        own: dict[str, Any] = {
            key.removeprefix("GATEWAY_").lower(): value for key, value in gateway_env.items()
        }
        _, url = harness.gateway(urls, f"{tag}-gateway", ready_path="/readyz", **own)
        return Stack(replicas, url)
    port = free_port()
    backends = [{"url": url, "models": [MODEL]} for url in urls]
    env = {"GATEWAY_PORT": str(port), "GATEWAY_BACKENDS": json.dumps(backends), **gateway_env}
    argv = [PYTHON, "-m", "bench.routing_live", "--serve-gateway", str(decode_weight)]
    url = f"http://127.0.0.1:{port}"
    gateway = Proc(f"{tag}-gateway", argv, env=env, log_dir=LOG_DIR)
    harness.start(gateway, lambda: http_ok(f"{url}/readyz"), HTTP_READY_S)
    return Stack(replicas, url)


# -- the gateway's metrics ------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    at: float
    attempts: dict[tuple[str, str], float]  # (endpoint, outcome) -> count
    breaker: dict[str, str]  # endpoint -> state
    ejections: dict[str, float]  # endpoint -> times its breaker opened

    def served(self, endpoint: str) -> float:
        return self.attempts.get((endpoint, "success"), 0.0)


async def scrape(session: aiohttp.ClientSession, gateway: str) -> Snapshot:
    async with session.get(f"{gateway}/metrics") as reply:
        text = await reply.text()
    attempts: dict[tuple[str, str], float] = {}
    states: dict[str, str] = {}
    ejections: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_upstream_attempts_total":
                attempts[(s.labels["endpoint"], s.labels["outcome"])] = s.value
            elif s.name == "gateway_backend_breaker_state" and s.value:
                states[s.labels["endpoint"]] = s.labels["state"]
            elif s.name == "gateway_backend_ejections":
                ejections[s.labels["endpoint"]] = s.value
    return Snapshot(time.perf_counter(), attempts, states, ejections)


def serve_gateway(decode_weight: float) -> None:
    """``python -m gateway`` for one worker, with the pool's decode weight set."""
    gc.set_threshold(10_000, 20, 20)  # as gateway.__main__
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    pool = Pool(replace(pool_config(settings), decode_weight=decode_weight))
    app = create_app(settings, pool=pool)
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
