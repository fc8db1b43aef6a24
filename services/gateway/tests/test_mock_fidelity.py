"""A cached answer with reasoning, a tool call or logprobs, as the mock serves them the
way vLLM does (``mockllm.rich``), is replayed identically: the hit, whole or streamed,
is the answer the model server gave, as the official client assembles it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fake_sidecars import FakeSidecars
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from gwkit import MODEL, MakeBackend, MakeGateway, backend, events

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
CHAT_CASES = {
    "reasoning": ({}, {"X-Mock-Reasoning-Tokens": "3"}),
    "tool_call": ({"tools": TOOLS, "tool_choice": "required"}, {}),
    "logprobs": ({"logprobs": True, "top_logprobs": 2}, {}),
}
VOLATILE = ("id", "created", "system_fingerprint")


def settings(sidecars: FakeSidecars) -> dict[str, Any]:
    return {
        "cache_target": sidecars.target,
        "embedder_target": sidecars.target,
        "cache_lookup_budget_ms": 2000,
        "cache_speculative": False,
    }


def steady(body: dict[str, Any]) -> dict[str, Any]:
    """An answer without what differs between two answers of the same thing."""
    return {k: v for k, v in body.items() if k not in VOLATILE}


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def anonymous(answer: dict[str, Any]) -> dict[str, Any]:
    """Without the tool calls' ids (new with every generation)."""
    for choice in answer["choices"]:
        for call in choice["message"].get("tool_calls", ()):
            call.pop("id")
    return answer


def assembled(sse: str) -> dict[str, Any]:
    """A chat stream as the openai client assembles it."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for data in events(sse):
        if data != "[DONE]":
            state.handle_chunk(ChatCompletionChunk.model_validate_json(data))
    final = state.get_final_completion().model_dump(exclude_none=True)
    for choice in final["choices"]:
        choice["message"].pop("parsed", None)
        if choice["message"].get("content") == "" and choice["message"].get("tool_calls"):
            del choice["message"]["content"]  # vLLM's role chunk says "": no content
        for call in choice["message"].get("tool_calls", ()):
            call["function"].pop("parsed_arguments", None)
            call.pop("index")  # a stream's merge key, not part of the whole answer
    return steady(final)


@pytest.mark.parametrize("case", CHAT_CASES)
async def test_a_cached_chat_answer_replays_what_the_model_server_sent(
    case: str, make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    fields, headers = CHAT_CASES[case]
    gw = await make_gateway([backend(await make_backend())], **settings(sidecars))
    body = {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": case}]}
    body |= fields
    nocache = {**headers, "Cache-Control": "no-store"}

    served = await gw.post("/v1/chat/completions", json=body, headers=headers)
    assert served.headers["x-cache"] == "MISS"
    await sidecars.wait_stores(1)
    hit = await gw.post("/v1/chat/completions", json=body, headers=headers)
    assert hit.headers["x-cache"] == "HIT-EXACT"
    assert steady(hit.json()) == steady(served.json())
    message = served.json()["choices"][0]
    assert {
        "reasoning": lambda: message["message"]["reasoning_content"],
        "tool_call": lambda: message["message"]["tool_calls"][0]["function"]["arguments"],
        "logprobs": lambda: message["logprobs"]["content"][0]["top_logprobs"][1],
    }[case]()  # the mock did serve the field

    streamed = {**body, "stream": True}
    replayed = await gw.post("/v1/chat/completions", json=streamed, headers=headers)
    assert replayed.headers["x-cache"] == "HIT-EXACT"
    whole = steady(served.json())
    whole.pop("usage")
    assert assembled(replayed.text) == without_nulls(whole)  # the tool call's id too
    # The mock streams what it answers whole (a new tool call id each time, as vLLM's).
    upstream = await gw.post("/v1/chat/completions", json=streamed, headers=nocache)
    assert upstream.headers["x-cache"] == "BYPASS"
    assert anonymous(assembled(upstream.text)) == anonymous(without_nulls(whole))


async def test_a_cached_completion_with_logprobs_replays_them(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await make_gateway([backend(await make_backend())], **settings(sidecars))
    body = {"model": MODEL, "prompt": "once", "temperature": 0, "logprobs": 2}
    served = await gw.post("/v1/completions", json=body)
    await sidecars.wait_stores(1)
    hit = await gw.post("/v1/completions", json=body)
    assert hit.headers["x-cache"] == "HIT-EXACT"
    assert steady(hit.json()) == steady(served.json())
    logprobs = served.json()["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["top_logprobs"]) == 8

    replayed = await gw.post("/v1/completions", json={**body, "stream": True})
    assert replayed.headers["x-cache"] == "HIT-EXACT"
    text, merged = "", {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for data in events(replayed.text)[:-1]:
        for choice in orjson.loads(data)["choices"]:
            text += choice["text"]
            for key, values in (choice.get("logprobs") or {}).items():
                merged[key] += values
    assert text == served.json()["choices"][0]["text"]
    assert merged == logprobs
