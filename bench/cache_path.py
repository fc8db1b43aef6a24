"""The semantic cache in the request path, end to end through real processes.

    python -m bench.cache_path [--concurrency 1,8] [--rounds 4] [--miss-pairs 60] [--burst 60]
                               [--load-below 1.5] [--wait-load 300] [--json FILE]
    python -m bench.cache_path --summarize run1.json run2.json run3.json

Starts a throwaway ``redis-server``, the embedder (``python -m embedder``, ONNX
int8), the cache service (``python -m semcache`` on that Redis), one mock model
server (32 tokens, 20 ms to first token, 5 ms between tokens) and, in front of
the same mock, with metrics and request logs on, the two gateways compared:
CACHED (``GATEWAY_CACHE_TARGET`` and ``GATEWAY_EMBEDDER_TARGET``, every cache
setting at its default, see ``gateway.settings``) and PLAIN (no sidecars); and
a third, VERDICT, like CACHED but with a 1 s lookup budget and the upstream
started only after the lookup, used only to ask the verifier about the
paraphrases whatever the machine's load. Every request
has ``temperature: 0`` (cacheable). Then, at each concurrency:

1. **exact hits**: questions primed into the cache (first ask with
   ``Cache-Control: no-cache``, then asked until one says ``HIT-EXACT``), timed
   request sent -> last byte (``data: [DONE]`` seen when streamed);
2. **semantic hits**: paraphrases made by simple rewrites of the primed
   questions (``How do I`` <-> ``How can I``, ``What is`` <-> ``What's``, a
   trailing ``?`` added or removed, a few reworded by hand), each asked once
   through VERDICT (``HIT-SEMANTIC`` with the primed question's own answer,
   counted per rewrite with the lookup outcome), then the accepted ones timed
   through CACHED, JSON and streamed. Every timed paraphrase is a spacing
   variant never sent before (:func:`spaced`): same tokens, same vector, same
   verdict, but its own exact key, so one that misses (over budget) and is
   stored cannot turn the later ones into exact hits;
3. **miss cost**: never-seen questions, each sent to CACHED and to PLAIN one
   after the other (the order alternating), streamed: time to first token and
   total, and the difference of the p50s;
4. **fail-open**: for each of the embedder, the cache service and Redis:
   SIGKILL it, send a burst of mixed requests (would-be exact and semantic
   hits, misses, streamed and not) through CACHED and count errors and
   ``X-Cache`` values; restart it and poll until a known question is a hit
   again (for the embedder a semantic hit, with never-sent paraphrase variants).

Every hit's answer is checked: the mock answers each prompt with its own
tokens, so a hit must carry the primed question's answer (or, for a
paraphrase, the answer stored when one of its variants missed). Before each
timed case it waits until a primed question is a ``HIT-EXACT`` and a
paraphrase a ``HIT-SEMANTIC`` again, so a sidecar breaker opened in the case
before does not carry over. The services' own histograms give the mean time
of each step of the lookup.

Before starting anything it waits (bounded) for the machine's 1-minute load
average to fall under ``--load-below``, and prints it with the tables. CPU
time (user + system) of the processes is read around every timed case.
``--json`` keeps the run; ``--summarize`` prints the medians of the target
figures over several runs. Everything started is stopped at the end, also on
Ctrl-C, SIGTERM or an error. Logs go to ``var/log/bench/cache_path/``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import random
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.loadgen import Cell, CpuClock, Meter, _read_stream, percentile
from bench.proxy import MOCK_ENV, MODEL, _run_loop, _terminate, machine
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
PATH = "/v1/chat/completions"
TARGET_EXACT_P50_MS = 3.0
TARGET_SEMANTIC_P50_MS = 8.0
TARGET_MISS_ADDED_P50_MS = 3.0
HIT_EXACT, HIT_SEMANTIC, MISS, BYPASS = "HIT-EXACT", "HIT-SEMANTIC", "MISS", "BYPASS"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
JSON_HEADERS = {"Content-Type": "application/json"}
PLAIN_TEXT = {"Accept-Encoding": "identity"}  # the client session does not decompress
PRIME_HEADERS = {**JSON_HEADERS, "Cache-Control": "no-cache"}  # store, do not look up
RECOVERY_TIMEOUT_S = 30.0
# VERDICT: the verifier decides every paraphrase, whatever the load (a 1 s budget,
# and the upstream never starts before the lookup has answered).
VERDICT_ENV = {"GATEWAY_CACHE_LOOKUP_BUDGET_MS": "1000", "GATEWAY_CACHE_SPECULATIVE": "false"}

# Questions. Each list gets its own subjects so that no two primed questions are
# paraphrases of each other; the rewrite direction alternates within a list.
SKILLS = [
    "Python", "Rust", "chess", "the guitar", "French", "calculus", "SQL", "Japanese",
    "swimming", "photography", "statistics", "drawing", "Kubernetes", "public speaking",
    "woodworking",
]  # fmt: skip
CONCEPTS = [
    "a semantic cache", "a hash table", "gradient descent", "a mutex", "a load balancer",
    "a vector database", "an API gateway", "a circuit breaker", "a bloom filter", "a compiler",
    "garbage collection", "a neural network", "a reverse proxy", "a message queue",
    "a container image",
]  # fmt: skip
HABITS = [
    "handwriting", "posture", "sleep", "memory", "typing speed", "running endurance",
    "concentration", "vocabulary", "knife skills", "credit score", "resume", "pronunciation",
    "garden soil", "sourdough bread", "time management",
]  # fmt: skip
REWORDED = [
    ("Why is the sky blue?", "Why does the sky look blue?"),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("What causes rain?", "What makes it rain?"),
    ("How do I boil an egg?", "How should I boil an egg?"),
    ("What is the speed of light?", "How fast is light?"),
    ("How do I center a div in CSS?", "How can I center a div with CSS?"),
    ("What are the benefits of drinking water?", "What are the benefits of drinking water"),
    ("How do I make coffee without a machine?", "How can I make coffee without a machine?"),
]
MISS_TOPICS = [*SKILLS, *HABITS]


@dataclass(frozen=True, slots=True)
class Pair:
    rewrite: str
    original: str
    paraphrase: str


def question_pairs() -> list[Pair]:
    def both_ways(rewrite: str, items: Iterable[tuple[str, str]]) -> list[Pair]:
        return [
            Pair(rewrite, *((a, b) if i % 2 == 0 else (b, a))) for i, (a, b) in enumerate(items)
        ]

    out = both_ways(
        "How do I <-> How can I",
        ((f"How do I learn {s} quickly?", f"How can I learn {s} quickly?") for s in SKILLS),
    )
    out += both_ways("What is <-> What's", ((f"What is {c}?", f"What's {c}?") for c in CONCEPTS))
    out += both_ways(
        "trailing ? removed/added",
        ((f"How do I improve my {h}?", f"How do I improve my {h}") for h in HABITS),
    )
    out += [Pair("reworded by hand", a, b) for a, b in REWORDED]
    return out


def spaced(text: str, k: int) -> str:
    """Variant ``k`` of ``text``: the same words with their spaces varied (bit i of ``k``
    doubles the i-th space, the rest of ``k`` adds trailing spaces); 0 is ``text``.

    The tokens, hence the vector and the verifier's verdict, are those of ``text``; the
    exact key is not. A timed paraphrase that misses (over budget) is stored under its
    own exact key only, so it cannot turn later paraphrase requests into exact hits."""
    words = text.split(" ")
    gaps = len(words) - 1
    pattern, trailing = k % (1 << gaps), k >> gaps
    out = words[0]
    for i, word in enumerate(words[1:]):
        out += ("  " if pattern >> i & 1 else " ") + word
    return out + " " * trailing


def miss_question(n: int) -> str:
    """A question never asked before: a number no other question has (the verifier's wall)."""
    topic = MISS_TOPICS[n % len(MISS_TOPICS)]
    return f"What are {n + 3} good reasons to practise {topic} this year?"


# The stack.


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


# The client.


@dataclass(slots=True)
class Job:
    base: str  # gateway URL
    text: str
    stream: bool
    ttft: bool = False  # read the stream incrementally for the first token (no text kept)
    tag: int = 0
    headers: dict[str, str] | None = None
    pair: Pair | None = None  # a hit must carry this pair's answer


@dataclass(slots=True)
class Reply:
    job: Job
    x_cache: str
    similarity: float | None
    started: float
    ended: float
    ttft: float | None
    error: str | None
    text: str | None

    @property
    def total_ms(self) -> float:
        return (self.ended - self.started) * 1000


def request_body(text: str, stream: bool) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "temperature": 0,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
    )


def answer_text(raw: bytes, stream: bool) -> tuple[str | None, str | None]:
    """(content, error) of a whole response body."""
    try:
        if not stream:
            obj = orjson.loads(raw)
            if "error" in obj:
                return None, "error_body"
            return str(obj["choices"][0]["message"]["content"]), None
        if b'data: {"error"' in raw:
            return None, "error_event"
        if b"data: [DONE]" not in raw[-64:]:
            return None, "no_done"
        out = []
        for line in raw.split(b"\n"):
            if line.startswith(b"data: {"):
                choices = orjson.loads(line[6:]).get("choices") or []
                if choices:
                    out.append(choices[0].get("delta", {}).get("content") or "")
        return "".join(out), None
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None, "bad_body"


async def ask(session: aiohttp.ClientSession, job: Job) -> Reply:
    """One request; ``ended`` is taken at the last byte, before any parsing."""
    x_cache, similarity, ttft, error, text = "", None, None, None, None
    raw = b""
    started = time.perf_counter()
    try:
        async with session.post(
            job.base + PATH,
            data=request_body(job.text, job.stream),
            headers=job.headers or JSON_HEADERS,
            timeout=REQUEST_TIMEOUT,
        ) as resp:
            x_cache = resp.headers.get("X-Cache", "")
            if sim := resp.headers.get("X-Cache-Similarity"):
                similarity = float(sim)
            if resp.status != 200:
                await resp.read()
                error = f"http_{resp.status}"
            elif job.stream and job.ttft:
                ttft, error = await _read_stream(resp.content, started)
            else:
                raw = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    ended = time.perf_counter()
    if raw:
        text, error = answer_text(raw, job.stream)
    return Reply(job, x_cache, similarity, started, ended, ttft, error, text)


async def run_jobs(
    session: aiohttp.ClientSession, jobs: Sequence[Job], concurrency: int
) -> list[Reply]:
    """``concurrency`` workers take the jobs in order; replies come back in job order."""
    replies: list[Reply | None] = [None] * len(jobs)
    next_index = iter(range(len(jobs)))

    async def worker() -> None:
        for i in next_index:
            replies[i] = await ask(session, jobs[i])

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return [r for r in replies if r is not None]


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Every sample of a Prometheus endpoint, keyed by its series (name and labels)."""
    out: dict[str, float] = {}
    try:
        async with session.get(url, headers=PLAIN_TEXT, timeout=REQUEST_TIMEOUT) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return out
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            try:
                out[series] = float(value)
            except ValueError:
                continue
    return out


Samples = dict[str, dict[str, float]]  # process -> series -> value


def grown(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, int]:
    """The series of counter ``name`` that grew, by how much, keyed by their label values."""
    out: dict[str, int] = {}
    for series in sorted(after):
        if series.startswith(name + "{"):
            delta = after[series] - before.get(series, 0.0)
            if delta > 0:
                labels = series[len(name) + 1 : -1].split(",")
                out[" ".join(p.split('"')[1] for p in labels if '"' in p)] = round(delta)
    return out


def mean_of(before: dict[str, float], after: dict[str, float], histogram: str) -> float:
    """Mean of the observations a histogram got between two scrapes (``name{labels}``)."""
    name, brace, labels = histogram.partition("{")
    suffix = brace + labels
    n = after.get(f"{name}_count{suffix}", 0.0) - before.get(f"{name}_count{suffix}", 0.0)
    total = after.get(f"{name}_sum{suffix}", 0.0) - before.get(f"{name}_sum{suffix}", 0.0)
    return total / n if n > 0 else math.nan


def inside(before: Samples, after: Samples) -> dict[str, Any]:
    """What the services counted between two scrapes: CACHED's lookups and sidecar errors,
    and the mean time of each step where it is spent."""
    g0, g1 = before["gateway"], after["gateway"]
    e0, e1 = before["embedder"], after["embedder"]
    c0, c1 = before["cache"], after["cache"]
    semantic = 'cache_lookup_duration_seconds{path="semantic"}'
    searches = 'cache_lookup_duration_seconds_count{path="semantic"}'
    return {
        "lookups": grown(g0, g1, "gateway_cache_lookups_total"),
        "sidecar_errors": grown(g0, g1, "gateway_sidecar_errors_total"),
        "gateway_lookup_ms": 1000 * mean_of(g0, g1, "gateway_cache_lookup_seconds"),
        "embed_ms": 1000 * mean_of(e0, e1, "embedder_request_duration_seconds"),
        "embed_calls": round(
            e1.get("embedder_request_duration_seconds_count", 0.0)
            - e0.get("embedder_request_duration_seconds_count", 0.0)
        ),
        "batch_texts": mean_of(e0, e1, "embedder_batch_size"),
        "cache_exact_ms": 1000 * mean_of(c0, c1, 'cache_lookup_duration_seconds{path="exact"}'),
        "cache_semantic_ms": 1000 * mean_of(c0, c1, semantic),
        "semantic_searches": round(c1.get(searches, 0.0) - c0.get(searches, 0.0)),
    }


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
        "p50_ms": percentile(hits, 50),
        "p99_ms": percentile(hits, 99),
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
                "ttft_p50_ms": percentile([r.ttft * 1000 for r in ok if r.ttft], 50),
                "ttft_p99_ms": percentile([r.ttft * 1000 for r in ok if r.ttft], 99),
                "total_p50_ms": percentile([r.total_ms for r in ok], 50),
                "total_p99_ms": percentile([r.total_ms for r in ok], 99),
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


# Reporting.


def _f(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k or 'none'} {v}" for k, v in sorted(counts.items())) or "-"


def counted(row: dict[str, Any]) -> str:
    return f"{_counts(row['lookups'])}; {_counts(row['sidecar_errors'])}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def pair_table(checks: list[dict[str, Any]]) -> str:
    by: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        by.setdefault(c["rewrite"], []).append(c)
    rows = []
    for rewrite, cs in [*by.items(), ("all", checks)]:
        hits = [c for c in cs if c["x_cache"] == HIT_SEMANTIC]
        right = [c for c in hits if c["right_answer"]]
        sims = [c["similarity"] for c in hits if c["similarity"] is not None]
        outcomes = Counter(c["lookup_outcome"] for c in cs if c["x_cache"] != HIT_SEMANTIC)
        rows.append(
            [
                rewrite,
                str(len(cs)),
                str(len(hits)),
                str(len(right)),
                _f(100 * len(right) / len(cs) if cs else math.nan, 0),
                _f(statistics.median(sims) if sims else math.nan, 3),
                _counts(dict(outcomes)),
            ]
        )
    header = [
        "rewrite",
        "pairs",
        "HIT-SEMANTIC",
        "with the original's answer",
        "accepted %",
        "median similarity",
        "the others: lookup outcome",
    ]
    return md_table(header, rows)


def hits_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "case",
        "concurrency",
        "requests",
        "req/s",
        "X-Cache",
        "errors",
        "wrong answers",
        "p50 ms",
        "p99 ms",
        "target p50",
        "gateway CPU ms/req",
        "embedder CPU ms/req",
        "cache + Redis CPU ms/req",
        "host busy %",
        "CACHED counted: lookups; sidecar errors",
    ]
    return md_table(
        header,
        (
            [
                r["case"],
                str(r["concurrency"]),
                str(r["requests"]),
                _f(r["rps"], 0),
                _counts(r["x_cache"]),
                str(r["errors"]),
                str(r["wrong_answers"]),
                _f(r["p50_ms"]),
                _f(r["p99_ms"]),
                f"< {r['target_p50_ms']:g} ms" if r["target_p50_ms"] else "-",
                _f(r["gateway_cpu_ms_per_req"]),
                _f(r["embedder_cpu_ms_per_req"]),
                _f(r["cache_redis_cpu_ms_per_req"]),
                _f(r["host_busy_pct"], 0),
                counted(r),
            ]
            for r in rows
        ),
    )


def miss_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "concurrency",
        "gateway",
        "requests",
        "X-Cache",
        "errors",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "total p50 ms",
        "total p99 ms",
        "paired median TTFT / total ms",
        "gateway CPU ms/req",
        "CACHED counted: lookups; sidecar errors",
    ]
    out = []
    for r in rows:
        added = "x_cache" not in r
        out.append(
            [
                str(r["concurrency"]),
                f"**{r['gateway']}**" if added else r["gateway"],
                str(r["requests"]),
                "-" if added else _counts(r["x_cache"]),
                "-" if added else str(r["errors"]),
                f"**{_f(r['ttft_p50_ms'])}**" if added else _f(r["ttft_p50_ms"]),
                _f(r["ttft_p99_ms"]),
                f"**{_f(r['total_p50_ms'])}**" if added else _f(r["total_p50_ms"]),
                _f(r["total_p99_ms"]),
                f"{_f(r['paired_ttft_median_ms'])} / {_f(r['paired_total_median_ms'])}"
                if added
                else "-",
                _f(r["gateway_cpu_ms_per_req"]),
                counted(r) if r.get("lookups") else "-",
            ]
        )
    return md_table(header, out)


def inside_table(hits: list[dict[str, Any]], misses: list[dict[str, Any]]) -> str:
    header = [
        "case",
        "concurrency",
        "gateway lookup ms",
        "embed call ms (calls)",
        "texts per model run",
        "cache exact lookup ms",
        "cache semantic lookup ms (searches)",
    ]
    rows = [(r["case"], r) for r in hits]
    rows += [("miss, streamed", r) for r in misses if r["gateway"] == "cached"]
    return md_table(
        header,
        (
            [
                case,
                str(r["concurrency"]),
                _f(r["gateway_lookup_ms"]),
                f"{_f(r['embed_ms'])} ({r['embed_calls']})",
                _f(r["batch_texts"]),
                _f(r["cache_exact_ms"]),
                f"{_f(r['cache_semantic_ms'])} ({r['semantic_searches']})",
            ]
            for case, r in rows
        ),
    )


def failopen_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "stopped (SIGKILL)",
        "requests",
        "errors",
        "X-Cache",
        "p50 / max ms",
        "restart -> serving s",
        "restart -> hit again s",
        "probes until then",
    ]
    return md_table(
        header,
        (
            [
                r["stopped"],
                str(r["requests"]),
                str(r["errors"]) + (f" ({_counts(r['error_kinds'])})" if r["errors"] else ""),
                _counts(r["x_cache"]),
                f"{_f(r['p50_ms'], 1)} / {_f(r['max_ms'], 1)}",
                _f(r["ready_s"], 1),
                "-" if r["stopped"] == "nothing" else f"{_f(r['hit_again_s'], 1)} ({r['probe']})",
                _counts(r["probes"]),
            ]
            for r in rows
        ),
    )


def figures(result: dict[str, Any]) -> dict[str, tuple[str, float]]:
    """The issue's target figures of one run: name -> (target, value)."""
    out: dict[str, tuple[str, float]] = {}
    for r in result["hits"]:
        target = f"< {r['target_p50_ms']:g} ms" if r["target_p50_ms"] else "-"
        out[f"{r['case']} p50 ms, c={r['concurrency']}"] = (target, r["p50_ms"])
        share = 100 * r["as_expected"] / r["requests"] if r["requests"] else math.nan
        out[f"{r['case']}: % {r['expected']}, c={r['concurrency']}"] = ("-", share)
    for r in result["miss"]:
        if "x_cache" not in r:
            c = r["concurrency"]
            out[f"miss: added TTFT p50 ms, c={c}"] = (
                f"<= {TARGET_MISS_ADDED_P50_MS:g} ms",
                r["ttft_p50_ms"],
            )
            out[f"miss: added total p50 ms, c={c}"] = ("-", r["total_p50_ms"])
    checks = result["pairs"]
    accepted = sum(1 for c in checks if c["x_cache"] == HIT_SEMANTIC and c["right_answer"])
    out["paraphrases accepted %"] = ("-", 100 * accepted / len(checks) if checks else math.nan)
    for r in result["fail_open"]:
        out[f"errors in the burst, {r['stopped']} stopped"] = ("0", float(r["errors"]))
        if r["hit_again_s"] is not None:
            out[f"{r['stopped']} restarted -> hit again s"] = ("-", r["hit_again_s"])
    return out


def summary_table(runs: list[dict[str, Any]]) -> str:
    per_run = [figures(r) for r in runs]
    names = list(per_run[0])
    rows = []
    for name in names:
        values = [f[name][1] for f in per_run if name in f]
        clean = [v for v in values if not math.isnan(v)]
        med = statistics.median(clean) if clean else math.nan
        note = f" ({len(clean)} of {len(values)} runs)" if len(clean) < len(values) else ""
        rows.append([name, per_run[0][name][0], *(_f(v) for v in values), f"**{_f(med)}**{note}"])
    header = ["figure", "target", *(f"run {i + 1}" for i in range(len(runs))), "median"]
    return md_table(header, rows)


def report(result: dict[str, Any]) -> str:
    info = result["machine"]
    lw = result["load_wait"]
    ls, le = result["load_during"]
    out = [
        f"# bench.cache_path  {info['date']}",
        "",
        f"machine: {info['nproc']} CPUs, {info['cpu']}; Python {info['python']}",
        f"load average (1/5/15 min): {lw[0]:.2f} / {lw[1]:.2f} / {lw[2]:.2f} before starting, "
        f"{ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f} at the first timed request, "
        f"{le[0]:.2f} / {le[1]:.2f} / {le[2]:.2f} after the last",
        "mock: 32 tokens, 20 ms TTFT, 5 ms between tokens; gateways: metrics + request logs on, "
        "CACHED with every cache setting at its default; temperature 0"
        + "".join(f"; CACHED with {k}={v}" for k, v in result.get("cached_env", [])),
        f"primed: {result['primed']['stored']}/{result['primed']['questions']} questions stored "
        f"in {result['primed']['seconds']:.1f} s",
        "",
        "## Paraphrases (each asked once through VERDICT: JSON, concurrency 1, 1 s lookup budget)",
        "",
        pair_table(result["pairs"]),
        "",
        "## Hits, end to end (request sent -> last byte; p50/p99 over the requests that "
        "got the expected X-Cache)",
        "",
        hits_table(result["hits"]),
        *(
            f"\nwrong answer ({r['case']}, c={r['concurrency']}): asked {w['asked']!r}, "
            f"similarity {w['similarity']}, answered {w['answer']!r}"
            for r in result["hits"]
            for w in r.get("wrong_examples", [])
        ),
        "",
        "## Where the lookup's time goes (means over each case, from the services' own "
        "histograms: the gateway's whole lookup, the embedder's calls, the cache service's "
        "lookups)",
        "",
        inside_table(result["hits"], result["miss"]),
        "",
        "## Miss cost (never-seen questions, streamed, CACHED and PLAIN interleaved)",
        "",
        miss_table(result["miss"]),
        "",
        "## Fail-open (a burst at concurrency 4 right after the SIGKILL, through CACHED)",
        "",
        failopen_table(result["fail_open"]),
        "",
        "## Target figures",
        "",
        summary_table([result]),
    ]
    return "\n".join(out)


# Running.


def wait_for_quiet(below: float, max_wait_s: float) -> tuple[float, float, float]:
    """Wait until the 1-minute load average is under ``below`` (at most ``max_wait_s``)."""
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()
    while load[0] >= below and time.monotonic() < deadline:
        print(f"load average {load[0]:.2f} >= {below}: waiting ...", file=sys.stderr, flush=True)
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        load = os.getloadavg()
    return load


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_wait = wait_for_quiet(args.load_below, args.wait_load)
    info = machine()
    procs: list[Proc] = []
    try:
        started = time.monotonic()
        print("starting redis, embedder, cache service, mock, gateways ...", file=sys.stderr)
        stack = start_stack(procs, dict(args.cached_env))
        print(f"  up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        result = _run_loop(measure(stack, args))
    finally:
        for proc in reversed(procs):
            proc.stop()
    return {**result, "machine": info, "load_wait": load_wait, "cached_env": args.cached_env}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cache_path", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[1, 8],
        help="comma-separated worker counts",
    )
    parser.add_argument("--rounds", type=int, default=4, help="times each hit question is timed")
    parser.add_argument(
        "--miss-pairs", type=int, default=60, help="never-seen questions per concurrency"
    )
    parser.add_argument("--burst", type=int, default=60, help="requests per fail-open burst")
    parser.add_argument("--load-below", type=float, default=1.5, help="wait for this load average")
    parser.add_argument("--wait-load", type=float, default=300.0, help="longest wait for it (s)")
    parser.add_argument(
        "--cached-env",
        type=lambda s: tuple(s.split("=", 1)),
        action="append",
        default=[],
        metavar="GATEWAY_X=VALUE",
        help="an extra setting for CACHED (repeatable), e.g. GATEWAY_CACHE_SEMANTIC=false",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        default=None,
        help="print the target figures of these --json files and their medians; run nothing",
    )
    return parser.parse_args(argv)


def _json_value(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _from_json(value: object) -> object:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: v if k in _KEEP_NONE else _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


_KEEP_NONE = {"target_p50_ms", "ready_s", "hit_again_s", "similarity"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        runs = [_from_json(json.loads(p.read_text())) for p in args.summarize]
        for r, p in zip(runs, args.summarize, strict=True):
            assert isinstance(r, dict)
            lw = r["load_wait"]
            print(f"{p}: {r['machine']['date']}, load average {lw[0]:.2f} before starting")
        print()
        print(summary_table(runs))  # type: ignore[arg-type]
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = run(args)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: everything started is stopped", file=sys.stderr)
        return 130
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(_json_value(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
