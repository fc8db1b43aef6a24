"""The real model, direct and through the gateway: ``python -m bench.realbackend``.

Starts one llama.cpp replica serving SmolLM2-135M-Instruct (built and cached
by ``make llamacpp`` if needed) and one gateway in front of it (no cache
sidecars: every request reaches the model). At each concurrency, a fixed
number of streamed chat requests runs in four slices, DIRECT, GATEWAY,
GATEWAY, DIRECT, so a drift in background load on the shared machine falls on
both targets alike. Every request asks for the same number of tokens with the
end-of-sequence tokens banned (``logit_bias``), so every answer has the same
length and tokens/s compare.

Per request: TTFT is request sent -> first data event with content; tokens
are counted as content events (llama.cpp sends one token per event and no
usage in streams). Tokens/s is all tokens of a target over the wall time of
its slices. llama.cpp runs one request at a time, so at concurrency 4 the
others wait their turn and TTFT includes that wait.

    python -m bench.realbackend [--requests 16] [--tokens 64] [--concurrency 1,4] [--threads 2]

Prints the machine, then a markdown table. Bounded: at most requests x
concurrencies streams; everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import httpx

from bench.runner import cpu_model
from bench.stats import percentile
from deploy.local import llamacpp
from deploy.local.harness import Stack as Harness
from deploy.local.procs import ROOT

LOG_DIR = ROOT / "var" / "log" / "bench-realbackend"
NO_EOS = {"0": -100, "2": -100}  # SmolLM2's <|endoftext|> and <|im_end|>
ORDER = ("direct", "gateway", "gateway", "direct")
PATH = "/v1/chat/completions"


@dataclass
class Cell:
    target: str
    concurrency: int
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    wall_s: float = 0.0
    errors: int = 0


async def one(client: httpx.AsyncClient, url: str, n: int, tokens: int) -> tuple[float, int]:
    body = {
        "model": llamacpp.MODEL,
        "stream": True,
        "max_tokens": tokens,
        "logit_bias": NO_EOS,
        "messages": [{"role": "user", "content": f"Request {n}: tell me about the sea."}],
    }
    started = time.perf_counter()
    ttft, count, done = math.nan, 0, False
    async with client.stream("POST", url, json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"status {reply.status_code}")
        async for line in reply.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data:"):
                event = json.loads(line[5:])
                if "error" in event:
                    raise RuntimeError(line[:200])
                if any(c.get("delta", {}).get("content") for c in event["choices"]):
                    count += 1
                    if count == 1:
                        ttft = time.perf_counter() - started
    if not done:
        raise RuntimeError("stream without [DONE]")
    return ttft, count


async def run_slice(url: str, cell: Cell, requests: int, tokens: int, ids: itertools.count) -> None:
    queue = list(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            try:
                ttft, count = await one(client, url, next(ids), tokens)
            except (httpx.HTTPError, RuntimeError) as exc:
                print(f"    error: {exc}", file=sys.stderr)
                cell.errors += 1
                continue
            cell.ttfts.append(ttft)
            cell.tokens += count

    timeout = httpx.Timeout(120.0, connect=5.0)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=64)) as c:
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(cell.concurrency)))
        cell.wall_s += time.perf_counter() - started


async def measure(urls: dict[str, str], args: argparse.Namespace) -> list[Cell]:
    ids = itertools.count()
    cells: list[Cell] = []
    for conc in args.concurrency:
        by_target = {t: Cell(t, conc) for t in ("direct", "gateway")}
        for target in ("direct", "gateway"):  # warm-up, not counted
            await run_slice(urls[target], Cell(target, conc), conc, args.tokens, ids)
        for target in ORDER:
            print(f"  c={conc} {target} ...", file=sys.stderr, flush=True)
            await run_slice(urls[target], by_target[target], args.requests // 2, args.tokens, ids)
        cells += by_target.values()
    return cells


def start(harness: Harness, threads: int) -> dict[str, str]:
    """One llama.cpp replica and a gateway in front of it (no cache)."""
    _, direct = harness.llamacpp(threads=threads)
    _, gateway = harness.gateway(
        [direct], model=llamacpp.MODEL, ready_path="/readyz", cache_enabled="false"
    )
    return {"direct": direct + PATH, "gateway": gateway + PATH}


def table(cells: list[Cell], args: argparse.Namespace) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"{dt.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} cores "
        f"(load average at the end {load}), "
        f"Python {platform.python_version()}, llama-cpp-python {llamacpp.VERSION}, "
        f"SmolLM2-135M-Instruct Q4_1, one replica, llama.cpp threads: {args.threads}, "
        f"{args.tokens} tokens per answer, {args.requests} requests per cell",
        "",
        "| concurrency | target | requests | errors | TTFT p50 ms | TTFT p99 ms "
        "| tokens/s (all streams) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        rate = c.tokens / c.wall_s if c.wall_s else math.nan
        lines.append(
            f"| {c.concurrency} | {c.target} | {len(c.ttfts)} | {c.errors} "
            f"| {percentile(c.ttfts, 50) * 1000:.0f} | {percentile(c.ttfts, 99) * 1000:.0f} "
            f"| {rate:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=16, help="per target and concurrency")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4]
    )
    args = parser.parse_args(argv)
    try:
        with Harness(LOG_DIR, fresh_logs=True) as harness:
            urls = start(harness, args.threads)
            cells = asyncio.run(measure(urls, args))
    except (RuntimeError, TimeoutError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(table(cells, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
