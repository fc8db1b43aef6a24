"""The router against real processes: a slow replica, and a replica killed and restarted.

Three mock model servers (32 tokens, 20 ms to first token, 5 ms between tokens)
behind one gateway, under a closed loop of streaming chat requests
(``bench.loadgen``, 16 workers by default). Runs:

* **a / b**: three healthy replicas (a) against one made ten times slower to
  its first token (b), b once per decode weight (``DECODE_WEIGHTS``: 1, which
  suits servers that run one request at a time, and the default, which suits
  continuous batching), measured in slices in the order ``ORDER`` (a warm-up
  before each) so that drift in background load falls on all alike. Every
  other setting is the default.
* **b cold**: as b, a fresh gateway with every default, first seconds of
  traffic only: how long before the slow replica is told apart.
* **c**: three healthy replicas, defaults (``--gateway-env`` adds settings);
  one replica is killed (SIGKILL) mid-run and restarted later on the same
  port. Reports client errors before and after streaming began, and when the
  victim's breaker opened, went half-open and closed, and when it served again.

Shares come from the gateway's ``gateway_upstream_attempts_total`` read at
each window's edges; TTFT is measured by the client. Run with
``python -m bench.routing_live`` (about two and a half minutes; ``--help``).

The a/b gateways are started by this module (``--serve-gateway``): the same
app and server options as ``python -m gateway``, with the pool's decode
weight given on the command line, so that both weights can be measured
whether or not the gateway's settings expose it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NoReturn

import aiohttp
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from bench.loadgen import (
    Cell,
    Meter,
    Sample,
    SliceResult,
    chat_body,
    one_request,
    percentile,
    run_slice,
)
from bench.proxy import machine
from deploy.local.procs import PYTHON, ROOT, Proc, free_port, http_ok
from gateway.app import create_app, pool_config
from gateway.balance import Pool
from gateway.balance.pool import DECODE_WEIGHT
from gateway.settings import GatewaySettings
from llmgw_common.logs import configure_logging

MODEL = "mock-llama-3-8b"
MOCK_ENV = {
    "MOCKLLM_TTFT_MS": "20",
    "MOCKLLM_INTER_TOKEN_MS": "5",
    "MOCKLLM_OUTPUT_TOKENS": "32",
    "MOCKLLM_MAX_CONCURRENCY": "256",
    "MOCKLLM_MODELS": MODEL,
    "MOCKLLM_LOG_LEVEL": "warning",
}
SLOW_TTFT_MS = 200
DECODE_WEIGHTS = {"B": 1.0, "b": DECODE_WEIGHT}  # run key -> PoolConfig.decode_weight
LOG_DIR = ROOT / "var" / "log" / "bench-routing"
PATH = "/v1/chat/completions"
TARGET_SLOW_SHARE = 0.10
TARGET_P99_RATIO = 1.5
# Slices of runs a, B (decode weight 1) and b (default): each B or b slice is
# next to, or one from, an a slice, and drift in background load falls on all.
ORDER = "aBbbBaaBbbBa"
SLOW_MARK_S = 0.1  # a first token later than this counts as "slow" in the table


# -- processes ----------------------------------------------------------------------


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
    tag: str,
    *,
    slow: bool,
    gateway_env: dict[str, str],
    procs: list[Proc],
    decode_weight: float | None = None,
) -> Stack:
    """Three mock replicas (the third slow if asked) and a gateway, all on free ports.

    With ``decode_weight`` the gateway is started by :func:`serve_gateway`.
    """
    replicas = []
    for i in range(3):
        port = free_port()
        env = {**MOCK_ENV, "MOCKLLM_PORT": str(port)}
        if slow and i == 2:
            env["MOCKLLM_TTFT_MS"] = str(SLOW_TTFT_MS)
        proc = Proc(f"{tag}-mock{i}", [PYTHON, "-m", "mockllm"], env=env, log_dir=LOG_DIR)
        procs.append(proc.start())
        replicas.append((proc, f"http://127.0.0.1:{port}"))
    for proc, url in replicas:
        proc.wait_until(healthy(url), timeout=30)
    port = free_port()
    backends = [{"url": url, "models": [MODEL]} for _, url in replicas]
    env = {"GATEWAY_PORT": str(port), "GATEWAY_BACKENDS": json.dumps(backends), **gateway_env}
    argv = [PYTHON, "-m", "gateway"]
    if decode_weight is not None:
        argv = [PYTHON, "-m", "bench.routing_live", "--serve-gateway", str(decode_weight)]
    gateway = Proc(f"{tag}-gateway", argv, env=env, log_dir=LOG_DIR)
    procs.append(gateway.start())
    url = f"http://127.0.0.1:{port}"
    gateway.wait_until(lambda: http_ok(f"{url}/readyz"), timeout=30)
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


# -- a / b: share and TTFT -----------------------------------------------------------------


@dataclass
class Run(Cell):
    """``loadgen.Cell`` plus the requests each replica served in the measured windows."""

    urls: list[str] = field(default_factory=list)
    served: dict[str, float] = field(default_factory=dict)

    @property
    def ttfts(self) -> list[float]:
        return [x.ttft for s in self.slices for x in s.ok if x.ttft is not None]

    def share(self, i: int) -> float:
        served = sum(self.served.values())
        return self.served.get(self.urls[i], 0.0) / served if served else math.nan

    @property
    def slow_pct(self) -> float:
        ttfts = self.ttfts
        return 100 * sum(1 for t in ttfts if t > SLOW_MARK_S) / len(ttfts) if ttfts else math.nan


async def measure(
    cell: Run, gateway: str, args: argparse.Namespace, counter: itertools.count[int]
) -> None:
    """One slice of closed-loop load; adds the attempts served inside its window."""
    edges: list[asyncio.Task[Snapshot]] = []
    host = Meter({})  # the whole machine's busy share: others' jobs show up here

    async with aiohttp.ClientSession() as session:

        def edge() -> None:
            edges.append(asyncio.ensure_future(scrape(session, gateway)))
            if len(edges) == 1:
                host.start()
            else:
                host.stop_into(cell)()

        result = await run_slice(
            gateway + PATH,
            MODEL,
            args.concurrency,
            warmup_s=args.warmup,
            duration_s=args.duration / ORDER.count("a"),  # every run has as many slices
            on_window_start=edge,
            on_window_end=edge,
            counter=counter,
        )
        first, last = [await task for task in edges]
    cell.slices.append(result)
    for url in cell.urls:
        cell.served[url] = cell.served.get(url, 0.0) + last.served(url) - first.served(url)
    print(f"  {cell.target}: {result.rps:.1f} req/s, {result.errors} errors", file=sys.stderr)


def share_table(cells: list[Run]) -> str:
    head = (
        "| run | streams | errors | share r1 | share r2 | share r3 (slow in b, B) "
        f"| TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | TTFT > {SLOW_MARK_S * 1000:.0f} ms "
        "| host busy |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        shares = " | ".join(f"{100 * c.share(i):.1f}%" for i in range(3))
        lines.append(
            f"| {c.target} | {len(c.ttfts)} | {c.errors} | {shares} | {c.ttft_ms(50):.1f} "
            f"| {c.ttft_ms(90):.1f} | {c.ttft_ms(99):.1f} | {c.slow_pct:.1f}% "
            f"| {c.host_busy_pct:.0f}% |"
        )
    return "\n".join(lines)


def slice_p99(result: SliceResult) -> float:
    return percentile([x.ttft for x in result.ok if x.ttft is not None], 99)


def verdict(healthy: Run, slow: Run, ratios: list[float]) -> list[str]:
    """The issue's targets; the p99 ratio is the median over slices, each against its a."""
    ratio = statistics.median(ratios)
    share = slow.share(2)
    each = ", ".join(f"{r:.2f}" for r in ratios)
    name = slow.target.split(":")[0]
    return [
        f"{name}: slow replica share {100 * share:.2f}% "
        f"(target < {100 * TARGET_SLOW_SHARE:.0f}%): "
        + ("met" if share < TARGET_SLOW_SHARE else "MISSED"),
        f"{name}: TTFT p99 {name} / a, pooled: {slow.ttft_ms(99):.1f} / "
        f"{healthy.ttft_ms(99):.1f} ms = {slow.ttft_ms(99) / healthy.ttft_ms(99):.2f}x; "
        f"per slice against the nearest a slice: {each}",
        f"{name}: TTFT p99 {name} / a, median of the slices: {ratio:.2f}x "
        f"(target <= {TARGET_P99_RATIO}x): " + ("met" if ratio <= TARGET_P99_RATIO else "MISSED"),
    ]


def nearest_a(i: int) -> int:
    """The index in ``ORDER`` of the a slice closest to slice ``i`` (earlier on a tie)."""
    return min((j for j, key in enumerate(ORDER) if key == "a"), key=lambda j: (abs(j - i), j))


async def run_ab(
    stacks: dict[str, Stack], args: argparse.Namespace
) -> tuple[dict[str, Run], dict[str, list[float]]]:
    """Slices in the order ``ORDER``; each B or b slice gives one p99 ratio to its nearest a."""
    cells = {"a": Run(args.concurrency, "a: 3 healthy", urls=stacks["a"].urls)}
    for key, weight in DECODE_WEIGHTS.items():
        target = f"{key}: 1 slow (10x TTFT), decode weight {weight:g}"
        cells[key] = Run(args.concurrency, target, urls=stacks[key].urls)
    counter = itertools.count()
    p99: list[float] = []
    for key in ORDER:
        await measure(cells[key], stacks[key].gateway, args, counter)
        p99.append(slice_p99(cells[key].slices[-1]))
    ratios: dict[str, list[float]] = {key: [] for key in DECODE_WEIGHTS}
    for i, key in enumerate(ORDER):
        if key != "a":
            ratios[key].append(p99[i] / p99[nearest_a(i)])
    return cells, ratios


async def run_cold(stack: Stack, args: argparse.Namespace) -> Run:
    cell = Run(args.concurrency, f"b cold: defaults, first {args.cold:g} s", urls=stack.urls)
    cold = argparse.Namespace(
        **{**vars(args), "warmup": 0.0, "duration": ORDER.count("a") * args.cold}
    )  # one slice of args.cold seconds
    await measure(cell, stack.gateway, cold, itertools.count(10**9))
    return cell


# -- c: kill and restart ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    t: float  # seconds after the kill
    state: str  # the victim's breaker state
    served: float  # requests the victim has served so far
    ejections: float


@dataclass
class Outage:
    samples: list[Sample] = field(default_factory=list)
    timeline: list[Tick] = field(default_factory=list)  # polled every 0.2 s
    killed_at: float = 0.0  # perf_counter
    restarted: float = math.nan  # seconds after the kill
    served_at_restart: float = math.inf
    failed_attempts: float = 0.0

    def events(self) -> list[tuple[str, float]]:
        """Breaker transitions as polled, the restart and the first request served after it."""
        rows = [("killed (SIGKILL)", 0.0), ("restarted on the same port", self.restarted)]
        prev = ("closed", self.timeline[0].ejections if self.timeline else 0.0)
        for tick in self.timeline:
            if (tick.state, tick.ejections) != prev:
                opened = f", ejection {tick.ejections:.0f}" if tick.state == "open" else ""
                rows.append((f"breaker {tick.state}{opened}", tick.t))
                prev = (tick.state, tick.ejections)
        served = next((k.t for k in self.timeline if k.served > self.served_at_restart), math.nan)
        rows.append(("first request served after the restart", served))
        return sorted(rows, key=lambda row: math.inf if math.isnan(row[1]) else row[1])


async def closed_loop(url: str, workers: int, stop: asyncio.Event, samples: list[Sample]) -> None:
    """Like ``loadgen.run_slice`` but until ``stop`` is set, keeping every sample."""
    counter = itertools.count(2 * 10**9)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=workers)) as session:

        async def worker() -> None:
            while not stop.is_set():
                body = chat_body(MODEL, next(counter))
                samples.append(await one_request(session, url, body, timeout))

        await asyncio.gather(*(worker() for _ in range(workers)))


def restart(proc: Proc, url: str) -> None:
    proc.start().wait_until(healthy(url), timeout=30)


async def run_outage(stack: Stack, args: argparse.Namespace) -> Outage:
    victim_proc, victim = stack.replicas[2]
    out, stop = Outage(), asyncio.Event()
    load = asyncio.create_task(
        closed_loop(stack.gateway + PATH, args.concurrency, stop, out.samples)
    )
    async with aiohttp.ClientSession() as session:
        await asyncio.sleep(args.kill_after)
        out.killed_at = time.perf_counter()
        await asyncio.to_thread(victim_proc.kill)
        while (now := time.perf_counter()) - out.killed_at < args.outage_cap:
            snap = await scrape(session, stack.gateway)
            state, served = snap.breaker.get(victim, "?"), snap.served(victim)
            ejections = snap.ejections.get(victim, 0.0)
            out.timeline.append(Tick(snap.at - out.killed_at, state, served, ejections))
            if math.isnan(out.restarted) and now - out.killed_at >= args.restart_after:
                await asyncio.to_thread(restart, victim_proc, victim)
                out.restarted = time.perf_counter() - out.killed_at
                out.served_at_restart = (await scrape(session, stack.gateway)).served(victim)
            elif state == "closed" and served > out.served_at_restart:
                break  # probed and rejoined
            await asyncio.sleep(0.2)
        stop.set()
        await load
        final = await scrape(session, stack.gateway)
    out.failed_attempts = sum(
        v for (ep, outcome), v in final.attempts.items() if ep == victim and outcome != "success"
    )
    return out


def outage_tables(out: Outage) -> str:
    errors = [s for s in out.samples if s.error is not None]
    cut = [s for s in errors if s.error in ("error_event", "no_done")]  # after a 200
    before = [s for s in errors if s not in cut]
    after_kill = [s for s in out.samples if s.started >= out.killed_at]
    lines = [
        "| requests | started after the kill | errors before streaming (target 0) "
        "| streams cut mid-way | errors among requests started after the kill "
        "| failed attempts on the victim |",
        "|---|---|---|---|---|---|",
        f"| {len(out.samples)} | {len(after_kill)} | {len(before)} | {len(cut)} "
        f"| {sum(1 for s in after_kill if s.error)} | {out.failed_attempts:.0f} |",
        "",
        "| event | seconds after the kill |",
        "|---|---|",
    ]
    for name, t in out.events():
        lines.append(f"| {name} | {'not seen' if math.isnan(t) else f'{t:.1f}'} |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = (__doc__ or "").split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m bench.routing_live", description=doc)
    p.add_argument("--runs", type=lambda v: v.split(","), default=["ab", "c"], help="ab,c")
    p.add_argument("--concurrency", type=int, default=16, help="closed-loop workers")
    p.add_argument("--duration", type=float, default=16.0, help="measured s per run (a, B, b)")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured s before each slice")
    p.add_argument("--cold", type=float, default=8.0, help="s measured from a cold gateway")
    p.add_argument("--kill-after", type=float, default=4.0, help="c: load s before the kill")
    p.add_argument("--restart-after", type=float, default=10.0, help="c: s dead")
    p.add_argument("--outage-cap", type=float, default=70.0, help="c: give up s after the kill")
    p.add_argument(
        "--gateway-env",
        type=json.loads,
        default={},
        help='GATEWAY_ settings for run c, JSON: {"GATEWAY_EWMA_TAU_S": "1"}',
    )
    p.add_argument(
        "--serve-gateway",
        type=float,
        metavar="DECODE_WEIGHT",
        help="internal: serve the gateway (GATEWAY_ settings) with this pool decode weight",
    )
    return p.parse_args(argv)


async def run_ab_tables(args: argparse.Namespace, procs: list[Proc]) -> None:
    a = start_stack("a", slow=False, gateway_env={}, procs=procs, decode_weight=DECODE_WEIGHT)
    stacks = {"a": a}
    for key, weight in DECODE_WEIGHTS.items():
        stacks[key] = start_stack(key, slow=True, gateway_env={}, procs=procs, decode_weight=weight)
    cells, ratios = await run_ab(stacks, args)
    cold = await run_cold(start_stack("cold", slow=True, gateway_env={}, procs=procs), args)
    print(f"\n## a / b: share and time to first token, {args.concurrency} streams in flight\n")
    print(share_table([*cells.values(), cold]))
    print()
    for key in DECODE_WEIGHTS:
        for line in verdict(cells["a"], cells[key], ratios[key]):
            print(line)
    print(f"b cold: slow replica share {100 * cold.share(2):.2f}%")


async def run_c_tables(args: argparse.Namespace, procs: list[Proc]) -> None:
    env = dict(args.gateway_env)
    out = await run_outage(start_stack("c", slow=False, gateway_env=env, procs=procs), args)
    shown = " ".join(f"{k}={v}" for k, v in env.items()) or "defaults"
    print(f"\n## c: one of three replicas killed and restarted ({shown})\n")
    print(outage_tables(out))


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


def stop_all(procs: list[Proc]) -> None:
    for proc in reversed(procs):
        proc.stop()
    procs.clear()


def _terminate(signum: int, _frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # so that ``finally`` stops every process


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_gateway is not None:
        serve_gateway(args.serve_gateway)
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    info = machine()
    print(f"# bench.routing_live  {info['date']}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}; load {load}")
    print(
        f"mock: 32 tokens, 20 ms TTFT ({SLOW_TTFT_MS} ms when slow), 5 ms between tokens; "
        f"gateways: default settings, decode weight {DECODE_WEIGHT:g} unless shown; "
        f"{args.duration:g} s measured per run in slices {ORDER}; logs in {LOG_DIR}",
        flush=True,
    )
    procs: list[Proc] = []
    try:
        if "ab" in args.runs:
            asyncio.run(run_ab_tables(args, procs))
            stop_all(procs)
        if "c" in args.runs:
            asyncio.run(run_c_tables(args, procs))
    finally:
        stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
