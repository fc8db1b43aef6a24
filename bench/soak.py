"""Soak: the whole stack under a moderate mixed load for a bounded time, watching memory.

``python -m bench.soak [--minutes 10]`` (``make soak``) starts a real
``redis-server``, the embedder, the cache service on that Redis, two mock-llm
replicas and the gateway on free loopback ports, then sends requests at a
steady rate for the given time:

- repeats of a fixed set of questions (exact hits once stored), paraphrases of
  them (semantic hits), questions never asked before (misses, stored with a
  short TTL so the cache reaches a steady size and expiry is exercised), and
  non-deterministic requests (bypass); half of them streamed;
- a few injected faults (``X-Mock-Fault``: 5xx, an error event, a cut stream, a
  slow first token, a hang on streams), counted apart;
- a few streams the client leaves after their first chunk, requests for an
  unknown model and bad bodies (``--odd-ratio``), answered as expected or
  counted as unexpected errors;
- every ``--restart-every-s``, in turn: a graceful restart (SIGTERM, start)
  of the second replica, the second replica killed (SIGKILL, its streams
  continued elsewhere) and started again, the embedder restarted (the cache's
  semantic stage fails open meanwhile).

The gateway's ``gateway_in_flight_requests`` is sampled with the memory: once
the load has stopped it must be back at 0 (every ending accounted once).

Every few seconds it samples the resident memory (RSS, children included) of
every process, and Redis's own ``used_memory``. At the end it prints, per
service, RSS after the warm-up, at the end and the growth, the median of every
minute and the slope fitted to the minutes after the fifth (% per 10 minutes),
then the requests: answers, errors split into injected, during a replica
restart and unexpected, the cache outcomes and hit ratio. It exits 1 if there
was an unexpected error, a service not restarted grew by 10% or more after the
warm-up, or its slope after minute 5 is 1% per 10 minutes or more (runs of
over 10 minutes). Logs go to ``var/log/soak/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import sys
import time
import urllib.request
from dataclasses import dataclass

import psutil
import redis

from bench.soak_load import drive
from bench.soak_report import memory_rows, minute_rows, redis_rows, request_table, slope_rows
from deploy.local.harness import Stack as Harness
from deploy.local.procs import ROOT, Proc, free_port, grpc_serving, http_ok

LOG_DIR = ROOT / "var" / "log" / "soak"
REDIS_MEMORY = "redis used_memory"  # Redis's own count, beside its process's RSS


@dataclass
class Stack:
    procs: dict[str, Proc]  # by name, in start order
    gateway_url: str
    redis_port: int


def start_stack(
    harness: Harness,
    ttl_s: int,
    gateway_env: dict[str, str] | None = None,
    stream_max_age_s: float = 120,
) -> Stack:
    """The stack; ``gateway_env``: more environment for the gateway's process alone
    (``MALLOC_ARENA_MAX=2``, say: the allocator is no setting of the gateway's).
    ``stream_max_age_s``: the cache's change stream keeps this much history
    (``CACHE_STREAM_MAX_AGE_S``, 600 s by default): two minutes, so Redis reaches
    its steady size within the warm-up, not at minute 10."""
    redis_port = free_port()
    _, redis_url = harness.redis(port=redis_port, timeout=15)
    _, embedder = harness.embedder()
    _, cache = harness.cache(redis_url, stream_max_age_s=stream_max_age_s)
    backends = [harness.mock(name)[1] for name in ("mock-1", "mock-2")]
    saved = dict(os.environ)
    os.environ.update(gateway_env or {})  # a Proc copies the environment when it is made
    try:
        _, gateway_url = harness.gateway(
            backends,
            ready_path="/readyz",
            timeout=60,
            embedder_target=embedder,
            cache_target=cache,
            cache_ttl_s=ttl_s,
            cache_lookup_budget_ms=100,  # hits must not depend on the shared machine
            ttft_timeout_s=2,
            log_requests="false",
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Stack({proc.name: proc for proc in harness.procs}, gateway_url, redis_port)


# -- faults and memory --------------------------------------------------------------------------


async def faults(stack: Stack, every_s: float, end: float) -> list[tuple[float, float, str]]:
    """Every ``every_s``, in turn: mock-2 restarted gracefully, mock-2 killed and
    started, the embedder restarted. The (start, ready, what) windows."""
    windows = []
    mock, embedder = stack.procs["mock-2"], stack.procs["embedder"]
    url = json.loads(stack.procs["gateway"].env["GATEWAY_BACKENDS"])[1]["url"]
    port = int(embedder.env["EMBEDDER_PORT"])
    for turn in itertools.count():
        if time.monotonic() + every_s >= end:
            break
        await asyncio.sleep(every_s)
        what = ("mock-2 restarted", "mock-2 killed", "embedder restarted")[turn % 3]
        began = time.monotonic()
        proc = embedder if what.startswith("embedder") else mock
        await asyncio.to_thread(proc.kill if what == "mock-2 killed" else proc.stop)
        proc.start()
        ready = (lambda: grpc_serving(port)) if proc is embedder else (
            lambda: http_ok(f"{url}/health"))  # fmt: skip
        await asyncio.to_thread(proc.wait_until, ready, 120)
        windows.append((began, time.monotonic(), what))
        print(f"{what} ({time.monotonic() - began:.1f} s)", flush=True)
    return windows


def rss(pid: int) -> int:
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            total += child.memory_info().rss
        return int(total)
    except psutil.Error:
        return 0


async def sample(stack: Stack, every_s: float, end: float) -> dict[str, list[tuple[float, int]]]:
    series: dict[str, list[tuple[float, int]]] = {name: [] for name in stack.procs}
    series[REDIS_MEMORY] = []
    client = redis.Redis(port=stack.redis_port)
    while time.monotonic() < end:
        now = time.monotonic()
        for name, proc in stack.procs.items():
            if proc.alive():
                series[name].append((now, rss(proc.pid)))
        with contextlib.suppress(redis.RedisError):
            series[REDIS_MEMORY].append((now, int(client.info("memory")["used_memory"])))
        await asyncio.sleep(every_s)
    client.close()
    return series


def in_flight(url: str) -> float | None:
    """The gateway's in-flight gauge, or None when /metrics does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    match = re.search(r"^gateway_in_flight_requests (\S+)$", text, re.M)
    return float(match[1]) if match else None


async def sample_in_flight(url: str, every_s: float, end: float) -> list[tuple[float, float]]:
    points = []
    while time.monotonic() < end:
        value = await asyncio.to_thread(in_flight, url)
        if value is not None:
            points.append((time.monotonic(), value))
        await asyncio.sleep(every_s)
    return points


# -- main ---------------------------------------------------------------------------------------


async def soak(stack: Stack, args: argparse.Namespace) -> int:
    start = time.monotonic()
    end = start + args.minutes * 60
    warm_end = start + args.warmup_s
    load = drive(stack.gateway_url, args, end)
    memory = sample(stack, args.sample_s, end + 5)
    faulting = faults(stack, args.restart_every_s, end)
    gauge = sample_in_flight(stack.gateway_url, args.sample_s, end)
    outcomes, series, windows, gauge_points = await asyncio.gather(load, memory, faulting, gauge)
    await asyncio.sleep(1.0)  # the last streams' endings reach the gauge
    settled = await asyncio.to_thread(in_flight, stack.gateway_url)
    restarted = {w[2].split()[0] for w in windows}
    replica_windows = [(a, b) for a, b, what in windows if what.startswith("mock")]
    rows, grew = memory_rows(series, warm_end, restarted)
    print(f"\nSoak: {args.minutes:g} min at {args.rps:g} requests/s, warm-up {args.warmup_s:g} s,")
    print(f"RSS sampled every {args.sample_s:g} s; faults: " + ", ".join(
        f"{what} at {a - start:.0f} s" for a, _, what in windows) + ".\n")  # fmt: skip
    print("| service | RSS after warm-up MiB | RSS at end MiB | peak MiB | growth |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    slopes, steep = slope_rows(series, start, restarted)
    print()
    print("\n".join(slopes))
    print()
    lines, unexpected = request_table(outcomes, replica_windows)
    print("\n".join(lines))
    print("\nRSS per minute (median, MiB; Redis's used_memory in its own row):\n")
    print("\n".join(minute_rows(series, start)))
    print()
    print("\n".join(redis_rows(stack.redis_port)))
    peak = max((v for _, v in gauge_points), default=0.0)
    print(f"\ngateway_in_flight_requests: peak {peak:g} while loaded, {settled} after the load")
    leaked = settled is None or settled != 0
    steep = steep if args.minutes > 10 else []  # too few minutes after the fifth to judge
    return 1 if unexpected or grew or steep or leaked else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rps", type=float, default=20.0, help="requests per second")
    parser.add_argument("--warmup-s", type=float, help="default: a fifth of the run, at most 120")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument(
        "--restart-every-s", type=float, default=150.0, help="between faults (replica, embedder)"
    )
    parser.add_argument("--fault-ratio", type=float, default=0.02)
    parser.add_argument(
        "--odd-ratio",
        type=float,
        default=0.03,
        help="client leaves mid-stream, unknown model, bad body (a third each)",
    )
    parser.add_argument("--ttl-s", type=int, default=60, help="cache entry TTL")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--stream-max-age-s", type=float, default=120, help="CACHE_STREAM_MAX_AGE_S"
    )
    parser.add_argument(
        "--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway's process"
    )
    args = parser.parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = min(120.0, args.minutes * 60 / 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with Harness(LOG_DIR, announce=True) as harness:
        env = dict(item.split("=", 1) for item in args.gateway_env)
        stack = start_stack(harness, args.ttl_s, env, args.stream_max_age_s)
        return asyncio.run(soak(stack, args))


if __name__ == "__main__":
    sys.exit(main())
