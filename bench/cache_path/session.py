"""A measuring session over the stack: the answers known for each question, the
paraphrases the verifier accepted, settling between cases, timed windows; priming
the cache and asking the verifier about every paraphrase."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.cache_path.client import (
    HIT_EXACT,
    HIT_SEMANTIC,
    MISS,
    PRIME_HEADERS,
    Job,
    Reply,
    ask,
    run_jobs,
)
from bench.cache_path.metrics import Samples, inside, scrape
from bench.cache_path.questions import Pair, spaced
from bench.cache_path.stack import Stack
from bench.loadgen import Cell, Meter

RECOVERY_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Timed:
    replies: list[Reply]
    cpu: dict[str, float]  # CPU seconds in the window, by process
    host_pct: float
    inside: dict[str, Any]  # what the services counted in the window
    settle_s: float


# Measuring.


@dataclass
class Bench:
    stack: Stack
    session: aiohttp.ClientSession
    args: argparse.Namespace
    answers: dict[str, str] = field(default_factory=dict)  # primed question -> its answer
    # primed question -> every answer a hit for it or its paraphrase may rightly carry
    known: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    accepted: list[Pair] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    meter: Meter | None = None
    variants: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fresh(self, pair: Pair) -> str:
        """The pair's paraphrase as never sent before (see :func:`spaced`)."""
        return spaced(pair.paraphrase, next(self.variants))

    def learn(self, replies: Iterable[Reply]) -> None:
        """Keep the answers of a pair's misses: they are stored, and a later variant of the
        same paraphrase may rightly be answered from them."""
        for r in replies:
            if r.job.pair is not None and r.x_cache == MISS and r.text is not None:
                self.known[r.job.pair.original].add(r.text)

    def right(self, reply: Reply) -> bool:
        pair = reply.job.pair
        return pair is None or reply.text in self.known[pair.original]

    async def settle(self) -> float:
        """Seconds until a primed question is a HIT-EXACT and a paraphrase a HIT-SEMANTIC
        again: a sidecar breaker opened in the case before has closed."""
        started = time.monotonic()
        url = self.stack.cached_url
        known = next(iter(self.answers))
        while time.monotonic() - started < RECOVERY_TIMEOUT_S:
            exact = await ask(self.session, Job(url, known, False))
            if exact.x_cache == HIT_EXACT:
                if not self.accepted:
                    break
                pair = self.accepted[0]
                near = await ask(self.session, Job(url, self.fresh(pair), False, pair=pair))
                self.learn([near])
                if near.x_cache == HIT_SEMANTIC:
                    break
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def samples(self, gateway: str = "") -> Samples:
        s = self.stack
        urls = {
            "gateway": (gateway or s.cached_url) + "/metrics",
            "embedder": f"http://127.0.0.1:{s.embedder_metrics_port}/metrics",
            "cache": f"http://127.0.0.1:{s.cache_metrics_port}/metrics",
        }
        got = await asyncio.gather(*(scrape(self.session, u) for u in urls.values()))
        return dict(zip(urls, got, strict=True))

    async def timed(self, warmup: Sequence[Job], jobs: Sequence[Job], concurrency: int) -> Timed:
        """Run ``jobs`` after an unrecorded warm-up, reading CPU and the gateway's counters."""
        settle_s = await self.settle()
        self.learn(await run_jobs(self.session, warmup, concurrency))
        assert self.meter is not None
        cell = Cell(concurrency, "", cpu=dict.fromkeys(self.stack.clocks(), 0.0))
        before = await self.samples()
        self.meter.start()
        replies = await run_jobs(self.session, jobs, concurrency)
        self.meter.stop_into(cell)()
        self.learn(replies)
        after = await self.samples()
        return Timed(replies, cell.cpu, cell.host_busy_pct, inside(before, after), settle_s)


async def prime(bench: Bench, texts: list[str]) -> dict[str, Any]:
    """Store every text (no-cache: no lookup), then ask until each is HIT-EXACT."""
    url = bench.stack.cached_url
    started = time.perf_counter()
    jobs = [Job(url, t, False, headers=PRIME_HEADERS) for t in texts]
    first = await run_jobs(bench.session, jobs, 8)
    for reply in first:
        if reply.error is None and reply.text is not None:
            bench.answers[reply.job.text] = reply.text
            bench.known[reply.job.text].add(reply.text)
    pending = [t for t in texts if t in bench.answers]
    deadline = time.monotonic() + 30
    polls = 0
    while pending and time.monotonic() < deadline:
        replies = await run_jobs(bench.session, [Job(url, t, False) for t in pending], 8)
        polls += len(replies)
        pending = [r.job.text for r in replies if r.x_cache != HIT_EXACT]
        if pending:
            await asyncio.sleep(0.05)
    return {
        "questions": len(texts),
        "stored": len(texts) - len(pending),
        "not_stored": pending,
        "polls": polls,
        "seconds": time.perf_counter() - started,
    }


async def check_pairs(bench: Bench) -> list[dict[str, Any]]:
    """Ask each paraphrase once through VERDICT (JSON, one at a time): HIT-SEMANTIC with the
    original's answer? VERDICT's lookup budget is 1 s, so the verifier decides every one."""
    url = bench.stack.verdict_url
    rows: list[dict[str, Any]] = []
    for pair in bench.pairs:
        if pair.original not in bench.answers:
            continue
        before = await bench.samples(url)
        reply = await ask(bench.session, Job(url, pair.paraphrase, False, pair=pair))
        seen = inside(before, await bench.samples(url))
        bench.learn([reply])
        outcome = "+".join(seen["lookups"]) or "-"
        if seen["lookups"].get("miss") and "rejected_by_verification" not in seen["lookups"]:
            searched = seen["semantic_searches"]
            outcome += " (nothing above the floor)" if searched else " (no semantic search)"
        right = reply.text == bench.answers[pair.original]
        if reply.x_cache == HIT_SEMANTIC and right and reply.error is None:
            bench.accepted.append(pair)
        rows.append(
            {
                "rewrite": pair.rewrite,
                "original": pair.original,
                "paraphrase": pair.paraphrase,
                "x_cache": reply.x_cache,
                "similarity": reply.similarity,
                "right_answer": right,
                "lookup_outcome": outcome,
                "ms": reply.total_ms,
                "error": reply.error,
            }
        )
    return rows
