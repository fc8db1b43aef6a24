"""Run c of ``bench.routing_live``: one of three replicas killed (SIGKILL) under load and
restarted on the same port; client errors, and the victim's breaker as polled."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import time
from dataclasses import dataclass, field

import aiohttp

from bench.loadgen import Sample, chat_body, one_request
from bench.routing_stack import MODEL, PATH, Stack, healthy, scrape
from bench.stats import md_table
from deploy.local.procs import Proc


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
    head = ["requests", "started after the kill", "errors before streaming (target 0)"]
    head += ["streams cut mid-way", "errors among requests started after the kill"]
    head += ["failed attempts on the victim"]
    row: list[object] = [len(out.samples), len(after_kill), len(before), len(cut)]
    row += [sum(1 for s in after_kill if s.error), f"{out.failed_attempts:.0f}"]
    events = [(name, "not seen" if math.isnan(t) else f"{t:.1f}") for name, t in out.events()]
    return "\n\n".join(
        [md_table(head, [row]), md_table(["event", "seconds after the kill"], events)]
    )
