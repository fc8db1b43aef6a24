"""Beyond max_concurrency requests queue, visibly in the gauges, in vLLM or llama.cpp style."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import MockApi

MakeMock = Callable[..., Awaitable["MockApi"]]
CHAT = "/v1/chat/completions"
SLOW_START = {"X-Mock-TTFT-Ms": "400", "X-Mock-Tokens": "2"}


async def test_vllm_style_queues_without_headers_and_drains(make_mock: MakeMock) -> None:
    mock = await make_mock(max_concurrency=2)
    slow = {"X-Mock-TTFT-Ms": "800", "X-Mock-Tokens": "2"}
    requests = [
        asyncio.create_task(mock.post(CHAT, mock.chat_body(stream=True), slow)) for _ in range(4)
    ]
    await mock.until_gauges(2, 2)
    samples = await mock.metrics()
    assert samples[("vllm:kv_cache_usage_perc", (("model_name", mock.model),))] == 1.0
    arrivals = asyncio.as_completed(requests, timeout=5)
    await next(arrivals)
    await next(arrivals)
    # the running two have their headers; the queued two do not, while still queued
    assert sum(task.done() for task in requests) == 2
    assert await mock.gauges() == (2, 2)
    for resp in await asyncio.gather(*requests):
        assert mock.payloads(await mock.events(resp))[-1] == "[DONE]"
    await mock.until_gauges(0, 0)


async def test_queued_client_that_leaves_is_no_longer_waiting(make_mock: MakeMock) -> None:
    mock = await make_mock(max_concurrency=1)
    body = mock.chat_body(stream=True)
    running = asyncio.create_task(mock.post(CHAT, body, SLOW_START))
    queued = asyncio.create_task(mock.post(CHAT, body, SLOW_START))
    await mock.until_gauges(1, 1)
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    await mock.until_gauges(1, 0)
    resp = await running
    assert mock.payloads(await mock.events(resp))[-1] == "[DONE]"
    await mock.until_gauges(0, 0)


async def test_llamacpp_style_sends_headers_then_pings_until_its_turn(make_mock: MakeMock) -> None:
    mock = await make_mock(max_concurrency=1, queue_style="llamacpp", ping_interval_ms=20)
    first = asyncio.create_task(mock.post(CHAT, mock.chat_body(stream=True), SLOW_START))
    await mock.until_gauges(1, 0)
    queued = await mock.post(CHAT, mock.chat_body(stream=True), {"X-Mock-Tokens": "2"})
    assert queued.status == 200  # headers at once, while still queued
    assert queued.headers["Content-Type"].startswith("text/event-stream")
    assert await mock.gauges() == (1, 1)
    events = await mock.events(queued)
    pings = [e for e in events if e.startswith(b":")]
    assert pings and all(e == b": ping" for e in pings)
    assert events.index(pings[-1]) < next(i for i, e in enumerate(events) if e.startswith(b"data"))
    assert mock.payloads(events)[-1] == "[DONE]"
    await mock.events(await first)
    await mock.until_gauges(0, 0)


async def test_llamacpp_style_does_not_ping_when_there_is_room(make_mock: MakeMock) -> None:
    mock = await make_mock(queue_style="llamacpp", ping_interval_ms=1)
    resp = await mock.post(CHAT, mock.chat_body(stream=True), {"X-Mock-TTFT-Ms": "50"})
    assert not [e for e in await mock.events(resp) if e.startswith(b":")]
