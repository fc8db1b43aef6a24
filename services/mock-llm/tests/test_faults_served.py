"""Every fault, by header and by setting, as a client of the mock sees it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
import pytest

if TYPE_CHECKING:
    from conftest import MockApi

MakeMock = Callable[..., Awaitable["MockApi"]]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def fault(spec: str) -> dict[str, str]:
    return {"X-Mock-Fault": spec}


@pytest.mark.parametrize("stream", [False, True])
async def test_status_fault_answers_with_an_error_object(mock: MockApi, stream: bool) -> None:
    resp = await mock.post(CHAT, mock.chat_body(stream=stream), fault("status:503"))
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
    assert "Retry-After" not in resp.headers


async def test_status_429_carries_retry_after(mock: MockApi) -> None:
    resp = await mock.post(CHAT, mock.chat_body(), fault("status:429"))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["type"] == "RateLimitError"


async def test_slow_fault_delays_the_first_token(mock: MockApi) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    resp = await mock.post(COMPLETIONS, mock.completion_body(stream=True), fault("slow:200"))
    await resp.content.readuntil(b"\n\n")
    assert loop.time() - start >= 0.2
    assert mock.payloads(await mock.events(resp))[-1] == "[DONE]"


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_never_answers_and_frees_its_slot_when_the_client_leaves(
    mock: MockApi, stream: bool
) -> None:
    request = asyncio.create_task(mock.post(CHAT, mock.chat_body(stream=stream), fault("hang")))
    await mock.until_gauges(running=1)
    done, _ = await asyncio.wait([request], timeout=0.3)
    assert not done  # not even headers
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await mock.until_gauges(running=0)


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_after_headers_sends_200_then_nothing(mock: MockApi, stream: bool) -> None:
    resp = await mock.post(CHAT, mock.chat_body(stream=stream), fault("hang-after-headers"))
    assert resp.status == 200
    expected = "text/event-stream" if stream else "application/json"
    assert resp.headers["Content-Type"].startswith(expected)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(resp.content.read(1), 0.3)
    resp.close()
    await mock.until_gauges(running=0)


async def test_error_event_streams_n_tokens_then_a_vllm_error_event(mock: MockApi) -> None:
    chunks = await mock.stream(CHAT, mock.chat_body(), fault("error-event:2"))
    role, first, second, error, done = chunks
    assert role["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in (first, second)] == [None, None]
    assert set(error) == {"error"}
    assert {"message", "type", "code"} <= set(error["error"])
    assert error["error"]["code"] == 500
    assert done == "[DONE]"  # vLLM closes a failed stream with [DONE] too


async def test_error_event_beyond_the_output_follows_the_last_token(mock: MockApi) -> None:
    chunks = await mock.stream(
        COMPLETIONS, mock.completion_body(max_tokens=2), fault("error-event:9")
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks[:2]] == [None, "length"]
    assert "error" in chunks[2]


async def test_error_event_not_streamed_is_a_500(mock: MockApi) -> None:
    resp = await mock.post(CHAT, mock.chat_body(), fault("error-event:2"))
    assert resp.status == 500
    assert (await resp.json())["error"]["type"] == "InternalServerError"


async def test_cut_closes_the_stream_after_n_tokens_without_done(mock: MockApi) -> None:
    resp = await mock.post(COMPLETIONS, mock.completion_body(stream=True), fault("cut:2"))
    assert resp.status == 200
    events: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        while not resp.content.at_eof():
            events.append(await resp.content.readuntil(b"\n\n"))
    payloads = mock.payloads([e.rstrip(b"\n") for e in events if e])
    assert len(payloads) == 2
    assert "[DONE]" not in payloads
    await mock.until_gauges(running=0)


async def test_cut_not_streamed_drops_the_connection(mock: MockApi) -> None:
    with pytest.raises(aiohttp.ClientError):
        resp = await mock.post(CHAT, mock.chat_body(), fault("cut:1"))
        await resp.read()


async def test_default_fault_applies_and_the_header_wins(make_mock: MakeMock) -> None:
    mock = await make_mock(fault="status:503")
    assert (await mock.post(CHAT, mock.chat_body())).status == 503
    assert (await mock.post(CHAT, mock.chat_body(), fault("status:500"))).status == 500
    assert (await mock.post(CHAT, mock.chat_body(), fault(""))).status == 200  # empty: no fault


async def test_client_that_leaves_mid_stream_stops_the_generation(mock: MockApi) -> None:
    headers = {"X-Mock-Tokens": "100000", "X-Mock-Inter-Token-Ms": "5"}
    resp = await mock.post(CHAT, mock.chat_body(stream=True), headers)
    await resp.content.readuntil(b"\n\n")
    assert (await mock.gauges())[0] == 1
    resp.close()
    await mock.until_gauges(running=0)
    samples = await mock.metrics()
    assert samples[("mockllm_requests_total", (("endpoint", CHAT), ("status", "499")))] == 1
    assert not any(name == "vllm:request_success_total" for name, _ in samples)
