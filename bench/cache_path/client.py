"""The client: one chat request through a gateway, timed to its last byte, and its answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson

from bench.cache_path.questions import Pair
from bench.loadgen import read_stream
from bench.proxy import MODEL

PATH = "/v1/chat/completions"
HIT_EXACT, HIT_SEMANTIC, MISS, BYPASS = "HIT-EXACT", "HIT-SEMANTIC", "MISS", "BYPASS"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
JSON_HEADERS = {"Content-Type": "application/json"}
PRIME_HEADERS = {**JSON_HEADERS, "Cache-Control": "no-cache"}  # store, do not look up
EMBEDDINGS = "EMBEDDINGS"  # the X-Cache of an embeddings call's reply


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
                ttft, error = await read_stream(resp.content, started)
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


async def embeddings_call(session: aiohttp.ClientSession, base: str, text: str) -> Reply:
    """One ``POST /v1/embeddings`` of ``text``, timed like :func:`ask`."""
    error = None
    body = orjson.dumps({"model": "all-MiniLM-L6-v2", "input": text})
    started = time.perf_counter()
    try:
        async with session.post(
            base + "/v1/embeddings", data=body, headers=JSON_HEADERS, timeout=REQUEST_TIMEOUT
        ) as resp:
            await resp.read()
            error = None if resp.status == 200 else f"http_{resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = type(exc).__name__
    ended = time.perf_counter()
    return Reply(Job(base, text, False), EMBEDDINGS, None, started, ended, None, error, None)
