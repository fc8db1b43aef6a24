"""Streaming through the real gateway process, as an application sees it."""

from __future__ import annotations

import itertools
import time

import httpx
import openai
import pytest

from deploy.local.harness import MOCK_MODEL, Stack, chat_body
from deploy.local.procs import Proc


def running(mock_url: str) -> float:
    text = httpx.get(f"{mock_url}/metrics").text
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.split()[-1])
    raise AssertionError("vllm:num_requests_running missing")


def test_chunks_arrive_spread_out_in_time_not_in_one_lump(stack: Stack) -> None:
    _, mock = stack.mock(output_tokens=32, ttft_ms=20, inter_token_ms=20)
    _, gw = stack.gateway([mock])
    arrivals: list[float] = []
    with httpx.stream(
        "POST", f"{gw}/v1/chat/completions", json=chat_body("spread", stream=True), timeout=30
    ) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.perf_counter())
    assert len(arrivals) >= 33
    # 31 gaps of 20 ms upstream: buffering would deliver them all at once at the end.
    assert arrivals[-1] - arrivals[0] > 0.4
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(1 for g in gaps if g > 0.01) >= 20


def test_official_openai_client_streams_and_not(stack: Stack) -> None:
    _, mock = stack.mock(output_tokens=12, ttft_ms=5, inter_token_ms=2)
    _, gw = stack.gateway([mock])
    client = openai.OpenAI(base_url=f"{gw}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Say something"}]
    whole = client.chat.completions.create(model=MOCK_MODEL, messages=messages)  # type: ignore[arg-type]
    pieces = []
    for chunk in client.chat.completions.create(model=MOCK_MODEL, messages=messages, stream=True):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens == 12
    completion = client.completions.create(model=MOCK_MODEL, prompt="Once upon a time")
    assert completion.choices[0].text
    assert [m.id for m in client.models.list()] == [MOCK_MODEL]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=messages)  # type: ignore[arg-type]


def test_mid_stream_failure_reaches_the_openai_client_as_an_error(stack: Stack) -> None:
    _, mock = stack.mock(output_tokens=12, ttft_ms=5, inter_token_ms=2)
    _, gw = stack.gateway([mock])
    client = openai.OpenAI(base_url=f"{gw}/v1", api_key="unused", max_retries=0)
    for fault in ("cut:4", "error-event:4"):
        stream = client.chat.completions.create(
            model=MOCK_MODEL,
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            extra_headers={"X-Mock-Fault": fault},
        )
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass


def test_client_disconnect_stops_the_backend_generating(stack: Stack) -> None:
    _, mock = stack.mock(output_tokens=5000, ttft_ms=5, inter_token_ms=10)
    _, gw = stack.gateway([mock])
    with httpx.stream(
        "POST", f"{gw}/v1/chat/completions", json=chat_body("long", stream=True), timeout=30
    ) as reply:
        lines = reply.iter_lines()  # kept referenced: dropping it closes the connection
        seen = 0
        for line in lines:
            seen += line.startswith("data:")
            if seen == 5:
                break
        assert running(mock) == 1
    deadline = time.monotonic() + 5
    while running(mock) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(mock) == 0


def test_gateway_answers_every_route_in_openai_shape(stack: Stack) -> None:
    _, mock = stack.mock()
    proc, gw = stack.gateway([mock])
    assert isinstance(proc, Proc)
    reply = httpx.post(
        f"{gw}/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{gw}/readyz").status_code == 200
    assert "gateway_requests_total" in httpx.get(f"{gw}/metrics").text


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_first_byte_frees_the_backend(stack: Stack, stream: bool) -> None:
    _, mock = stack.mock(output_tokens=8, ttft_ms=5000, inter_token_ms=1)
    _, gw = stack.gateway([mock])
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw}/v1/chat/completions", json=chat_body("slow", stream=stream), timeout=0.5)
    deadline = time.monotonic() + 3
    while running(mock) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(mock) == 0
    metrics = httpx.get(f"{gw}/metrics").text
    assert "gateway_in_flight_requests 0.0" in metrics
