"""A closed-loop load generator for streamed OpenAI chat requests, on aiohttp.

``concurrency`` workers each send one streaming request, read it to the end,
and send the next, until the slice's time is up. Every request carries a
distinct prompt (a counter in the user message), so nothing on the path can
answer it from a cache and every request costs the same.

The client shares the machine with what it measures, so it is kept cheap: no
JSON parsing, one substring scan per received chunk (markers split across two
chunks are caught by keeping the previous chunk's tail).

Per request it records the time to first token (request sent -> first
``data:`` event whose ``content`` is not empty), the total time, and whether
it failed: a status other than 200, an error event inside the stream, a stream
without ``data: [DONE]``, or an exception (connection, timeout).

A slice runs ``warmup_s`` then ``duration_s``. Only requests that *end* inside
the measured window count, so throughput is completions per second of window
(unbiased in steady state) and no warm-up request leaks into the percentiles.
Callbacks at the window's start and end let the caller read CPU counters of
the processes under test at exactly those instants (:class:`Meter`), and
:class:`Cell` merges the slices of one target at one concurrency.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import psutil

from bench.stats import percentile

_CONTENT = b'"content":"'
_ERROR_EVENT = b'{"error":'
_DONE = b"data: [DONE]"
_TAIL = 32
_HEADERS = {"Content-Type": "application/json"}


@dataclass(slots=True)
class Sample:
    started: float
    ended: float
    ttft: float | None  # seconds; None when no token arrived
    error: str | None  # None when the request succeeded


@dataclass(slots=True)
class SliceResult:
    """What one measured window of one target saw."""

    window_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.error is not None)

    @property
    def rps(self) -> float:
        return len(self.ok) / self.window_s if self.window_s > 0 else 0.0


def chat_body(model: str, n: int, max_tokens: int | None = None) -> bytes:
    """A streamed chat request whose prompt differs by ``n``."""
    limit = b"" if max_tokens is None else b',"max_tokens":%d' % max_tokens
    return (
        b'{"model":"%s","stream":true%s,"messages":[{"role":"user",'
        b'"content":"Benchmark request %d: tell me a short story."}]}' % (model.encode(), limit, n)
    )


def _has_token(window: bytes) -> bool:
    at = window.find(_CONTENT)
    while at >= 0:
        nxt = window[at + len(_CONTENT) : at + len(_CONTENT) + 1]
        if nxt and nxt != b'"':
            return True
        at = window.find(_CONTENT, at + 1)
    return False


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes, deadline: aiohttp.ClientTimeout
) -> Sample:
    """Send one streamed request and read it to the end."""
    started = time.perf_counter()
    ttft: float | None = None
    error: str | None = None
    try:
        async with session.post(url, data=body, headers=_HEADERS, timeout=deadline) as resp:
            if resp.status != 200:
                await resp.read()
                error = f"http_{resp.status}"
            else:
                ttft, error = await read_stream(resp.content, started)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    return Sample(started, time.perf_counter(), ttft, error)


async def read_stream(
    content: aiohttp.StreamReader, started: float
) -> tuple[float | None, str | None]:
    ttft: float | None = None
    tail = b""
    error: str | None = None
    while chunk := await content.readany():
        window = tail + chunk
        if ttft is None and _has_token(window):
            ttft = time.perf_counter() - started
        if _ERROR_EVENT in window:
            error = "error_event"
        tail = window[-_TAIL:]
    if error is None and _DONE not in tail:
        error = "no_done"
    return ttft, error


async def run_slice(
    url: str,
    model: str,
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    on_window_start: Callable[[], None] = lambda: None,
    on_window_end: Callable[[], None] = lambda: None,
    counter: itertools.count[int] | None = None,
    request_timeout_s: float = 30.0,
) -> SliceResult:
    """Closed-loop load on ``url`` for ``warmup_s + duration_s``; measure the last part."""
    counter = counter if counter is not None else itertools.count()
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    t0 = time.perf_counter()
    window_start, window_end = t0 + warmup_s, t0 + warmup_s + duration_s
    samples: list[Sample] = []

    async def worker() -> None:
        while time.perf_counter() < window_end:
            sample = await one_request(session, url, chat_body(model, next(counter)), timeout)
            if window_start <= sample.ended <= window_end:
                samples.append(sample)

    async def clock() -> None:
        await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
        on_window_start()
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        on_window_end()

    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        await asyncio.gather(clock(), *(worker() for _ in range(concurrency)))
    return SliceResult(window_s=duration_s, samples=samples)


# Measuring the processes under test, window by window.


class CpuClock:
    """CPU seconds (user + system) used so far by a process and its children."""

    def __init__(self, pid: int, *, children: bool = True) -> None:
        self._proc = psutil.Process(pid)
        self._children = children

    def read(self) -> float:
        total = 0.0
        kids = self._proc.children(recursive=True) if self._children else []
        for proc in [self._proc, *kids]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


def host_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


@dataclass
class Cell:
    """One target at one concurrency: its slices merged."""

    concurrency: int
    target: str
    slices: list[SliceResult] = field(default_factory=list)
    cpu: dict[str, float] = field(
        default_factory=lambda: {"gateway": 0.0, "mock": 0.0, "client": 0.0}
    )
    host: list[float] = field(default_factory=lambda: [0.0, 0.0])

    @property
    def ok_count(self) -> int:
        return sum(len(s.ok) for s in self.slices)

    @property
    def rps(self) -> float:
        window = sum(s.window_s for s in self.slices)
        return self.ok_count / window if window else 0.0

    @property
    def errors(self) -> int:
        return sum(s.errors for s in self.slices)

    def ttft_ms(self, q: float) -> float:
        ttfts = [x.ttft for s in self.slices for x in s.ok if x.ttft is not None]
        return percentile(ttfts, q) * 1000

    def cpu_ms_per_request(self, who: str) -> float:
        return self.cpu[who] * 1000 / self.ok_count if self.ok_count else math.nan

    @property
    def host_busy_pct(self) -> float:
        busy, total = self.host
        return 100 * busy / total if total else math.nan


class Meter:
    """Reads every CPU counter at a window's start and adds the deltas at its end."""

    def __init__(self, clocks: dict[str, CpuClock]) -> None:
        self._clocks = clocks
        self._start: dict[str, float] = {}
        self._host: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._host = host_busy()
        self._start = {name: clock.read() for name, clock in self._clocks.items()}

    def stop_into(self, cell: Cell) -> Callable[[], None]:
        def stop() -> None:
            for name, clock in self._clocks.items():
                cell.cpu[name] += clock.read() - self._start[name]
            busy, total = host_busy()
            cell.host[0] += busy - self._host[0]
            cell.host[1] += total - self._host[1]

        return stop
