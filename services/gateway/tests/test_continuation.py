"""A stream whose replica breaks after the first byte is continued on another
replica and spliced: the client gets one whole answer, equal to the one it
would have got uninterrupted (the mock's answers are deterministic)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.protocol.calls import Kind
from gwkit import FirstTry, MakeBackend, MakeGateway, backend, chat, content, events, metric


async def stream_text(gw: httpx.AsyncClient, route: str, body: dict[str, Any]) -> str:
    reply = await gw.post(route, json={**body, "stream": True})
    assert reply.status_code == 200
    return reply.text


async def test_a_chat_stream_cut_mid_way_is_continued_and_equals_the_whole_answer(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    breaking = await make_backend(fault="cut:9", inter_token_ms=1, output_tokens=32)
    healthy = await make_backend(inter_token_ms=1, output_tokens=32)
    pool = FirstTry(first=breaking)
    gw = await make_gateway([backend(breaking), backend(healthy)], pool=pool)
    asked = chat("tell me a story", stream_options={"include_usage": True})
    direct = (
        await httpx.AsyncClient().post(healthy + Kind.CHAT.route, json={**asked, "stream": True})
    ).text

    body = await stream_text(gw, Kind.CHAT.route, asked)
    assert content(body) == content(direct), "the spliced answer is the uninterrupted one"
    data = events(body)
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data if d != "[DONE]"]
    assert not any("error" in c for c in chunks), "no error event"
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    roles = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("role")]
    assert len(roles) == 1, "one role chunk"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 32, "usage covers the whole answer"
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_stream_continuations_total", result="continued") == 1
    cut = metric(
        text, "gateway_upstream_attempts_total", endpoint=breaking, outcome="stream_truncated"
    )
    assert cut == 1, "the replica that broke the stream is charged"
    assert all(state.pending == 0 for state in pool.snapshot())


async def test_a_completion_stream_cut_mid_way_is_continued(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    breaking = await make_backend(fault="cut:5", inter_token_ms=1, output_tokens=32)
    healthy = await make_backend(inter_token_ms=1, output_tokens=32)
    gw = await make_gateway([backend(breaking), backend(healthy)], pool=FirstTry(first=breaking))
    asked = {"model": "mock-llama-3-8b", "prompt": "Once upon a time"}
    route = Kind.COMPLETION.route
    direct = (await httpx.AsyncClient().post(healthy + route, json={**asked, "stream": True})).text
    body = await stream_text(gw, route, asked)
    assert content(body) == content(direct)
    assert events(body).count("[DONE]") == 1 and '"error"' not in body


async def test_what_cannot_be_continued_ends_with_the_error_event(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    breaking = await make_backend(fault="cut:5", inter_token_ms=1, output_tokens=32)
    healthy = await make_backend(inter_token_ms=1, output_tokens=32)
    gw = await make_gateway([backend(breaking), backend(healthy)], pool=FirstTry(first=breaking))
    body = await stream_text(gw, Kind.CHAT.route, chat("hi", logprobs=True))
    assert '"error"' in body and "[DONE]" not in body
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_stream_continuations_total", result="not_continuable") == 1


@pytest.mark.parametrize("cut", [3, 9, 11, 14])  # in the reasoning, at its end, in the text
async def test_a_stream_that_carried_reasoning_is_not_continued(
    make_backend: MakeBackend, make_gateway: MakeGateway, cut: int
) -> None:
    """The continuing request cannot carry the reasoning back: the model would reason
    again (spliced after the text) and vLLM's parsers would call the rest reasoning."""
    breaking = await make_backend(fault=f"cut:{cut}", inter_token_ms=0, output_tokens=16)
    healthy = await make_backend(inter_token_ms=0, output_tokens=16)
    gw = await make_gateway([backend(breaking), backend(healthy)], pool=FirstTry(first=breaking))
    reasoning = {"X-Mock-Reasoning-Tokens": "10"}
    reply = await gw.post(Kind.CHAT.route, json=chat("think", stream=True), headers=reasoning)
    assert '"error"' in reply.text and "[DONE]" not in reply.text
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_stream_continuations_total", result="not_continuable") == 1


async def test_continuation_off_keeps_the_error_event(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    breaking = await make_backend(fault="cut:5", inter_token_ms=1, output_tokens=32)
    healthy = await make_backend(inter_token_ms=1, output_tokens=32)
    gw = await make_gateway(
        [backend(breaking), backend(healthy)],
        pool=FirstTry(first=breaking),
        stream_continuations=0,
    )
    body = await stream_text(gw, Kind.CHAT.route, chat("hi"))
    assert '"error"' in body
    assert metric((await gw.get("/metrics")).text, "gateway_stream_continuations_total") == 0


async def test_a_stream_that_only_lacked_its_end_marker_is_ended(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    cut_at_end = await make_backend(fault="cut:8", output_tokens=8)  # all 8 tokens, no [DONE]
    other = await make_backend(output_tokens=8)
    gw = await make_gateway([backend(cut_at_end), backend(other)], pool=FirstTry(first=cut_at_end))
    body = await stream_text(gw, Kind.CHAT.route, chat("hi"))
    assert events(body)[-1] == "[DONE]" and '"error"' not in body
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_stream_continuations_total", result="finished") == 1
    assert metric(text, "gateway_requests_total", status="200") == 1


async def test_a_stream_that_stalls_past_the_idle_timeout_is_continued(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    stalling = await make_backend(inter_token_ms=3000, output_tokens=16, ping_interval_ms=60000)
    healthy = await make_backend(inter_token_ms=1, output_tokens=16)
    gw = await make_gateway(
        [backend(stalling), backend(healthy)], pool=FirstTry(first=stalling), idle_timeout_s=0.3
    )
    asked = chat("a story that stalls")
    route = Kind.CHAT.route
    direct = (await httpx.AsyncClient().post(healthy + route, json={**asked, "stream": True})).text
    body = await stream_text(gw, route, asked)
    assert content(body) == content(direct) and '"error"' not in body
    text = (await gw.get("/metrics")).text
    assert (
        metric(text, "gateway_upstream_attempts_total", endpoint=stalling, outcome="timeout") == 1
    )


@pytest.mark.parametrize("cut", [1, 2, 16, 31, 32])  # first, mid-way, last but one, last
@pytest.mark.parametrize("route", [Kind.CHAT.route, Kind.COMPLETION.route])
@pytest.mark.parametrize("max_tokens", [None, 24])
async def test_a_cut_at_any_point_is_spliced_whole(
    make_backend: MakeBackend, make_gateway: MakeGateway, cut: int, route: str, max_tokens: int
) -> None:
    breaking = await make_backend(fault=f"cut:{cut}", inter_token_ms=0, output_tokens=32)
    healthy = await make_backend(inter_token_ms=0, output_tokens=32)
    gw = await make_gateway([backend(breaking), backend(healthy)], pool=FirstTry(first=breaking))
    usage = {"stream_options": {"include_usage": True}}
    asked: dict[str, Any] = (
        chat("a story", **usage)
        if route == Kind.CHAT.route
        else {"model": "mock-llama-3-8b", "prompt": "Once upon a time", **usage}
    )
    if max_tokens:
        asked["max_tokens"] = max_tokens
    direct = (await httpx.AsyncClient().post(healthy + route, json={**asked, "stream": True})).text
    body = await stream_text(gw, route, asked)
    assert content(body) == content(direct)
    data = events(body)
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]" and '"error"' not in body
    whole = [orjson.loads(d) for d in events(direct) if d != "[DONE]"][-1]["usage"]
    # The completion count is exact; the prompt's is the continuation's minus the
    # tokens sent before (the server's count of that text may differ by a few). A cut
    # after the last token lost only [DONE] and the usage: the usage is asked for.
    usage = orjson.loads(data[-2])["usage"]
    assert usage["completion_tokens"] == whole["completion_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert len([d for d in data if '"usage":{' in d]) == 1
