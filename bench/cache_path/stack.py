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
from bench.proxy import MOCK_ENV, MODEL
from bench.runner import machine, run_loop, wait_for_quiet
from deploy.local.procs import (
    PYTHON,
    ROOT,
    Proc,
    free_port,
    grpc_serving,
    http_ok,
    redis_proc,
    redis_ready,
)

LOG_DIR = ROOT / "var" / "log" / "bench" / "cache_path"
# VERDICT: the verifier decides every paraphrase, whatever the load (a 1 s budget,
# and the upstream never starts before the lookup has answered).
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


def _started(procs: list[Proc], proc: Proc, ready: Callable[[], bool], timeout: float) -> Proc:
    (LOG_DIR / f"{proc.name}.log").unlink(missing_ok=True)  # Proc appends; keep one run's log
    procs.append(proc.start())
    return proc.wait_until(ready, timeout=timeout)


def start_stack(
    procs: list[Proc],
    cached_env: dict[str, str] | None = None,
    extra: dict[str, dict[str, str]] | None = None,
) -> Stack:
    """Redis, embedder, cache service, mock, then the gateways, on free loopback ports.

    ``extra``: more gateways with the sidecars (name -> their own settings)."""
    for old in LOG_DIR.glob("redis-*.log"):  # named by port: one run's only
        old.unlink()
    redis_port, embedder_port, cache_port, mock_port = (free_port() for _ in range(4))
    embedder_metrics_port, cache_metrics_port = free_port(), free_port()
    redis = _started(
        procs, redis_proc(redis_port, log_dir=LOG_DIR), redis_ready(redis_port), timeout=15
    )
    embedder_env = {
        "EMBEDDER_PORT": str(embedder_port),
        "EMBEDDER_METRICS_PORT": str(embedder_metrics_port),
    }
    embedder = _started(
        procs,
        Proc("embedder", [PYTHON, "-m", "embedder"], env=embedder_env, log_dir=LOG_DIR),
        lambda: grpc_serving(embedder_port),
        timeout=300,  # builds the int8 model on first use
    )
    cache_env = {
        "CACHE_HOST": "127.0.0.1",
        "CACHE_PORT": str(cache_port),
        "CACHE_METRICS_PORT": str(cache_metrics_port),
        "CACHE_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
    }
    cache = _started(
        procs,
        Proc("cache", [PYTHON, "-m", "semcache"], env=cache_env, log_dir=LOG_DIR),
        lambda: grpc_serving(cache_port),
        timeout=120,
    )
    mock = _started(
        procs,
        Proc(
            "mock-llm",
            [PYTHON, "-m", "mockllm"],
            env={**MOCK_ENV, "MOCKLLM_PORT": str(mock_port)},
            log_dir=LOG_DIR,
        ),
        lambda: http_ok(f"http://127.0.0.1:{mock_port}/health"),
        timeout=30,
    )
    backends = json.dumps([{"url": f"http://127.0.0.1:{mock_port}", "models": [MODEL]}])
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
        port = free_port()
        env = {
            "GATEWAY_PORT": str(port),
            "GATEWAY_BACKENDS": backends,
            "GATEWAY_LOG_REQUESTS": "true",
            **own,
        }
        gateways[name] = _started(
            procs,
            Proc(name, [PYTHON, "-m", "gateway"], env=env, log_dir=LOG_DIR),
            lambda p=port: http_ok(f"http://127.0.0.1:{p}/readyz"),  # type: ignore[misc]
            timeout=60,
        )
        urls[name] = f"http://127.0.0.1:{port}"
    return Stack(
        procs,
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
    procs: list[Proc] = []
    try:
        started = time.monotonic()
        print("starting redis, embedder, cache service, mock, gateways ...", file=sys.stderr)
        stack = start_stack(procs, cached_env, extra)
        print(f"  up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        result = run_loop(measure(stack, args))
    finally:
        for proc in reversed(procs):
            proc.stop()
    return {**result, "machine": info, "load_wait": load_wait}
