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
import itertools
import json
import math
import os
import signal
import statistics
import sys
from dataclasses import dataclass, field

import aiohttp

from bench.loadgen import Cell, Meter, SliceResult, run_slice
from bench.routing_outage import outage_tables, run_outage
from bench.routing_stack import (
    LOG_DIR,
    MODEL,
    PATH,
    SLOW_TTFT_MS,
    Snapshot,
    Stack,
    scrape,
    serve_gateway,
    start_stack,
)
from bench.runner import machine, terminate
from bench.stats import md_table, percentile
from deploy.local.harness import Stack as Harness
from gateway.balance.pool import DECODE_WEIGHT

DECODE_WEIGHTS = {"B": 1.0, "b": DECODE_WEIGHT}  # run key -> PoolConfig.decode_weight
TARGET_SLOW_SHARE = 0.10
TARGET_P99_RATIO = 1.5
# Slices of runs a, B (decode weight 1) and b (default): each B or b slice is
# next to, or one from, an a slice, and drift in background load falls on all.
ORDER = "aBbbBaaBbbBa"
SLOW_MARK_S = 0.1  # a first token later than this counts as "slow" in the table


# -- a / b: share and TTFT -----------------------------------------------------------------


@dataclass
class Run(Cell):
    """``loadgen.Cell`` plus the requests each replica served in the measured windows."""

    urls: list[str] = field(default_factory=list)
    served: dict[str, float] = field(default_factory=dict)
    attempts: float = 0.0  # every upstream attempt in the windows, whatever its outcome

    @property
    def extra_attempts(self) -> float:
        """Upstream attempts beyond one per answered stream (hedges, retries), as a share."""
        streams = len(self.ttfts)
        return self.attempts / streams - 1 if streams else math.nan

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
    cell.attempts += sum(last.attempts.values()) - sum(first.attempts.values())
    print(f"  {cell.target}: {result.rps:.1f} req/s, {result.errors} errors", file=sys.stderr)


def share_table(cells: list[Run]) -> str:
    head = ["run", "streams", "errors", "share r1", "share r2", "share r3 (slow in b, B)"]
    head += ["TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms", f"TTFT > {SLOW_MARK_S * 1000:.0f} ms"]
    rows = (
        [
            c.target,
            len(c.ttfts),
            c.errors,
            *(f"{100 * c.share(i):.1f}%" for i in range(3)),
            *(f"{c.ttft_ms(q):.1f}" for q in (50, 90, 99)),
            f"{c.slow_pct:.1f}%",
            f"{100 * c.extra_attempts:.1f}%",
            f"{c.host_busy_pct:.0f}%",
        ]
        for c in cells
    )
    return md_table([*head, "extra upstream attempts", "host busy"], rows)


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
        f"{name}: TTFT p99 {name} / a, worst slice: {max(ratios):.2f}x "
        f"(target <= {TARGET_P99_RATIO}x in every slice): "
        + ("met" if max(ratios) <= TARGET_P99_RATIO else "MISSED"),
        f"{name}: extra upstream attempts (hedges, retries) {100 * slow.extra_attempts:.1f}% "
        f"(target < 5%): " + ("met" if slow.extra_attempts < 0.05 else "MISSED"),
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


async def run_ab_tables(args: argparse.Namespace, harness: Harness) -> None:
    a = start_stack(harness, "a", slow=False, gateway_env={}, decode_weight=DECODE_WEIGHT)
    stacks = {"a": a}
    for key, weight in DECODE_WEIGHTS.items():
        stacks[key] = start_stack(harness, key, slow=True, gateway_env={}, decode_weight=weight)
    cells, ratios = await run_ab(stacks, args)
    cold = await run_cold(start_stack(harness, "cold", slow=True, gateway_env={}), args)
    print(f"\n## a / b: share and time to first token, {args.concurrency} streams in flight\n")
    print(share_table([*cells.values(), cold]))
    print()
    for key in DECODE_WEIGHTS:
        for line in verdict(cells["a"], cells[key], ratios[key]):
            print(line)
    print(f"b cold: slow replica share {100 * cold.share(2):.2f}%")


async def run_c_tables(args: argparse.Namespace, harness: Harness) -> None:
    env = dict(args.gateway_env)
    out = await run_outage(start_stack(harness, "c", slow=False, gateway_env=env), args)
    shown = " ".join(f"{k}={v}" for k, v in env.items()) or "defaults"
    print(f"\n## c: one of three replicas killed and restarted ({shown})\n")
    print(outage_tables(out))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_gateway is not None:
        serve_gateway(args.serve_gateway)
        return 0
    signal.signal(signal.SIGTERM, terminate)
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
    if "ab" in args.runs:
        with Harness(LOG_DIR) as harness:
            asyncio.run(run_ab_tables(args, harness))
    if "c" in args.runs:
        with Harness(LOG_DIR) as harness:
            asyncio.run(run_c_tables(args, harness))
    return 0


if __name__ == "__main__":
    sys.exit(main())
