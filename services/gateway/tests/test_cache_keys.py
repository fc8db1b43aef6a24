"""Namespaces are hard walls; exact keys ignore formatting; policy follows the request."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from gateway.cache.keys import IGNORED, chat_key, completion_key
from gateway.cache.policy import decide
from gateway.protocol import answer as stored
from gateway.protocol.calls import Kind
from gateway.protocol.schemas import ChatCompletionRequest, CompletionRequest


def chat(messages: list[dict[str, Any]] | None = None, **extra: Any) -> ChatCompletionRequest:
    body = {
        "model": "m",
        "temperature": 0,
        "messages": messages or [{"role": "user", "content": "What is FAISS?"}],
        **extra,
    }
    return ChatCompletionRequest.model_validate(body)


def test_exact_key_is_stable_under_key_order_and_whitespace() -> None:
    a = b'{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}]}'
    b = b'{ "messages": [ {"content": "hi", "role": "user"} ],\n "temperature": 0.0, "model": "m" }'
    ka = chat_key("t", ChatCompletionRequest.model_validate_json(a))
    kb = chat_key("t", ChatCompletionRequest.model_validate_json(b))
    assert ka == kb


def test_stream_flags_and_user_do_not_split_the_cache() -> None:
    plain = chat_key("t", chat())
    streamed = chat_key("t", chat(stream=True, stream_options={"include_usage": True}, user="u1"))
    assert plain == streamed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.5),
        ("max_tokens", 7),
        ("top_p", 0.9),
        ("seed", 3),
        ("stop", ["x"]),
        ("model", "other"),
        ("response_format", {"type": "json_object"}),
    ],
)
def test_every_generation_parameter_is_part_of_the_namespace(field: str, value: Any) -> None:
    assert chat_key("t", chat()).namespace != chat_key("t", chat(**{field: value})).namespace


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "u1"),
        ("safety_identifier", "s1"),
        ("metadata", {"team": "a"}),
        ("store", True),
        ("request_id", "req-1"),
        ("priority", 5),
        ("service_tier", "flex"),
        ("prompt_cache_key", "k"),
        ("stream", True),
        ("stream_options", {"include_usage": True}),
    ],
)
def test_fields_that_cannot_change_the_answer_share_the_cache(field: str, value: Any) -> None:
    assert IGNORED.get(field)  # listed in one place, with a reason
    assert chat_key("t", chat()) == chat_key("t", chat(**{field: value}))
    prompt = {"model": "m", "temperature": 0, "prompt": "Once"}
    plain = completion_key("t", CompletionRequest.model_validate(prompt))
    other = completion_key("t", CompletionRequest.model_validate({**prompt, field: value}))
    assert plain == other


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 7),
        ("n", 2),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("parallel_tool_calls", False),
        ("cache_salt", "tenant-secret"),
        ("chat_template_kwargs", {"enable_thinking": False}),  # unknown fields count
    ],
)
def test_fields_that_change_the_answer_or_what_is_returned_split_the_cache(
    field: str, value: Any
) -> None:
    assert field not in IGNORED
    assert chat_key("t", chat()).namespace != chat_key("t", chat(**{field: value})).namespace


def test_completion_echo_best_of_and_logprobs_split_the_cache() -> None:
    prompt = {"model": "m", "temperature": 0, "prompt": "Once"}
    plain = completion_key("t", CompletionRequest.model_validate(prompt))
    for field, value in (("echo", True), ("best_of", 2), ("logprobs", 1), ("seed", 1)):
        other = completion_key("t", CompletionRequest.model_validate({**prompt, field: value}))
        assert plain.namespace != other.namespace, field


def image(url: str, text: str = "What is in it?") -> ChatCompletionRequest:
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return chat([{"role": "user", "content": parts}])


PNG = base64.b64encode(b"\x89PNG fake image bytes").decode()
OTHER_PNG = base64.b64encode(b"\x89PNG other image bytes").decode()


def test_inline_images_are_keyed_by_their_bytes() -> None:
    one = chat_key("t", image(f"data:image/png;base64,{PNG}"))
    wrapped = "\n".join(PNG[i : i + 8] for i in range(0, len(PNG), 8))  # same bytes
    assert chat_key("t", image(f"data:image/png;base64,{wrapped}")) == one
    assert chat_key("t", image(f"data:image/png;base64,{OTHER_PNG}")).exact_key != one.exact_key
    assert chat_key("t", image(f"data:image/jpeg;base64,{PNG}")).exact_key != one.exact_key
    assert one.text is None  # not text only: exact-only
    # an image in an earlier turn is part of the namespace, by its bytes too
    history = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And its colour?"},
    ]
    other = [{**history[0], "content": [{"type": "image_url", "image_url": {"url": "data:,y"}}]}]
    one, two = chat_key("t", chat(history)), chat_key("t", chat(other + history[1:]))
    assert one.namespace != two.namespace


def test_inline_images_are_cached_and_images_by_url_are_not() -> None:
    inline = decide(image(f"data:image/png;base64,{PNG}"), "", "", deterministic_only=True)
    assert not inline.bypass
    for url in ("https://example.com/cat.png", "http://example.com/cat.png"):
        assert decide(image(url), "", "", deterministic_only=True).bypass
        assert decide(image(url), "", "force", deterministic_only=False).bypass
    video = chat(
        [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "https://v"}}]}]
    )
    assert decide(video, "", "", deterministic_only=True).bypass
    by_id = chat([{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}])
    assert decide(by_id, "", "", deterministic_only=True).bypass
    inline_file = chat(
        [{"role": "user", "content": [{"type": "file", "file": {"file_data": PNG}}]}]
    )
    assert not decide(inline_file, "", "", deterministic_only=True).bypass
    unknown = chat([{"role": "user", "content": [{"type": "image_pil", "image_pil": "?"}]}])
    assert decide(unknown, "", "", deterministic_only=True).bypass


def test_tenant_is_part_of_the_namespace() -> None:
    assert chat_key("a", chat()).namespace != chat_key("b", chat()).namespace


def test_earlier_turns_are_in_the_namespace_and_only_the_last_user_line_is_embedded() -> None:
    one = chat(
        [
            {"role": "user", "content": "Tell me about Paris"},
            {"role": "assistant", "content": "Paris is..."},
            {"role": "user", "content": "How big is it?"},
        ]
    )
    two = chat(
        [
            {"role": "user", "content": "Tell me about Tokyo"},
            {"role": "assistant", "content": "Tokyo is..."},
            {"role": "user", "content": "How big is it?"},
        ]
    )
    k1, k2 = chat_key("t", one), chat_key("t", two)
    assert k1.text == k2.text == "How big is it?"
    assert k1.namespace != k2.namespace
    assert k1.exact_key != k2.exact_key


def test_non_text_last_turns_and_token_prompts_are_exact_only() -> None:
    image = chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])
    assert chat_key("t", image).text is None
    assistant_last = chat([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    assert chat_key("t", assistant_last).text is None
    tokens = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3]})
    assert completion_key("t", tokens).text is None
    text = CompletionRequest.model_validate({"model": "m", "prompt": "Once"})
    assert completion_key("t", text).text == "Once"


def test_policy_caches_only_deterministic_requests_unless_forced() -> None:
    assert not decide(chat(), "", "", deterministic_only=True).bypass
    hot = chat(temperature=0.7)
    assert decide(hot, "", "", deterministic_only=True).bypass
    assert not decide(hot, "", "force", deterministic_only=True).bypass
    default_temperature = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert decide(default_temperature, "", "", deterministic_only=True).bypass
    assert decide(chat(n=2), "", "", deterministic_only=True).bypass
    # tool calls and log probabilities are stored and replayed whole: cacheable like text
    assert not decide(chat(tools=[{"type": "function"}]), "", "", deterministic_only=True).bypass
    assert not decide(chat(logprobs=True, top_logprobs=2), "", "", deterministic_only=True).bypass


def test_cache_control_opts_out() -> None:
    no_cache = decide(chat(), "no-cache", "", deterministic_only=True)
    assert (no_cache.lookup, no_cache.store) == (False, True)
    assert decide(chat(), "max-age=0, no-store", "", deterministic_only=True).bypass


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def delta(content: str | None = None, finish: str | None = None, role: str | None = None) -> dict:
    d: dict[str, Any] = {}
    if role:
        d["role"] = role
    if content is not None:
        d["content"] = content
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }


def test_streamed_answer_is_assembled_and_replays_the_same_text_both_ways() -> None:
    raw = sse(delta("", role="assistant"), delta("Hello"), delta(" world"), delta(finish="stop"))
    kept = stored.from_stream(Kind.CHAT, raw)
    assert kept is not None
    answer = orjson.loads(stored.replay_json(kept))
    assert answer["choices"][0]["message"]["content"] == "Hello world"
    assert answer["id"] != "c1"
    replay = stored.replay_sse(kept, include_usage=False).decode()
    assert replay.endswith("data: [DONE]\n\n")
    text = "".join(
        (orjson.loads(line[5:])["choices"][0]["delta"].get("content") or "")
        for line in replay.split("\n")
        if line.startswith("data: {")
    )
    assert text == "Hello world"


def test_incomplete_or_failed_streams_are_never_kept() -> None:
    no_finish = sse(delta("", role="assistant"), delta("Hel"))
    assert stored.from_stream(Kind.CHAT, no_finish) is None
    error = sse(delta("Hi"), {"error": {"message": "boom"}})
    assert stored.from_stream(Kind.CHAT, error) is None
    assert (
        stored.from_body(b'{"choices": [{"index": 0, "message": {}, "finish_reason": null}]}')
        is None
    )
    assert stored.from_body(b"not json") is None


@pytest.mark.parametrize(
    "event",
    [
        {"choices": 3},
        {"choices": [{"index": "a", "delta": {"content": "x"}, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": 1}, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "delta": [], "logprobs": 2, "finish_reason": "stop"}]},
    ],
)
def test_a_malformed_stream_is_not_kept_or_not_replayable_and_never_raises(event: dict) -> None:
    kept = stored.from_stream(Kind.CHAT, sse(event))
    assert kept is None or stored.unreplayable(kept) is not None


def test_long_answers_replay_in_several_chunks_split_at_spaces() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    kept = orjson.dumps(
        {
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": words},
                    "finish_reason": "stop",
                }
            ],
        }
    )
    replay = stored.replay_sse(kept, include_usage=False).decode()
    pieces = [
        orjson.loads(line[5:])["choices"][0]["delta"].get("content") or ""
        for line in replay.split("\n")
        if line.startswith("data: {")
    ]
    assert "".join(pieces) == words
    assert len(pieces) > 5
