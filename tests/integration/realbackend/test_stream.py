"""Tokens from a real model reach the client as they are generated."""

from __future__ import annotations

import itertools
import json
import time
import uuid

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from deploy.local.harness import Stack
from tests.integration.realbackend.client import (
    MODEL,
    NO_EOS,
    Background,
    chat,
    content,
    gateway_log,
    llama_gateway,
    long_chat,
)

pytestmark = pytest.mark.realbackend


def test_tokens_arrive_one_by_one_from_the_real_model(gateway: str) -> None:
    arrivals: list[tuple[float, str]] = []
    body = chat("Describe the sea.", stream=True, max_tokens=48, logit_bias=NO_EOS)
    with httpx.stream("POST", f"{gateway}/v1/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data:"):
                arrivals.append((time.perf_counter(), line))
    assert arrivals[-1][1] == "data: [DONE]"
    tokens = [t for t, line in arrivals if content([line])]
    assert len(tokens) >= 40  # llama.cpp sends one event per token: 48 asked, EOS banned
    last = json.loads(arrivals[-2][1][6:])
    assert last["choices"][0]["finish_reason"] == "length"
    # Generated one at a time, they must not reach the client in one lump at the end.
    gaps = [b - a for a, b in itertools.pairwise(tokens)]
    assert tokens[-1] - tokens[0] > 0.1
    assert sum(1 for g in gaps if g > 0.002) >= len(gaps) // 2


def test_the_openai_client_sees_the_whole_real_answer(gateway: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24)
    assert whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=24,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces).strip()
    assert [m.id for m in client.models.list()] == [MODEL]


def test_ping_comments_pass_through_but_are_not_the_first_token(
    cluster: Stack, pair: tuple[str, str]
) -> None:
    gw_proc, gw = llama_gateway(cluster, [pair[0]], cache_enabled="false")
    url = f"{gw}/v1/chat/completions"
    long = Background(url, long_chat(1900))  # runs well past the 15 s between pings
    assert long.first_data.wait(60), long.lines
    rid = uuid.uuid4().hex
    started = time.perf_counter()
    arrivals: list[tuple[float, str]] = []
    body = chat("Say hi", stream=True, max_tokens=8)
    with httpx.stream("POST", url, json=body, headers={"X-Request-ID": rid}, timeout=60) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line:
                arrivals.append((time.perf_counter() - started, line))
            if line.startswith(": ping"):
                long.stop()  # the replica is now free for this request
    kinds = [line.split(" ", 1)[0] for _, line in arrivals]
    assert kinds[0] == ":", arrivals[:3]  # queued: a comment first, forwarded as it came
    assert arrivals[-1][1] == "data: [DONE]"
    first_data = next(t for t, line in arrivals if line.startswith("data: {"))
    ping = arrivals[0][0]
    # The gateway's time to first token is the first data event, not the ping.
    ttft_ms = gateway_log(gw_proc, rid)["ttft_ms"]
    assert isinstance(ttft_ms, float) and ttft_ms / 1000 > ping
    assert first_data > ping
