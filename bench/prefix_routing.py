"""Prefix-affinity routing against today's Peak EWMA P2C, on mocks with vLLM's prefix cache.

``python -m bench.prefix_routing [--duration 15] [--repeats 1]``

Four ``mockllm`` replicas on 127.0.0.1 with the prefix cache on (4,096 blocks
of 16 tokens each, 65,536 tokens) and a prefill model (20 ms base, 0.05 ms
per uncached prompt token, concurrent prefills sharing the replica), behind
two gateways started from the same code: one with ``GATEWAY_PREFIX_AFFINITY=
false`` (today's router) and one with it on, told the mocks' capacity and
prefill rate. A third gateway with affinity on joins for the agreement run.

Workloads (each phase uses fresh prompts from its own seed, so no phase
profits from another's cache; phases alternate between the routers so that
drift in the machine's load falls on both):

- **multi-turn**: 64 users, each in a conversation on one of 8 system
  prompts of 1,500-2,500 tokens, growing by a user turn (20-400 tokens) and
  an assistant turn (50-300 tokens) per request, 3-12 turns, 0.3-1.5 s of
  think time between requests;
- **unique**: the same users, each request a new 1,000-3,000-token prompt;
- **hot**: 80 % of requests on one system prompt, the rest on 7 others, each
  with a new question;
- **two gateways**: multi-turn, each request sent to one of two affinity
  gateways at random: do they agree on where a conversation lives?

Per phase: client TTFT p50/p99 (request sent -> first token), requests/s,
the mocks' prefix hit rate (their ``vllm:prefix_cache_hits`` over
``queries``), the ideal hit rate (what a single infinite cache would hit on
the same requests, computed by the client with the mock's block hashes) and
the busiest replica's share of the requests. At the end, the time to hash a
1 MB prompt against a short one. Bounded: about ``2 x repeats x 4 phases x
(duration + 5 s)`` plus start-up. ``--slow`` makes replica 4 ten times slower
to its first token (200 ms base), to see how much traffic it still gets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import Sample, one_request
from bench.prefix_workload import Ideal, Workload
from bench.runner import machine, terminate
from bench.stats import percentile
from deploy.local.harness import MOCK_MODEL
from deploy.local.harness import Stack as Harness
from deploy.local.procs import ROOT
from gateway.balance.prefix import prompt_prefix
from mockllm.prefix_cache import BLOCK_TOKENS

MODEL = MOCK_MODEL  # "mock-llama-3-8b"
PATH = "/v1/chat/completions"
LOG_DIR = ROOT / "var" / "log" / "bench-prefix"
REPLICAS = 4
CACHE_BLOCKS = 4096
PREFILL_MS_PER_TOKEN = 0.05
MOCK_SETTINGS: dict[str, Any] = {  # MOCKLLM_<KEY>; the mocks serve MODEL
    "ttft_ms": 20,
    "inter_token_ms": 5,
    "output_tokens": 16,
    "max_concurrency": 256,
    "log_level": "warning",
    "prefix_cache_blocks": CACHE_BLOCKS,
}
USERS = 64
WARMUP_S = 5.0


# -- processes ---------------------------------------------------------------------------


@dataclass
class Stack:
    mocks: list[str]
    gateways: dict[str, str]  # name -> url


def start(harness: Harness, prefill_ms: float, slow: bool) -> Stack:
    """The mocks (prefill ``prefill_ms`` per uncached token) and the three gateways.

    With ``slow`` the last mock's base time to first token is ten times longer.
    """
    mocks = []
    for i in range(REPLICAS):
        settings = {**MOCK_SETTINGS, "prefill_ms_per_token": prefill_ms}
        if slow and i == REPLICAS - 1:
            settings["ttft_ms"] = 200
        mocks.append(harness.mock(f"mock{i}", **settings)[1])
    affinity = {
        "prefix_affinity": "true",
        "prefix_cache_tokens": CACHE_BLOCKS * BLOCK_TOKENS,
        "prefill_s_per_token": prefill_ms / 1000,
    }
    gateways = {}
    for name, extra in (
        ("p2c", {"prefix_affinity": "false"}),
        ("affinity", affinity),
        ("affinity-2", affinity),
    ):
        _, gateways[name] = harness.gateway(mocks, f"gateway-{name}", ready_path="/readyz", **extra)
    return Stack(mocks, gateways)


# -- one phase ---------------------------------------------------------------------------


@dataclass
class MockCounts:
    queries: float = 0.0
    hits: float = 0.0
    served: list[float] = field(default_factory=list)


async def scrape(session: aiohttp.ClientSession, mocks: list[str]) -> MockCounts:
    counts = MockCounts()
    for url in mocks:
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
        served = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "vllm:prefix_cache_queries_total":
                    counts.queries += s.value
                elif s.name == "vllm:prefix_cache_hits_total":
                    counts.hits += s.value
                elif s.name == "vllm:request_success_total":
                    served += s.value
        counts.served.append(served)
    return counts


@dataclass
class Phase:
    router: str
    workload: str
    samples: list[Sample]
    window_s: float
    hit_rate: float
    ideal: float
    busiest: float
    last: float  # the last replica's share (the slow one with --slow)

    def ttft(self, q: float) -> float:
        values = [s.ttft for s in self.samples if s.ttft is not None and s.error is None]
        return percentile(values, q) * 1000


async def run_phase(stack: Stack, router: str, kind: str, seed: int, duration_s: float) -> Phase:
    targets = [stack.gateways[g] + PATH for g in router.split("+")]
    workload = Workload("multi-turn" if kind == "two-gateways" else kind, seed)
    ideal = Ideal()
    samples: list[Sample] = []
    timeout = aiohttp.ClientTimeout(total=60)
    measuring = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + WARMUP_S + duration_s
    pick = random.Random(seed)

    async def user(session: aiohttp.ClientSession, n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        await asyncio.sleep(rng.random() * 1.0)
        while loop.time() < stop_at:
            messages = workload.next(n)
            body = orjson.dumps(
                {"model": MODEL, "stream": True, "max_tokens": 16, "messages": messages}
            )
            sample = await one_request(session, pick.choice(targets), body, timeout)
            if measuring.is_set() and loop.time() < stop_at:
                samples.append(sample)
                ideal.add(messages)
            await asyncio.sleep(rng.uniform(0.3, 1.5))

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(user(session, n)) for n in range(USERS)]
        await asyncio.sleep(WARMUP_S)
        before = await scrape(session, stack.mocks)
        measuring.set()
        started = loop.time()
        await asyncio.sleep(max(0.0, stop_at - loop.time()))
        after = await scrape(session, stack.mocks)
        window = loop.time() - started
        await asyncio.gather(*tasks)
    served = [b - a for a, b in zip(before.served, after.served, strict=True)]
    queries = after.queries - before.queries
    return Phase(
        router,
        kind,
        samples,
        window,
        (after.hits - before.hits) / queries if queries else 0.0,
        ideal.hits / ideal.queries if ideal.queries else 0.0,
        max(served) / sum(served) if sum(served) else 0.0,
        served[-1] / sum(served) if sum(served) else 0.0,
    )


# -- tables -------------------------------------------------------------------------------


def row(p: Phase) -> str:
    ok = [s for s in p.samples if s.error is None]
    errors = len(p.samples) - len(ok)
    return (
        f"| {p.workload} | {p.router} | {len(ok)} | {errors} | {len(ok) / p.window_s:.1f} | "
        f"{p.ttft(50):.1f} | {p.ttft(99):.1f} | {p.hit_rate:.1%} | {p.ideal:.1%} | "
        f"{p.hit_rate / p.ideal if p.ideal else 0:.2f} | {p.busiest:.1%} | {p.last:.1%} |"
    )


def summary(phases: list[Phase]) -> list[str]:
    lines = []
    for kind in ("multi-turn", "unique", "hot"):
        base = [p for p in phases if p.workload == kind and p.router == "p2c"]
        new = [p for p in phases if p.workload == kind and p.router == "affinity"]
        if not base or not new:
            continue
        p50 = statistics.median(n.ttft(50) / b.ttft(50) for b, n in zip(base, new, strict=True))
        p99 = statistics.median(n.ttft(99) / b.ttft(99) for b, n in zip(base, new, strict=True))
        busiest = statistics.median(n.busiest * REPLICAS for n in new)
        lines.append(
            f"- {kind}: affinity / today's router, TTFT p50 {p50:.2f}x, p99 {p99:.2f}x; "
            f"busiest replica {busiest:.2f}x the mean share"
        )
    return lines


def hashing_cost() -> str:
    short = ["user", "What is the capital of France?"]
    huge = ["system", "x" * 1_000_000, "user", "What is the capital of France?"]
    times = {}
    for name, parts in (("short", short), ("1 MB", huge)):
        runs = []
        for _ in range(200):
            t0 = time.perf_counter()
            prompt_prefix(parts)
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs) * 1e6
    return (
        f"prompt_prefix: short prompt {times['short']:.1f} us, 1 MB prompt "
        f"{times['1 MB']:.1f} us (median of 200)"
    )


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=15.0, help="measured s per phase")
    parser.add_argument("--repeats", type=int, default=1, help="phases per router and workload")
    parser.add_argument("--workloads", default="multi-turn,unique,hot,two-gateways")
    parser.add_argument(
        "--slow", action="store_true", help="replica 4 has a 10x base TTFT (200 ms)"
    )
    parser.add_argument(
        "--prefill-ms",
        type=float,
        default=PREFILL_MS_PER_TOKEN,
        help="mock prefill per uncached token (the affinity gateways are told the same)",
    )
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    phases = []
    for kind in args.workloads.split(","):
        for r in range(args.repeats):
            routers = ["p2c", "affinity"] if r % 2 == 0 else ["affinity", "p2c"]
            if kind == "two-gateways":
                routers = ["affinity", "affinity+affinity-2"]
            phases += [(router, kind) for router in routers]
    return phases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, terminate)
    info = machine()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# bench.prefix_routing  {info['date']}")
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}; load {load}")
    print(
        f"{REPLICAS} mocks: 20 ms base TTFT + {args.prefill_ms:g} ms per uncached token "
        f"(shared compute), {CACHE_BLOCKS} x {BLOCK_TOKENS}-token cache blocks, 16 tokens "
        f"at 5 ms; {USERS} users, 0.3-1.5 s think time; {args.duration:g} s measured per "
        f"phase after {WARMUP_S:g} s of warm-up; logs in {LOG_DIR}\n",
        flush=True,
    )
    print(hashing_cost(), "\n", flush=True)
    phases: list[Phase] = []
    with Harness(LOG_DIR) as harness:
        stack = start(harness, args.prefill_ms, args.slow)
        print(
            "| workload | router | requests | errors | req/s | TTFT p50 ms | TTFT p99 ms "
            "| hit rate | ideal | of ideal | busiest replica | replica 4 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for seed, (router, kind) in enumerate(plan(args), start=1):
            phase = asyncio.run(run_phase(stack, router, kind, seed, args.duration))
            phases.append(phase)
            print(row(phase), flush=True)
    print()
    print("\n".join(summary(phases)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
