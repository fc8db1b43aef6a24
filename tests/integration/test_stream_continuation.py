"""A replica killed mid-stream under load: every stream it was serving is continued
on the other replica and completes, and its text is the uninterrupted answer.

Real processes: two mock replicas with long answers (100 tokens, 20 ms apart)
and a gateway with every default (continuation on). 30 concurrent streams,
each with its own question; the victim is SIGKILLed one second in, while
about half of them are under way there. The mock's answers are deterministic,
so each stream's text is checked against the surviving replica's answer to
the same question, asked directly afterwards.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import httpx

from deploy.local.harness import Stack, chat_body

LONG = {"ttft_ms": 20, "inter_token_ms": 20, "output_tokens": 100}
STREAMS = 30


def question(n: int) -> dict[str, object]:
    return chat_body(f"Tell me a long story, number {n}", temperature=0)


def text_of(body: bytes) -> tuple[str, list[str]]:
    """The streamed text, and every data payload (to look for errors and [DONE])."""
    payloads = [line[5:].strip() for line in body.decode().split("\n") if line.startswith("data:")]
    text = ""
    for data in payloads:
        if data != "[DONE]":
            for choice in json.loads(data).get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
    return text, payloads


async def one(session: aiohttp.ClientSession, gw: str, n: int) -> tuple[int, bytes]:
    async with session.post(
        f"{gw}/v1/chat/completions", json={**question(n), "stream": True}
    ) as reply:
        return reply.status, await reply.read()


async def run(gw: str, victim_kill: asyncio.Future[None]) -> list[tuple[int, bytes]]:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.ensure_future(one(session, gw, n)) for n in range(STREAMS)]
        await victim_kill
        return await asyncio.gather(*tasks)


def test_streams_on_a_killed_replica_complete_with_the_uninterrupted_text(stack: Stack) -> None:
    _, keep = stack.mock("keep", **LONG)
    victim, victim_url = stack.mock("victim", **LONG)
    _, gw = stack.gateway([keep, victim_url])

    async def scenario() -> list[tuple[int, bytes]]:
        async def kill() -> None:
            await asyncio.sleep(1.0)  # 20 ms + 100 x 20 ms answers: all are under way
            victim.kill()

        return await run(gw, asyncio.ensure_future(kill()))

    results = asyncio.run(scenario())
    metrics = httpx.get(f"{gw}/metrics", timeout=5).text
    continued = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith('gateway_stream_continuations_total{result="continued"}')
    )
    assert continued >= 1, "the kill broke no stream: nothing was under way on the victim"
    for n, (status, body) in enumerate(results):
        text, payloads = text_of(body)
        assert status == 200, (n, status, body[-300:])
        assert payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1, (n, payloads[-2:])
        assert not any('"error"' in p for p in payloads), (n, payloads[-2:])
        expected = httpx.post(f"{keep}/v1/chat/completions", json=question(n), timeout=30).json()[
            "choices"
        ][0]["message"]["content"]
        assert text == expected, f"stream {n}: the spliced text differs from the whole answer"
