"""The load of ``bench.soak``: a steady rate of mixed requests (repeats, paraphrases,
new questions, non-deterministic ones, half streamed, a few with an injected fault,
a few streams the client leaves after the first chunk, a few for an unknown model
or with a bad body) and what each one got back."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass

import aiohttp

MODEL = "mock-llama-3-8b"
TOPICS = [
    "Python", "Rust", "chess", "the guitar", "cooking", "statistics", "French", "drawing",
    "sailing", "photography", "linear algebra", "Kubernetes", "SQL", "gardening", "typing",
    "public speaking", "woodworking", "Japanese", "calculus", "swimming",
]  # fmt: skip
FAULTS = ["status:503", "error-event:3", "cut:5", "slow:300", "hang"]


@dataclass(frozen=True)
class Request:
    body: dict[str, object]
    fault: str
    expect: str = "answer"  # or "leave" (the client goes after the first chunk), "404", "400"


def make_request(rng: random.Random, n: int, fault_ratio: float, odd_ratio: float = 0.0) -> Request:
    """One request; ``odd_ratio`` of them (a third each) are left by the client after
    their first chunk, ask for an unknown model, or carry a bad body."""
    topic = rng.choice(TOPICS)
    kind = rng.random()
    temperature = 0.0
    if kind < 0.35:
        text = rng.choice([f"How can I learn {topic} quickly?", f"Is {topic} hard to learn?"])
    elif kind < 0.50:
        text = f"How can I learn {topic} fast?"  # a paraphrase of the first repeat
    elif kind < 0.85:
        text = f"Question {n}: what should I know about {topic} before day {n}?"
    else:
        text, temperature = f"Tell me something about {topic}.", 0.8
    stream = rng.random() < 0.5
    fault = rng.choice(FAULTS) if rng.random() < fault_ratio else ""
    if fault == "hang" and not stream:
        fault = "slow:300"  # a hung non-streamed attempt waits GATEWAY_UNARY_TIMEOUT_S (120 s)
    body: dict[str, object] = {
        "model": MODEL,
        "stream": stream,
        "temperature": temperature,
        "messages": [{"role": "user", "content": text}],
    }
    if rng.random() < odd_ratio:
        odd = rng.choice(["leave", "404", "400"])
        if odd == "leave":
            return Request({**body, "stream": True}, "", "leave")
        if odd == "404":
            return Request({**body, "model": f"no-such-model-{n % 7}"}, "", "404")
        return Request({**body, "temperature": "hot"}, "", "400")
    return Request(body, fault)


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    fault: str
    ok: bool
    cache: str
    detail: str


async def send(session: aiohttp.ClientSession, url: str, req: Request) -> Outcome:
    started, ok, cache, detail = time.monotonic(), False, "", ""
    headers = {"X-Mock-Fault": req.fault} if req.fault else {}
    try:
        async with session.post(
            f"{url}/v1/chat/completions", json=req.body, headers=headers
        ) as reply:
            cache = reply.headers.get("x-cache", "")
            if req.expect == "leave":
                first = await reply.content.readany()
                reply.close()  # the client goes away mid-stream
                ok = reply.status == 200 and bool(first)
                return Outcome(started, time.monotonic(), "", ok, cache, "" if ok else "left")
            body = await reply.read()
        if req.expect in ("404", "400"):
            ok = str(reply.status) == req.expect and b'"error"' in body
        elif req.body["stream"]:
            ok = reply.status == 200 and body.rstrip().endswith(b"data: [DONE]")
            ok = ok and b'data: {"error"' not in body
        else:
            ok = reply.status == 200 and b'"choices"' in body
        detail = "" if ok else f"{reply.status} {body[-200:]!r}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = repr(exc)
    return Outcome(started, time.monotonic(), req.fault, ok, cache, detail)


async def drive(url: str, args: argparse.Namespace, end: float) -> list[Outcome]:
    """Requests at ``args.rps`` (at most 64 in flight) until ``end``; waits for the last."""
    rng = random.Random(args.seed)
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    room = asyncio.Semaphore(64)
    t0 = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(req: Request) -> None:
            async with room:
                outcomes.append(await send(session, url, req))

        n = 0
        while (now := time.monotonic()) < end:
            due = t0 + n / args.rps
            if due > now:
                await asyncio.sleep(due - now)
                continue
            req = make_request(rng, n, args.fault_ratio, args.odd_ratio)
            task = asyncio.create_task(one(req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)
    return outcomes
