"""The semantic cache in front of a real model: only whole, good answers are stored."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from deploy.local.harness import Stack
from tests.integration.realbackend.client import (
    NO_EOS,
    Background,
    attempts,
    chat,
    content,
    llama_gateway,
    read_stream,
    short_stream,
)

pytestmark = pytest.mark.realbackend


def test_a_repeated_request_is_served_from_the_cache_with_the_same_text(
    cache_gateway: str,
) -> None:
    url = f"{cache_gateway}/v1/chat/completions"
    body = chat(f"Name a colour ({uuid.uuid4().hex[:8]}).", temperature=0, max_tokens=24)
    first = httpx.post(url, json=body | {"stream": True}, timeout=60)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    text = content(first.text.splitlines())
    assert text
    replies = []
    for _ in range(20):  # the store happens in the background after the answer
        replies.append(httpx.post(url, json=body | {"stream": True}, timeout=60))
        if replies[-1].headers["x-cache"] == "HIT-EXACT":
            break
        time.sleep(0.1)
    hit = replies[-1]
    assert hit.headers["x-cache"] == "HIT-EXACT", [r.headers["x-cache"] for r in replies]
    assert content(hit.text.splitlines()) == text
    assert hit.text.rstrip().endswith("data: [DONE]")
    whole = httpx.post(url, json=body, timeout=60)
    assert whole.headers["x-cache"] == "HIT-EXACT"
    assert whole.json()["choices"][0]["message"]["content"] == text


def test_a_context_overflow_is_an_error_to_the_client_and_never_cached(
    cache_gateway: str,
) -> None:
    gw = cache_gateway
    url = f"{gw}/v1/chat/completions"
    body = chat("lorem ipsum " * 1500, temperature=0, max_tokens=8)  # > 2048 tokens
    before = attempts(gw)
    for _ in range(2):  # the second time too: nothing was stored
        status, lines = read_stream(url, body | {"stream": True})
        assert "data: [DONE]" not in lines  # never a silent, empty success
        if status == 200:
            assert '"error"' in lines[-1], lines[-3:]
        else:
            error = json.loads(lines[0])["error"]
            assert status == 502 and error["type"] == "upstream_error"
        whole = httpx.post(url, json=body, timeout=60)
        assert whole.status_code == 400
        error = whole.json()["error"]
        assert error["code"] == "context_length_exceeded" and "Traceback" not in whole.text
    failures = sum(
        n - before[key] for key, n in attempts(gw).items() if key[1] == "stream_truncated"
    )
    assert failures >= 2  # the streamed overflows counted against the replicas


def test_a_stream_cut_by_an_interrupting_llamacpp_is_not_cached(
    cluster: Stack, sidecars: tuple[str, str]
) -> None:
    """``--interrupt_requests True`` (llama.cpp's default) ends a running stream with
    ``[DONE]`` but no ``finish_reason`` when another request arrives."""
    _, replica = cluster.llamacpp(interrupt=True)
    _, gw = llama_gateway(
        cluster,
        [replica],
        embedder_target=sidecars[0],
        cache_target=sidecars[1],
        cache_lookup_budget_ms=2000,
    )
    url = f"{gw}/v1/chat/completions"
    body = chat(
        f"Tell a story ({uuid.uuid4().hex[:6]})",
        stream=True,
        temperature=0,
        max_tokens=400,
        logit_bias=NO_EOS,
    )
    cut = Background(url, body)
    assert cut.first_data.wait(60), cut.lines
    short_stream(gw)  # interrupts the running stream
    lines = cut.stop()
    assert "data: [DONE]" in lines  # llama.cpp's, then it drops the connection
    assert all('"finish_reason":"length"' not in line.replace(" ", "") for line in lines)
    for _ in range(5):  # as long as a complete answer takes to be stored (see above)
        with httpx.stream("POST", url, json=body, timeout=60) as again:
            assert again.headers["x-cache"] == "MISS"  # the cut answer was not stored
        time.sleep(0.2)
