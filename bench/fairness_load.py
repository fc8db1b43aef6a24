"""The traffic of ``bench.fairness``: tenants sending streamed chat requests, open or closed
loop, and the fleet's busy slots sampled from the mocks.

An **open-loop** tenant sends requests at Poisson arrival times of a given rate
(seeded), whatever the answers do, up to ``cap`` of its own requests
outstanding (past it, an arrival is dropped and counted: the client's own
bound, so that without flow control the mocks' queues stay finite). A
**closed-loop** tenant keeps ``workers`` requests outstanding, each sending the
next when its answer ends: a tenant that is always backlogged, for shares.

Request lengths vary: ``max_tokens`` is drawn uniformly within ``jitter`` of
the tenant's (seeded). With every request the same length the mock's slots
free up together, once per request time, and a request that finds the fleet
full waits for that whole beat; real answers differ in length.

Requests go to the gateways round robin (one gateway, or two replicas behind a
load balancer). Each carries a distinct prompt, the tenant's key and, when
set, its ``x-llmgw-priority``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.loadgen import read_stream

_RUNNING = re.compile(rb"^vllm:num_requests_running(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)


@dataclass(frozen=True)
class Tenant:
    name: str
    key: str
    rate: float = 0.0  # open loop: requests per second; 0: closed loop
    workers: int = 0  # closed loop: requests outstanding
    cap: int = 10_000  # open loop: at most this many outstanding
    priority: str = ""  # x-llmgw-priority; "": the tenant's own
    max_tokens: int = 32  # the mean; each request's within ``jitter`` of it
    jitter: float = 0.5


@dataclass(slots=True)
class Sample:
    tenant: str
    started: float
    ended: float
    ttft: float | None
    status: int  # 200, 429, 503, ...; 0: the client's error; -1: dropped at the client's cap
    error: str | None


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    busy: list[tuple[float, float]] = field(default_factory=list)  # (when, running on all mocks)


def body(model: str, tenant: str, n: int, max_tokens: int) -> bytes:
    return (
        b'{"model":"%s","stream":true,"max_tokens":%d,"messages":[{"role":"user",'
        b'"content":"%s request %d: tell me a short story."}]}'
        % (model.encode(), max_tokens, tenant.encode(), n)
    )


async def one(
    session: aiohttp.ClientSession, url: str, tenant: Tenant, model: str, n: int, max_tokens: int
) -> Sample:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {tenant.key}"}
    if tenant.priority:
        headers["x-llmgw-priority"] = tenant.priority
    started = time.perf_counter()
    ttft, error, status = None, None, 0
    try:
        async with session.post(
            url, data=body(model, tenant.name, n, max_tokens), headers=headers
        ) as resp:
            status = resp.status
            if status != 200:
                await resp.read()
                error = f"http_{status}"
            else:
                ttft, error = await read_stream(resp.content, started)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    return Sample(tenant.name, started, time.perf_counter(), ttft, status, error)


class Traffic:
    def __init__(self, gateways: Sequence[str], model: str, seed: int) -> None:
        self._urls = itertools.cycle([f"{g}/v1/chat/completions" for g in gateways])
        self._model = model
        self._seed = seed
        self._n = itertools.count()
        self._sizes = random.Random(seed)

    async def run(self, tenants: Sequence[Tenant], mocks: Sequence[str], seconds: float) -> Run:
        """Send every tenant's traffic for ``seconds``; wait for what is outstanding."""
        run = Run()
        timeout = aiohttp.ClientTimeout(total=120)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            stop = time.perf_counter() + seconds
            sampler = asyncio.ensure_future(self._sample(session, mocks, run))
            try:
                await asyncio.gather(
                    *(self._tenant(session, t, i, stop, run) for i, t in enumerate(tenants))
                )
            finally:
                sampler.cancel()
        return run

    async def _tenant(
        self, session: aiohttp.ClientSession, tenant: Tenant, index: int, stop: float, run: Run
    ) -> None:
        if tenant.rate <= 0:
            workers = (self._worker(session, tenant, stop, run) for _ in range(tenant.workers))
            await asyncio.gather(*workers)
            return
        rng = random.Random(self._seed * 1000 + index)
        outstanding: set[asyncio.Task[None]] = set()
        at = time.perf_counter()
        while True:
            at += rng.expovariate(tenant.rate)
            if at >= stop:
                break
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            if len(outstanding) >= tenant.cap:
                run.samples.append(Sample(tenant.name, at, at, None, -1, "client_cap"))
                continue
            task = asyncio.ensure_future(self._record(session, tenant, run))
            outstanding.add(task)
            task.add_done_callback(outstanding.discard)
        if outstanding:
            await asyncio.gather(*outstanding)

    async def _worker(
        self, session: aiohttp.ClientSession, tenant: Tenant, stop: float, run: Run
    ) -> None:
        while time.perf_counter() < stop:
            await self._record(session, tenant, run)
            if run.samples[-1].status not in (200, 0):  # refused: do not spin
                await asyncio.sleep(0.05)

    async def _record(self, session: aiohttp.ClientSession, tenant: Tenant, run: Run) -> None:
        spread = tenant.max_tokens * tenant.jitter
        size = max(1, round(tenant.max_tokens + self._sizes.uniform(-spread, spread)))
        url, n = next(self._urls), next(self._n)
        run.samples.append(await one(session, url, tenant, self._model, n, size))

    async def _sample(self, session: aiohttp.ClientSession, mocks: Sequence[str], run: Run) -> None:
        """Requests running on all mocks, every 50 ms (their ``vllm:num_requests_running``)."""
        while True:
            pages = await asyncio.gather(*(self._page(session, m) for m in mocks))
            if all(p is not None for p in pages):
                running = sum(float(m.group(1)) for p in pages if p and (m := _RUNNING.search(p)))
                run.busy.append((time.perf_counter(), running))
            await asyncio.sleep(0.05)

    @staticmethod
    async def _page(session: aiohttp.ClientSession, mock: str) -> bytes | None:
        try:
            async with session.get(f"{mock}/metrics") as resp:
                page = await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            return None
        return page if _RUNNING.search(page) else None
