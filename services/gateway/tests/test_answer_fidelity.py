"""A cached answer gives back everything the backend sent: stream -> store -> replay.

The streams are shaped as vLLM and OpenAI send them; the replays are read with
openai-python's own models and its stream accumulation, as a client would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from fake_sidecars import FakeSidecars
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.protocol import answer
from gateway.protocol.calls import Kind
from gwkit import MakeGateway, backend, events

CHAT_HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
TEXT_HEAD = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
USAGE = {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, **choice: Any) -> dict[str, Any]:
    return {
        **CHAT_HEAD,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, **choice}],
    }


def usage_chunk(head: dict[str, Any] = CHAT_HEAD) -> dict[str, Any]:
    return {**head, "choices": [], "usage": USAGE}


def tool(index: int, **fields: Any) -> dict[str, Any]:
    function = {k: fields.pop(k) for k in ("name", "arguments") if k in fields}
    return chunk({"tool_calls": [{"index": index, **fields, "function": function}]})


TOOL_CALLS = sse(
    chunk({"role": "assistant", "content": ""}),
    tool(0, id="call_a", type="function", name="get_weather"),  # vLLM: no arguments yet
    tool(0, arguments='{"city": '),
    tool(0, arguments='"Paris"}'),
    tool(1, id="call_b", type="function", name="get_time", arguments=""),  # OpenAI's way
    tool(1, arguments='{"tz": "CET"}'),
    chunk({}, "tool_calls"),
    usage_chunk(),
)
REASONING = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning": "The user greets; ", "reasoning_content": "The user greets; "}),
    chunk({"reasoning": "greet back.", "reasoning_content": "greet back."}),
    chunk({"content": "Hello"}),
    chunk({"content": " there!"}),
    chunk({}, "stop", stop_reason=None, matched_stop=151645),  # SGLang's stop token
    usage_chunk(),
)
REFUSAL = sse(
    {**chunk({"role": "assistant", "content": None, "refusal": ""}), "system_fingerprint": "fp_1"},
    {**chunk({"refusal": "I can't help "}), "system_fingerprint": "fp_1", "obfuscation": "x"},
    {**chunk({"refusal": "with that."}), "system_fingerprint": "fp_1", "obfuscation": "yz"},
    {**chunk({}, "stop"), "system_fingerprint": "fp_1", "service_tier": "default"},
)


def entry(token: str, logprob: float) -> dict[str, Any]:
    alt = {"token": token.upper(), "logprob": logprob - 1, "bytes": list(token.upper().encode())}
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": [alt],
    }


def logprob_chunk(token: str, logprob: float) -> dict[str, Any]:
    return chunk({"content": token}, logprobs={"content": [entry(token, logprob)]})


# "😀" is split over two tokens: the first is not a character yet (vLLM sends "\ufffd")
EMOJI = "😀".encode()
SPLIT_TOKENS = [
    {"token": "\ufffd", "logprob": -0.5, "bytes": list(EMOJI[:2]), "top_logprobs": []},
    {"token": "\ufffd", "logprob": -0.1, "bytes": list(EMOJI[2:]), "top_logprobs": []},
]
LOGPROBS = sse(
    chunk({"role": "assistant", "content": ""}),
    logprob_chunk("Bonjour", -0.25),
    logprob_chunk(" à", -1.5),
    logprob_chunk(" tous", -0.75),
    chunk({"content": ""}, logprobs={"content": SPLIT_TOKENS[:1]}),
    chunk({"content": "😀"}, logprobs={"content": SPLIT_TOKENS[1:]}),
    chunk({}, "stop", stop_reason="\n\n"),  # vLLM's stop string
    usage_chunk(),
)


def text_chunk(text: str, offset: int, logprob: float, finish: str | None = None) -> dict[str, Any]:
    logprobs = {"text_offset": [offset], "token_logprobs": [logprob], "tokens": [text]}
    logprobs["top_logprobs"] = [{text: logprob, "x": logprob - 2}]
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
    return {**TEXT_HEAD, "choices": [choice], "system_fingerprint": "fp_2"}


TEXT_LOGPROBS = sse(
    text_chunk("Once", 0, -0.5),
    text_chunk(" upon", 4, -0.25),
    text_chunk(" a time", 9, -0.125, finish="length"),
    {**usage_chunk(TEXT_HEAD), "system_fingerprint": "fp_2"},
)


def stored(kind: Kind, raw: bytes) -> bytes:
    kept = answer.from_stream(kind, raw)
    assert kept is not None
    assert answer.unreplayable(kept) is None
    return kept


def replayed_chunks(kept: bytes) -> list[dict[str, Any]]:
    body = answer.replay_sse(kept, include_usage=True).decode()
    assert events(body)[-1] == "[DONE]"
    return [orjson.loads(e) for e in events(body)[:-1]]


def without_ids(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("id", "created")}


def sdk_stream(kept: bytes) -> ChatCompletion:
    """The replayed stream as openai-python accumulates it."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for data in replayed_chunks(kept):
        state.handle_chunk(ChatCompletionChunk.model_validate(data))
    return state.get_final_completion()


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        (Kind.CHAT, TOOL_CALLS),
        (Kind.CHAT, REASONING),
        (Kind.CHAT, REFUSAL),
        (Kind.CHAT, LOGPROBS),
        (Kind.COMPLETION, TEXT_LOGPROBS),
    ],
    ids=["tool_calls", "reasoning", "refusal", "logprobs", "completion_logprobs"],
)
def test_a_replayed_stream_assembles_to_the_stored_answer(kind: Kind, raw: bytes) -> None:
    kept = stored(kind, raw)
    again = answer.from_stream(kind, answer.replay_sse(kept, include_usage=True))
    assert again is not None
    assert without_ids(orjson.loads(again)) == without_ids(orjson.loads(kept))
    as_json = orjson.loads(answer.replay_json(kept))
    assert without_ids(as_json) == without_ids(orjson.loads(kept))
    assert as_json["id"] != orjson.loads(kept)["id"]


def test_tool_calls_are_merged_by_index_and_replayed_name_first_then_arguments() -> None:
    kept = stored(Kind.CHAT, TOOL_CALLS)
    message = ChatCompletion.model_validate_json(answer.replay_json(kept)).choices[0].message
    assert message.content == ""  # vLLM opens with content ""
    calls = [
        (c.id, c.type, c.function.name, c.function.arguments) for c in message.tool_calls or ()
    ]
    assert calls == [
        ("call_a", "function", "get_weather", '{"city": "Paris"}'),
        ("call_b", "function", "get_time", '{"tz": "CET"}'),
    ]
    deltas = [c["choices"][0]["delta"] for c in replayed_chunks(kept) if c["choices"]]
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tool_deltas[0] == {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert tool_deltas[1] == {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    assert tool_deltas[2]["id"] == "call_b" and tool_deltas[2]["index"] == 1
    streamed = sdk_stream(kept)
    assert streamed.choices[0].finish_reason == "tool_calls"
    arguments = [c.function.arguments for c in streamed.choices[0].message.tool_calls or ()]
    assert arguments == ['{"city": "Paris"}', '{"tz": "CET"}']
    assert streamed.usage is not None and streamed.usage.total_tokens == 16


def test_reasoning_is_kept_under_both_names_and_replayed_before_the_content() -> None:
    kept = stored(Kind.CHAT, REASONING)
    choice = orjson.loads(answer.replay_json(kept))["choices"][0]
    message = choice["message"]
    assert message["reasoning"] == message["reasoning_content"] == "The user greets; greet back."
    assert message["content"] == "Hello there!" and choice["matched_stop"] == 151645
    deltas = [c["choices"][0]["delta"] for c in replayed_chunks(kept) if c["choices"]]
    assert replayed_chunks(kept)[-2]["choices"][0]["matched_stop"] == 151645
    order = [k for d in deltas for k in d if k in ("reasoning", "content") and d[k]]
    assert order == ["reasoning", "content"]
    streamed = sdk_stream(kept).choices[0].message
    assert streamed.content == "Hello there!"
    assert streamed.model_extra is not None
    assert streamed.model_extra["reasoning_content"] == "The user greets; greet back."
    only_old = sse(chunk({"reasoning_content": "Think."}), chunk({"content": "Hi"}, "stop"))
    old = orjson.loads(answer.replay_json(stored(Kind.CHAT, only_old)))["choices"][0]["message"]
    assert old["reasoning_content"] == "Think." and "reasoning" not in old


def test_a_refusal_and_the_fingerprint_come_back_and_padding_does_not() -> None:
    kept = stored(Kind.CHAT, REFUSAL)
    whole = ChatCompletion.model_validate_json(answer.replay_json(kept))
    assert whole.choices[0].message.refusal == "I can't help with that."
    assert whole.choices[0].message.content is None
    assert whole.system_fingerprint == "fp_1" and whole.service_tier == "default"
    chunks = replayed_chunks(kept)
    assert all(c["system_fingerprint"] == "fp_1" for c in chunks)
    assert not any("obfuscation" in c for c in chunks)
    streamed = sdk_stream(kept)
    assert streamed.choices[0].message.refusal == "I can't help with that."
    assert streamed.choices[0].message.content is None
    assert streamed.system_fingerprint == "fp_1"


def test_chat_logprobs_are_concatenated_and_replayed_one_token_per_chunk() -> None:
    kept = stored(Kind.CHAT, LOGPROBS)
    whole = ChatCompletion.model_validate_json(answer.replay_json(kept)).choices[0]
    assert whole.message.content == "Bonjour à tous😀" and whole.stop_reason == "\n\n"  # type: ignore[attr-defined]
    assert whole.logprobs is not None and whole.logprobs.content is not None
    assert [t.logprob for t in whole.logprobs.content] == [-0.25, -1.5, -0.75, -0.5, -0.1]
    pairs = [
        (c["choices"][0]["delta"].get("content"), c["choices"][0]["logprobs"])
        for c in replayed_chunks(kept)
        if c["choices"] and c["choices"][0]["logprobs"]
    ]
    assert [p for p, _ in pairs] == ["Bonjour", " à", " tous", "", "😀"]
    assert pairs[1][1]["content"][0]["top_logprobs"][0]["token"] == " À"
    streamed = sdk_stream(kept).choices[0]
    assert streamed.logprobs is not None and streamed.logprobs.content == whole.logprobs.content
    assert streamed.finish_reason == "stop"


def test_completion_logprobs_are_concatenated_and_replayed_per_token() -> None:
    kept = stored(Kind.COMPLETION, TEXT_LOGPROBS)
    whole = Completion.model_validate_json(answer.replay_json(kept))
    assert whole.choices[0].text == "Once upon a time"
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == ["Once", " upon", " a time"]
    assert logprobs.text_offset == [0, 4, 9]  # as vLLM sends them: from the text's start
    assert logprobs.token_logprobs == [-0.5, -0.25, -0.125]
    assert whole.system_fingerprint == "fp_2"
    chunks = [c for c in replayed_chunks(kept) if c["choices"]]
    tokens = [c["choices"][0]["logprobs"]["tokens"] for c in chunks[:3]]
    assert tokens == [["Once"], [" upon"], [" a time"]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert Completion.model_validate(replayed_chunks(kept)[-1]).usage is not None


def test_plain_text_still_replays_in_pieces_of_about_48_characters() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    raw = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": words}, "stop"))
    chunks = replayed_chunks(stored(Kind.CHAT, raw))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    pieces = [d["content"] for d in deltas[1:-1]]
    assert "".join(pieces) == words and all(len(p) <= 48 for p in pieces) and len(pieces) > 5
    assert deltas[-1] == {} and all(c["choices"][0]["logprobs"] is None for c in chunks[:-1])


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (  # vLLM's logprobs cover the reasoning tokens too: which chunk each came in is lost
            sse(
                chunk({"reasoning": "Hm."}, logprobs={"content": [entry("Hm.", -1.0)]}),
                chunk({"content": "Yes"}, "stop", logprobs={"content": [entry("Yes", -0.5)]}),
            ),
            "choices.0.logprobs.content",
        ),
        (sse(chunk({"content": "Hi", "audio": {"id": "a1"}}, "stop")), "choices.0.message.audio"),
        (
            sse({**chunk({"content": "Hi"}, "stop"), "prompt_token_ids": [1, 2]}),
            "prompt_token_ids",
        ),
        (sse(chunk({"content": "Hi"}, "stop", token_ids=[5])), "choices.0.token_ids"),
        (
            sse(
                tool(0, id="c", type="custom", custom={"name": "sh", "input": "ls"}),
                chunk({}, "tool_calls"),
            ),
            "choices.0.message.tool_calls.0",
        ),
    ],
    ids=["reasoning_logprobs", "audio", "prompt_token_ids", "token_ids", "custom_tool"],
)
def test_an_answer_a_replay_would_bend_is_not_stored(raw: bytes, field: str) -> None:
    kept = answer.from_stream(Kind.CHAT, raw)
    assert kept is not None
    assert answer.unreplayable(kept) == field


def test_null_and_empty_fields_are_no_obstacle() -> None:
    message = {"role": "assistant", "content": "Hi", "annotations": [], "tool_calls": []}
    choice = {"index": 0, "message": {**message, "audio": None}, "logprobs": None}
    choice |= {"finish_reason": "stop", "stop_reason": None, "token_ids": None}
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "m"}
    body |= {"choices": [choice], "prompt_logprobs": None, "kv_transfer_params": None}
    kept = answer.from_body(orjson.dumps({**body, "timings": {"predicted_n": 2}}))  # llama.cpp
    assert kept is not None and answer.unreplayable(kept) is None
    assert without_ids(orjson.loads(answer.replay_json(kept))) == without_ids(body)


def test_interleaved_choices_are_assembled_apart_and_replayed_one_after_the_other() -> None:
    def two(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**CHAT_HEAD, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    raw = sse(two(0, {"content": "A"}), two(1, {"content": "B"}), two(1, {}, "stop"))
    kept = stored(Kind.CHAT, raw.replace(b"data: [DONE]", sse(two(0, {"content": "a"}, "stop"))))
    streamed = sdk_stream(kept)
    assert [c.message.content for c in streamed.choices] == ["Aa", "B"]


def vllm_backend(stream: bytes, body: dict[str, Any]) -> web.Application:
    """Through the gateway: a backend answering as vLLM does, streamed or not."""

    async def completions(request: web.Request) -> web.StreamResponse:
        if not (await request.json()).get("stream"):
            return web.json_response(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(stream)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    return app


def tool_request(**extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "temperature": 0,
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        **extra,
    }


ServeApp = Callable[[web.Application], Awaitable[str]]


def cached(sidecars: FakeSidecars) -> dict[str, Any]:
    # hits that do not depend on the machine's load, as in test_cache_path
    never_late = {"cache_lookup_budget_ms": 2000, "cache_speculative": False}
    return {"cache_target": sidecars.target, "embedder_target": sidecars.target, **never_late}


async def test_a_cached_tool_call_replays_whole_through_the_gateway(
    serve_app: ServeApp, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    body = orjson.loads(answer.replay_json(stored(Kind.CHAT, TOOL_CALLS)))
    url = await serve_app(vllm_backend(TOOL_CALLS, body))
    gw = await make_gateway([backend(url, "m")], **cached(sidecars))
    first = await gw.post("/v1/chat/completions", json=tool_request(stream=True))
    assert first.headers["x-cache"] == "MISS"
    await sidecars.wait_stores(1)
    unary = await gw.post("/v1/chat/completions", json=tool_request())
    assert unary.headers["x-cache"] == "HIT-EXACT"
    calls = ChatCompletion.model_validate_json(unary.content).choices[0].message.tool_calls
    assert [c.function.arguments for c in calls or ()] == ['{"city": "Paris"}', '{"tz": "CET"}']
    options = {"stream": True, "stream_options": {"include_usage": True}}
    streamed = await gw.post("/v1/chat/completions", json=tool_request(**options))
    assert streamed.headers["x-cache"] == "HIT-EXACT"
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for data in events(streamed.text)[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate_json(data))
    final = state.get_final_completion()
    assert [c.id for c in final.choices[0].message.tool_calls or ()] == ["call_a", "call_b"]
    assert final.usage is not None and final.usage.completion_tokens == 7


async def test_an_unreplayable_answer_is_served_not_stored_and_counted(
    serve_app: ServeApp, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    raw = sse(chunk({"content": "Hi", "audio": {"id": "a1", "data": "UklGR"}}, "stop"))
    url = await serve_app(vllm_backend(raw, {}))
    gw = await make_gateway([backend(url, "m")], **cached(sidecars))
    first = await gw.post("/v1/chat/completions", json=tool_request(stream=True))
    assert first.headers["x-cache"] == "MISS" and '"audio"' in first.text
    metrics = (await gw.get("/metrics")).text
    assert 'gateway_cache_stores_total{outcome="unreplayable"} 1.0' in metrics
    assert sidecars.cache.count() == 0
