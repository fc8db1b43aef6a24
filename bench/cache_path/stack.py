"""The processes: Redis, the embedder, the cache service, one mock and the gateways
(CACHED, PLAIN, VERDICT and any extra ones), on free loopback ports."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen import CpuClock
from bench.proxy import MOCK_SETTINGS, MODEL
from bench.runner import machine, run_loop, wait_for_quiet
from deploy.local.harness import Stack as Harness
from deploy.local.procs import (
    PYTHON,
    ROOT,
    Proc,
    free_port,
    http_ok,
)

LOG_DIR = ROOT / "var" / "log" / "bench" / "cache_path"
# VERDICT: the verifier decides every paraphrase, whatever the load (a 1 s budget,
# and the upstream never starts before the lookup has answered).
READY_S = 60.0  # a gateway's readiness deadline
VERDICT_ENV = {"GATEWAY_CACHE_LOOKUP_BUDGET_MS": "1000", "GATEWAY_CACHE_SPECULATIVE": "false"}


@dataclass
class Stack:
    procs: list[Proc]
    redis: Proc
    redis_port: int
    embedder: Proc
    embedder_port: int
    cache: Proc
    cache_port: int
    embedder_metrics_port: int
    cache_metrics_port: int
    mock: Proc
    cached: Proc
    plain: Proc
    verdict: Proc
    cached_url: str
    plain_url: str
    verdict_url: str
    extra: dict[str, Proc] = field(default_factory=dict)  # more gateways, by name
    extra_urls: dict[str, str] = field(default_factory=dict)

    def clocks(self) -> dict[str, CpuClock]:
        return {
            "cached": CpuClock(self.cached.pid),
            "plain": CpuClock(self.plain.pid),
            "embedder": CpuClock(self.embedder.pid),
            "cache": CpuClock(self.cache.pid),
            "redis": CpuClock(self.redis.pid),
            "mock": CpuClock(self.mock.pid),
            "client": CpuClock(os.getpid(), children=False),
        }


def start_stack(
    harness: Harness,
    cached_env: dict[str, str] | None = None,
    extra: dict[str, dict[str, str]] | None = None,
) -> Stack:
    """Redis, embedder, cache service, mock, then the gateways, on free loopback ports.

    ``extra``: more gateways with the sidecars (name -> their own settings)."""
    redis_port, embedder_port, cache_port, mock_port = (free_port() for _ in range(4))
    embedder_metrics_port, cache_metrics_port = free_port(), free_port()
    redis, redis_url = harness.redis(port=redis_port, timeout=15)
    embedder, _ = harness.embedder(port=embedder_port, metrics_port=embedder_metrics_port)
    cache, _ = harness.cache(
        redis_url, port=cache_port, host="127.0.0.1", metrics_port=cache_metrics_port
    )
    mock, mock_url = harness.mock("mock-llm", port=mock_port, **MOCK_SETTINGS)
    urls: dict[str, str] = {}
    gateways: dict[str, Proc] = {}
    sidecars = {
        "GATEWAY_CACHE_TARGET": f"127.0.0.1:{cache_port}",
        "GATEWAY_EMBEDDER_TARGET": f"127.0.0.1:{embedder_port}",
    }
    for name, own in (
        ("gateway-cached", {**sidecars, **(cached_env or {})}),
        ("gateway-plain", {}),
        ("gateway-verdict", {**sidecars, **VERDICT_ENV}),
        *((f"gateway-{name}", {**sidecars, **env}) for name, env in (extra or {}).items()),
    ):
        gateways[name], urls[name] = gateway(harness, name, mock_url, own)
    return Stack(
        harness.procs,
        redis,
        redis_port,
        embedder,
        embedder_port,
        cache,
        cache_port,
        embedder_metrics_port,
        cache_metrics_port,
        mock,
        gateways["gateway-cached"],
        gateways["gateway-plain"],
        gateways["gateway-verdict"],
        urls["gateway-cached"],
        urls["gateway-plain"],
        urls["gateway-verdict"],
        {name: gateways[f"gateway-{name}"] for name in extra or {}},
        {name: urls[f"gateway-{name}"] for name in extra or {}},
    )


def gateway(harness: Harness, name: str, mock_url: str, env: dict[str, str]) -> tuple[Proc, str]:
    """A gateway in front of the mock, metrics and request logs on, with ``env`` on top.

    ``env`` is ``GATEWAY_`` settings, which the harness takes as keywords; an
    environment with anything else (cache_miss_cost's OLD gateway: ``PYTHONPATH``)
    is started here, as the harness would, and recorded by it all the same."""
    settings: dict[str, Any] = {"log_requests": "true"}
    if all(key.startswith("GATEWAY_") for key in env):
        settings |= {key.removeprefix("GATEWAY_").lower(): v for key, v in env.items()}
        return harness.gateway([mock_url], name, ready_path="/readyz", timeout=READY_S, **settings)
    port = free_port()
    backends = json.dumps([{"url": mock_url, "models": [MODEL]}])
    proc_env = {
        "GATEWAY_PORT": str(port),
        "GATEWAY_BACKENDS": backends,
        "GATEWAY_LOG_REQUESTS": "true",
        **env,
    }
    proc = Proc(name, [PYTHON, "-m", "gateway"], env=proc_env, log_dir=LOG_DIR)
    url = f"http://127.0.0.1:{port}"
    harness.start(proc, lambda: http_ok(f"{url}/readyz"), READY_S)
    return proc, url


def measured(
    args: argparse.Namespace,
    measure: Callable[[Stack, argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    cached_env: dict[str, str] | None = None,
    extra: dict[str, dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Wait for a quiet machine (``args.load_below``, ``args.wait_load``), start the stack,
    run ``measure(stack, args)`` on uvloop and stop everything; its result, with the
    machine and the load average before starting."""
    load_wait = wait_for_quiet(args.load_below, args.wait_load)
    info = machine()
    with Harness(LOG_DIR, fresh_logs=True) as harness:
        started = time.monotonic()
        print("starting redis, embedder, cache service, mock, gateways ...", file=sys.stderr)
        stack = start_stack(harness, cached_env, extra)
        print(f"  up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        result = run_loop(measure(stack, args))
    return {**result, "machine": info, "load_wait": load_wait}
