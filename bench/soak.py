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
- a graceful restart (SIGTERM, start) of the second replica every few minutes.

The gateway's ``gateway_in_flight_requests`` is sampled with the memory: once
the load has stopped it must be back at 0 (every ending accounted once).

Every few seconds it samples the resident memory (RSS, children included) of
every process. At the end it prints, per service, RSS after the warm-up, at
the end and the growth, then the requests: answers, errors split into injected,
during a replica restart and unexpected, the cache outcomes and hit ratio. It
exits 1 if there was an unexpected error or a service not restarted grew by
10% or more after the warm-up. Logs go to ``var/log/soak/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass

import psutil
import redis

from bench.soak_load import Outcome, drive
from bench.stats import percentile
from deploy.local.harness import Stack as Harness
from deploy.local.procs import (
    ROOT,
    Proc,
    free_port,
    http_ok,
)

LOG_DIR = ROOT / "var" / "log" / "soak"
GROWTH_LIMIT = 0.10


@dataclass
class Stack:
    procs: dict[str, Proc]  # by name, in start order
    gateway_url: str
    redis_port: int


def start_stack(harness: Harness, ttl_s: int) -> Stack:
    redis_port = free_port()
    _, redis_url = harness.redis(port=redis_port, timeout=15)
    _, embedder = harness.embedder()
    _, cache = harness.cache(redis_url)
    backends = [harness.mock(name)[1] for name in ("mock-1", "mock-2")]
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
    return Stack({proc.name: proc for proc in harness.procs}, gateway_url, redis_port)


# -- faults and memory --------------------------------------------------------------------------


async def restarts(stack: Stack, every_s: float, end: float) -> list[tuple[float, float]]:
    """Restart mock-2 gracefully every ``every_s``; the (start, ready) windows."""
    windows = []
    mock = stack.procs["mock-2"]
    url = json.loads(stack.procs["gateway"].env["GATEWAY_BACKENDS"])[1]["url"]
    while time.monotonic() + every_s < end:
        await asyncio.sleep(every_s)
        began = time.monotonic()
        await asyncio.to_thread(mock.stop)
        mock.start()
        await asyncio.to_thread(mock.wait_until, lambda: http_ok(f"{url}/health"), 30)
        windows.append((began, time.monotonic()))
        print(f"restarted mock-2 ({time.monotonic() - began:.1f} s)", flush=True)
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
    while time.monotonic() < end:
        now = time.monotonic()
        for name, proc in stack.procs.items():
            if proc.alive():
                series[name].append((now, rss(proc.pid)))
        await asyncio.sleep(every_s)
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


# -- the report ------------------------------------------------------------------------------------


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def memory_rows(
    series: dict[str, list[tuple[float, int]]], warm_end: float, restarted: set[str]
) -> tuple[list[str], list[str]]:
    """Table rows, and the services that grew too much."""
    rows, grew = [], []
    for name, points in series.items():
        after = [v for t, v in points if t >= warm_end and v > 0]
        if len(after) < 2:
            rows.append(f"| {name} | - | - | - | too few samples |")
            continue
        k = max(1, min(6, len(after) // 10))  # about the first and last 30 s
        first, last = statistics.median(after[:k]), statistics.median(after[-k:])
        growth = (last - first) / first
        note = ""
        if name in restarted:
            note = "restarted during the run: the growth spans several processes"
        elif growth >= GROWTH_LIMIT:
            grew.append(name)
            note = "over the 10% limit"
        row = f"| {name} | {mib(first)} | {mib(last)} | {mib(max(after))} | {growth:+.1%} {note}"
        rows.append(row.rstrip() + " |")
    return rows, grew


def minute_rows(series: dict[str, list[tuple[float, int]]], start: float) -> list[str]:
    """Median RSS (MiB) of each service in each minute of the run: the trend."""
    minutes = int(max(t for points in series.values() for t, _ in points) - start) // 60 + 1
    lines = [
        "| service | " + " | ".join(f"min {m + 1}" for m in range(minutes)) + " |",
        "|---|" + "---|" * minutes,
    ]
    for name, points in series.items():
        cells = []
        for m in range(minutes):
            values = [v for t, v in points if m * 60 <= t - start < (m + 1) * 60 and v > 0]
            cells.append(mib(statistics.median(values)) if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def redis_rows(port: int) -> list[str]:
    """Where Redis's memory is at the end: bytes per kind of key (MEMORY USAGE)."""
    client = redis.Redis(port=port)
    try:
        sizes: Counter[str] = Counter()
        counts: Counter[str] = Counter()
        for key in client.scan_iter(count=1000):
            name = key.decode(errors="replace")
            kind = name.split("}", 1)[-1].lstrip(":").split(":", 1)[0]
            sizes[kind] += int(client.memory_usage(key) or 0)
            counts[kind] += 1
        used = int(client.info("memory")["used_memory"])
        lines = [f"Redis at the end: used_memory {mib(used)} MiB.", ""]
        lines += ["| key kind | keys | MiB |", "|---|---|---|"]
        lines += [f"| {k} | {counts[k]} | {mib(v)} |" for k, v in sizes.most_common(8)]
        for key in client.scan_iter(match="*stream*", count=1000):
            if client.type(key) == b"stream":
                lines.append(f"\n{key.decode()}: {client.xlen(key)} messages")
        return lines
    finally:
        client.close()


def request_table(
    outcomes: list[Outcome], windows: list[tuple[float, float]]
) -> tuple[list[str], int]:
    """Table lines, and the number of unexpected errors."""

    def in_restart(o: Outcome) -> bool:
        return any(o.started <= b and o.ended >= a for a, b in windows)

    failed = [o for o in outcomes if not o.ok]
    injected = [o for o in failed if o.fault]
    restart = [o for o in failed if not o.fault and in_restart(o)]
    unexpected = [o for o in failed if not o.fault and not in_restart(o)]
    caches = Counter(o.cache or "(none)" for o in outcomes)
    hits = caches["HIT-EXACT"] + caches["HIT-SEMANTIC"]
    cacheable = hits + caches["MISS"]
    ok_s = sorted(o.ended - o.started for o in outcomes if o.ok)
    p50 = statistics.median(ok_s) if ok_s else 0.0
    p99 = percentile(ok_s, 99, "lower") if ok_s else 0.0
    lines = [
        "| requests | ok | errors: injected | errors: in a replica restart | errors: unexpected |",
        "|---|---|---|---|---|",
        f"| {len(outcomes)} | {len(outcomes) - len(failed)} | {len(injected)} "
        f"(of {sum(1 for o in outcomes if o.fault)} with a fault) | {len(restart)} "
        f"| {len(unexpected)} |",
        "",
        "| HIT-EXACT | HIT-SEMANTIC | MISS | BYPASS | hit ratio (cacheable) | p50 s | p99 s |",
        "|---|---|---|---|---|---|---|",
        f"| {caches['HIT-EXACT']} | {caches['HIT-SEMANTIC']} | {caches['MISS']} "
        f"| {caches['BYPASS']} | {hits / max(1, cacheable):.1%} | {p50:.3f} | {p99:.3f} |",
    ]
    t0 = min((o.started for o in outcomes), default=0.0)
    lines += [f"unexpected at {o.started - t0:.0f} s: {o.detail}" for o in unexpected[:10]]
    lines += [f"during a restart at {o.started - t0:.0f} s: {o.detail}" for o in restart[:5]]
    return lines, len(unexpected)


# -- main ---------------------------------------------------------------------------------------


async def soak(stack: Stack, args: argparse.Namespace) -> int:
    start = time.monotonic()
    end = start + args.minutes * 60
    warm_end = start + args.warmup_s
    load = drive(stack.gateway_url, args, end)
    memory = sample(stack, args.sample_s, end + 5)
    restarting = restarts(stack, args.restart_every_s, end)
    gauge = sample_in_flight(stack.gateway_url, args.sample_s, end)
    outcomes, series, windows, gauge_points = await asyncio.gather(load, memory, restarting, gauge)
    await asyncio.sleep(1.0)  # the last streams' endings reach the gauge
    settled = await asyncio.to_thread(in_flight, stack.gateway_url)
    restarted = {"mock-2"} if windows else set()
    rows, grew = memory_rows(series, warm_end, restarted)
    print(f"\nSoak: {args.minutes:g} min at {args.rps:g} requests/s, warm-up {args.warmup_s:g} s,")
    print(f"RSS sampled every {args.sample_s:g} s, {len(windows)} restarts of mock-2.\n")
    print("| service | RSS after warm-up MiB | RSS at end MiB | peak MiB | growth |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    lines, unexpected = request_table(outcomes, windows)
    print("\n".join(lines))
    print("\nRSS per minute (median, MiB):\n")
    print("\n".join(minute_rows(series, start)))
    print()
    print("\n".join(redis_rows(stack.redis_port)))
    peak = max((v for _, v in gauge_points), default=0.0)
    print(f"\ngateway_in_flight_requests: peak {peak:g} while loaded, {settled} after the load")
    leaked = settled is None or settled != 0
    return 1 if unexpected or grew or leaked else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rps", type=float, default=20.0, help="requests per second")
    parser.add_argument("--warmup-s", type=float, help="default: a fifth of the run, at most 120")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    parser.add_argument("--restart-every-s", type=float, default=150.0)
    parser.add_argument("--fault-ratio", type=float, default=0.02)
    parser.add_argument(
        "--odd-ratio",
        type=float,
        default=0.03,
        help="client leaves mid-stream, unknown model, bad body (a third each)",
    )
    parser.add_argument("--ttl-s", type=int, default=60, help="cache entry TTL")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.warmup_s is None:
        args.warmup_s = min(120.0, args.minutes * 60 / 5)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with Harness(LOG_DIR, announce=True) as harness:
        stack = start_stack(harness, args.ttl_s)
        return asyncio.run(soak(stack, args))


if __name__ == "__main__":
    sys.exit(main())
