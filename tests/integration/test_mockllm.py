"""The mock as a real process (`python -m mockllm`), checked with the official openai client."""

from __future__ import annotations

import time
from collections.abc import Iterator

import openai
import pytest

from deploy.local.harness import Stack
from deploy.local.procs import Proc

pytestmark = pytest.mark.integration

MODEL = "mock-llama-3-8b"
TOKENS = 16
INTER_TOKEN_MS = 20


@pytest.fixture
def mock_url(stack: Stack) -> tuple[Proc, str]:
    proc, url = stack.mock(ttft_ms=30, inter_token_ms=INTER_TOKEN_MS, output_tokens=TOKENS)
    return proc, f"{url}/v1"


@pytest.fixture
def client(mock_url: tuple[Proc, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock_url[1], api_key="unused", max_retries=0) as oai:
        yield oai


def test_non_streamed_chat_and_completion(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant"
    assert len((chat.choices[0].message.content or "").split()) == 5
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 5
    again = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert again.choices[0].message.content == chat.choices[0].message.content

    completion = client.completions.create(model=MODEL, prompt="once upon a time")
    assert len(completion.choices[0].text.split()) == TOKENS
    assert completion.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == [MODEL]


def test_stream_chunks_arrive_spread_out_in_time(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "tell me a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    arrivals: list[float] = []
    text = []
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    assert len(arrivals) == TOKENS
    assert usage is not None and usage.completion_tokens == TOKENS
    # 15 gaps of 20 ms: a lump delivered at the end would arrive within a few ms
    assert arrivals[-1] - arrivals[0] >= 0.5 * (TOKENS - 1) * INTER_TOKEN_MS / 1000
    full = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "tell me a story"}]
    )
    assert "".join(text) == full.choices[0].message.content


def test_errors_reach_the_client_as_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"X-Mock-Fault": "status:429"},
        )
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_headers={"X-Mock-Fault": "error-event:2"},
    )
    seen = 0
    with pytest.raises(openai.APIError, match="Injected fault"):
        for chunk in stream:
            seen += bool(chunk.choices and chunk.choices[0].delta.content)
    assert seen == 2


def test_sigterm_stops_the_server_cleanly(mock_url: tuple[Proc, str]) -> None:
    proc, _ = mock_url
    assert proc.stop(timeout=10) == 0
