"""The timed cases: exact and semantic hits, the miss cost, fail-open with a sidecar
killed; and the whole measurement, in order."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiohttp

from bench.cache_path.client import HIT_EXACT, HIT_SEMANTIC, Job, Reply, ask, run_jobs
from bench.cache_path.questions import Pair, miss_question, question_pairs
from bench.cache_path.session import RECOVERY_TIMEOUT_S, Bench, Timed, check_pairs, prime
from bench.cache_path.stack import Stack
from bench.loadgen import Meter
from bench.stats import percentile, summary
from deploy.local.procs import Proc, grpc_serving, redis_ready

TARGET_EXACT_P50_MS = 3.0
TARGET_SEMANTIC_P50_MS = 8.0
TARGET_MISS_ADDED_P50_MS = 3.0


def rate(replies: Sequence[Reply]) -> float:
    """Requests completed per second, first request sent to last byte."""
    if not replies:
        return math.nan
    span = max(r.ended for r in replies) - min(r.started for r in replies)
    return len(replies) / span if span > 0 else math.nan


def hit_row(
    case: str,
    concurrency: int,
    expected: str,
    timed: Timed,
    target_ms: float | None,
    right: Callable[[Reply], bool],
) -> dict[str, Any]:
    replies, cpu = timed.replies, timed.cpu
    hits = [r.total_ms for r in replies if r.error is None and r.x_cache == expected]
    wrong = [r for r in replies if r.error is None and r.x_cache == expected and not right(r)]
    n = len(replies)
    return {
        "case": case,
        "concurrency": concurrency,
        "requests": n,
        "rps": rate(replies),
        "expected": expected,
        "as_expected": len(hits),
        "x_cache": dict(Counter(r.x_cache for r in replies)),
        "errors": sum(1 for r in replies if r.error is not None),
        "wrong_answers": len(wrong),
        "wrong_examples": [
            {"asked": r.job.text, "similarity": r.similarity, "answer": (r.text or "")[:80]}
            for r in wrong[:3]
        ],
        **summary(hits, (50, 99), "p{q:g}_ms"),
        "target_p50_ms": target_ms,
        "gateway_cpu_ms_per_req": cpu["cached"] * 1000 / n if n else math.nan,
        "embedder_cpu_ms_per_req": cpu["embedder"] * 1000 / n if n else math.nan,
        "cache_redis_cpu_ms_per_req": (cpu["cache"] + cpu["redis"]) * 1000 / n if n else math.nan,
        "host_busy_pct": timed.host_pct,
        **timed.inside,
        "settle_s": timed.settle_s,
    }


async def measure_hits(bench: Bench, concurrency: int) -> list[dict[str, Any]]:
    url = bench.stack.cached_url
    rng = random.Random(concurrency)
    primed = [p for p in bench.pairs if p.original in bench.answers]
    rows = []
    cases: list[tuple[str, list[Pair], bool, str, float | None]] = [
        ("exact hit, streamed", primed, True, HIT_EXACT, TARGET_EXACT_P50_MS),
        ("exact hit, JSON", primed, False, HIT_EXACT, None),
        ("semantic hit, JSON", bench.accepted, False, HIT_SEMANTIC, TARGET_SEMANTIC_P50_MS),
        ("semantic hit, streamed", bench.accepted, True, HIT_SEMANTIC, TARGET_SEMANTIC_P50_MS),
    ]
    for case, pairs, stream, expected, target in cases:
        if not pairs:
            continue
        rounds = [rng.sample(pairs, len(pairs)) for _ in range(bench.args.rounds + 1)]
        order = [p for r in rounds for p in r]  # the first 10 warm up
        jobs = [
            Job(
                url,
                p.original if expected == HIT_EXACT else bench.fresh(p),
                stream,
                pair=p,
            )
            for p in order[: 10 + len(pairs) * bench.args.rounds]
        ]
        timed = await bench.timed(jobs[:10], jobs[10:], concurrency)
        row = hit_row(case, concurrency, expected, timed, target, bench.right)
        rows.append(row)
        print(
            f"  c={concurrency} {case}: p50 {row['p50_ms']:.2f} ms, "
            f"{row['as_expected']}/{row['requests']} {expected}, {row['errors']} errors",
            file=sys.stderr,
        )
    return rows


async def measure_miss(bench: Bench, concurrency: int, first: int) -> list[dict[str, Any]]:
    """Never-seen questions, each through CACHED and PLAIN back to back, order alternating."""
    s = bench.stack
    jobs: list[Job] = []
    for i in range(-4, bench.args.miss_pairs):  # the first four pairs warm up
        text = miss_question(first + 4 + i)
        order = (s.cached_url, s.plain_url) if i % 2 == 0 else (s.plain_url, s.cached_url)
        jobs += [Job(base, text, True, ttft=True, tag=i) for base in order]
    timed = await bench.timed(jobs[:8], jobs[8:], concurrency)
    replies, cpu = timed.replies, timed.cpu
    rows: list[dict[str, Any]] = []
    by: dict[str, dict[int, Reply]] = {s.cached_url: {}, s.plain_url: {}}
    for r in replies:
        by[r.job.base][r.job.tag] = r
    for name, base in (("cached", s.cached_url), ("plain", s.plain_url)):
        mine = list(by[base].values())
        ok = [r for r in mine if r.error is None and r.ttft is not None]
        rows.append(
            {
                "concurrency": concurrency,
                "gateway": name,
                "requests": len(mine),
                "x_cache": dict(Counter(r.x_cache for r in mine)),
                "errors": sum(1 for r in mine if r.error is not None),
                **summary([r.ttft * 1000 for r in ok if r.ttft], (50, 99), "ttft_p{q:g}_ms"),
                **summary([r.total_ms for r in ok], (50, 99), "total_p{q:g}_ms"),
                "gateway_cpu_ms_per_req": cpu[name] * 1000 / len(mine) if mine else math.nan,
                "host_busy_pct": timed.host_pct,
                **(timed.inside if name == "cached" else {"lookups": {}, "sidecar_errors": {}}),
            }
        )
    cached, plain = rows
    paired_ttft, paired_total = [], []
    for tag, a in by[s.cached_url].items():
        b = by[s.plain_url].get(tag)
        if b and a.ttft and b.ttft and a.error is None and b.error is None:
            paired_ttft.append((a.ttft - b.ttft) * 1000)
            paired_total.append(a.total_ms - b.total_ms)
    rows.append(
        {
            "concurrency": concurrency,
            "gateway": "added (cached - plain)",
            "requests": len(paired_ttft),
            "ttft_p50_ms": cached["ttft_p50_ms"] - plain["ttft_p50_ms"],
            "ttft_p99_ms": cached["ttft_p99_ms"] - plain["ttft_p99_ms"],
            "total_p50_ms": cached["total_p50_ms"] - plain["total_p50_ms"],
            "total_p99_ms": cached["total_p99_ms"] - plain["total_p99_ms"],
            "paired_ttft_median_ms": statistics.median(paired_ttft) if paired_ttft else math.nan,
            "paired_total_median_ms": statistics.median(paired_total) if paired_total else math.nan,
            "gateway_cpu_ms_per_req": cached["gateway_cpu_ms_per_req"]
            - plain["gateway_cpu_ms_per_req"],
        }
    )
    print(
        f"  c={concurrency} miss: added TTFT p50 {rows[-1]['ttft_p50_ms']:.2f} ms "
        f"(paired median {rows[-1]['paired_ttft_median_ms']:.2f}), "
        f"cached {cached['x_cache']}, plain {plain['x_cache']}",
        file=sys.stderr,
    )
    return rows


def burst_jobs(bench: Bench, count: int, offset: int, fresh_from: int) -> list[Job]:
    """Would-be exact and semantic hits and fresh misses, streamed and not, in turn."""
    url = bench.stack.cached_url
    primed = [p for p in bench.pairs if p.original in bench.answers]
    accepted = bench.accepted or primed
    jobs = []
    for i in range(count):
        kind, stream = divmod(i % 6, 2)
        k = offset + i // 6
        if kind == 0:
            text = primed[k % len(primed)].original
        elif kind == 1:
            text = bench.fresh(accepted[k % len(accepted)])
        else:
            text = miss_question(fresh_from + i)
        jobs.append(Job(url, text, bool(stream)))
    return jobs


async def probe_until_hit(
    bench: Bench, texts: Iterable[str], want: set[str]
) -> tuple[float | None, Counter[str]]:
    """Seconds until one of ``texts`` (asked in turn) answers with an X-Cache in ``want``,
    and what the probes got (an error counts as its error)."""
    started = time.monotonic()
    seen: Counter[str] = Counter()
    for text in texts:
        if time.monotonic() - started > RECOVERY_TIMEOUT_S:
            break
        reply = await ask(bench.session, Job(bench.stack.cached_url, text, False))
        seen[reply.error or reply.x_cache] += 1
        if reply.error is None and reply.x_cache in want:
            return time.monotonic() - started, seen
        await asyncio.sleep(0.1)
    return None, seen


async def fail_open(bench: Bench) -> list[dict[str, Any]]:
    s = bench.stack
    n = bench.args.burst
    known = next(p.original for p in bench.pairs if p.original in bench.answers)
    probe = bench.accepted[0] if bench.accepted else None
    rows = []
    cases: list[tuple[str, Proc | None, Callable[[], bool]]] = [
        ("nothing", None, lambda: True),
        ("embedder", s.embedder, lambda: grpc_serving(s.embedder_port)),
        ("cache service", s.cache, lambda: grpc_serving(s.cache_port)),
        ("redis", s.redis, redis_ready(s.redis_port)),
    ]
    for i, (name, proc, ready) in enumerate(cases):
        await bench.settle()  # every breaker closed: the burst shows this stop alone
        if proc is not None:
            proc.kill()  # SIGKILL
        replies = await run_jobs(bench.session, burst_jobs(bench, n, i * 3, 10_000 + i * n), 4)
        row: dict[str, Any] = {
            "stopped": name,
            "requests": len(replies),
            "errors": sum(1 for r in replies if r.error is not None),
            "error_kinds": dict(Counter(r.error for r in replies if r.error is not None)),
            "x_cache": dict(Counter(r.x_cache for r in replies)),
            "p50_ms": percentile([r.total_ms for r in replies], 50),
            "max_ms": max((r.total_ms for r in replies), default=math.nan),
            "ready_s": None,
            "hit_again_s": None,
            "probe": "",
            "probes": {},
        }
        if proc is not None:
            restarted = time.monotonic()
            proc.start()
            await asyncio.to_thread(proc.wait_until, ready, 120)
            row["ready_s"] = time.monotonic() - restarted
            if proc is s.embedder and probe is not None:
                # Never-sent variants of an accepted paraphrase: a miss (stored) in the
                # poll cannot make the next one an exact hit.
                texts: Iterable[str] = (bench.fresh(probe) for _ in range(10_000))
                want, row["probe"] = {HIT_SEMANTIC}, "HIT-SEMANTIC"
            else:
                texts, want, row["probe"] = (known for _ in range(10_000)), {HIT_EXACT}, "HIT-EXACT"
            waited, row["probes"] = await probe_until_hit(bench, texts, want)
            row["hit_again_s"] = None if waited is None else row["ready_s"] + waited
        rows.append(row)
        print(
            f"  stopped {name}: {row['errors']} errors of {row['requests']}, {row['x_cache']}, "
            f"hit again after {row['hit_again_s']} s",
            file=sys.stderr,
        )
    return rows


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        bench = Bench(stack, session, args, pairs=question_pairs())
        bench.meter = Meter(stack.clocks())
        print("priming ...", file=sys.stderr)
        primed = await prime(bench, [p.original for p in bench.pairs])
        print(f"  {primed['stored']}/{primed['questions']} stored", file=sys.stderr)
        checks = await check_pairs(bench)
        print(f"  {len(bench.accepted)}/{len(checks)} paraphrases accepted", file=sys.stderr)
        load_start = os.getloadavg()
        hits, misses = [], []
        for i, conc in enumerate(args.concurrency):
            hits += await measure_hits(bench, conc)
            misses += await measure_miss(bench, conc, first=i * 1000)
        load_end = os.getloadavg()
        failopen = await fail_open(bench)
    return {
        "primed": primed,
        "pairs": checks,
        "hits": hits,
        "miss": misses,
        "fail_open": failopen,
        "load_during": [load_start, load_end],
    }
