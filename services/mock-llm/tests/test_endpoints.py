"""Every endpoint answers in vLLM's / OpenAI's shape; output is deterministic."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import MockApi

MakeMock = Callable[..., Awaitable["MockApi"]]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


async def test_models_lists_the_configured_models(make_mock: MakeMock) -> None:
    mock = await make_mock(models="a,b")
    body = await (await mock.client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a", "b"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])


async def test_health_is_ok(mock: MockApi) -> None:
    assert (await mock.client.get("/health")).status == 200


async def test_chat_non_streamed_has_message_and_usage(mock: MockApi) -> None:
    resp = await mock.post(CHAT, mock.chat_body(max_tokens=5))
    assert resp.status == 200
    body = await resp.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == mock.model
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 5
    assert choice["finish_reason"] == "length"  # max_tokens (5) < output_tokens (32)
    usage = body["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["prompt_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


async def test_output_tokens_setting_ends_with_stop(make_mock: MakeMock) -> None:
    mock = await make_mock(output_tokens=4)
    body = await (await mock.post(CHAT, mock.chat_body(max_tokens=100))).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 4


async def test_completion_non_streamed(mock: MockApi) -> None:
    body = await (await mock.post(COMPLETIONS, mock.completion_body(max_tokens=3))).json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert len(choice["text"].split()) == 3
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_token_id_prompt_counts_its_ids(mock: MockApi) -> None:
    body = await (await mock.post(COMPLETIONS, mock.completion_body(prompt=[1, 2, 3, 4]))).json()
    assert body["usage"]["prompt_tokens"] == 4


async def test_chat_stream_matches_vllm_chunks(mock: MockApi) -> None:
    chunks = await mock.stream(CHAT, mock.chat_body(max_tokens=4))
    assert chunks[-1] == "[DONE]"
    data = chunks[:-1]
    assert len(data) == 1 + 4  # role chunk, then one chunk per token
    assert len({c["id"] for c in data}) == 1 and data[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == mock.model for c in data)
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in data[1:])
    assert [c["choices"][0]["finish_reason"] for c in data] == [None] * 4 + ["length"]
    assert all("usage" not in c for c in data)
    text = "".join(c["choices"][0]["delta"]["content"] for c in data)
    full = await (await mock.post(CHAT, mock.chat_body(max_tokens=4))).json()
    assert text == full["choices"][0]["message"]["content"]


async def test_include_usage_adds_a_final_usage_chunk(mock: MockApi) -> None:
    body = mock.chat_body(max_tokens=3, stream_options={"include_usage": True})
    chunks = await mock.stream(CHAT, body)
    usage_chunk = chunks[-2]
    assert chunks[-1] == "[DONE]"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 3
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 3
    assert chunks[-3]["choices"][0]["finish_reason"] == "length"


async def test_completion_stream_has_one_chunk_per_token(mock: MockApi) -> None:
    chunks = await mock.stream(
        COMPLETIONS, mock.completion_body(stream_options={"include_usage": True})
    )
    texts = [c["choices"][0]["text"] for c in chunks[:-2]]
    assert len(texts) == 32
    assert chunks[-3]["object"] == "text_completion"
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["usage"]["completion_tokens"] == 32


async def test_same_request_gives_the_same_tokens(make_mock: MakeMock) -> None:
    mock = await make_mock(models="m1,m2")

    async def content(model: str, prompt: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        reply = await (await mock.post(CHAT, body)).json()
        return str(reply["choices"][0]["message"]["content"])

    first = await content("m1", "what is a mock?")
    assert await content("m1", "what is a mock?") == first
    assert await content("m1", "what is a fake?") != first
    assert await content("m2", "what is a mock?") != first
    # and a second app instance agrees: nothing depends on process state
    other = await make_mock(models="m1")
    reply = await (
        await other.post(
            CHAT, {"model": "m1", "messages": [{"role": "user", "content": "what is a mock?"}]}
        )
    ).json()
    assert reply["choices"][0]["message"]["content"] == first


async def test_mock_tokens_header_sets_the_length(mock: MockApi) -> None:
    chunks = await mock.stream(COMPLETIONS, mock.completion_body(), {"X-Mock-Tokens": "3"})
    assert len(chunks) == 3 + 1
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_timing_headers_delay_the_tokens(mock: MockApi) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    headers = {"X-Mock-TTFT-Ms": "150", "X-Mock-Inter-Token-Ms": "30", "X-Mock-Tokens": "4"}
    resp = await mock.post(COMPLETIONS, mock.completion_body(stream=True), headers)
    first = await resp.content.readuntil(b"\n\n")
    first_at = loop.time() - start
    await resp.read()
    total = loop.time() - start
    assert b'"text"' in first
    # asyncio timers may fire up to a clock tick early: allow 1 ms per wait.
    assert first_at >= 0.15 - 0.001
    assert total - first_at >= 3 * (0.03 - 0.001)  # three gaps after the first token


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        (CHAT, b"{not json", "not valid JSON"),
        (CHAT, {"model": "mock-llama-3-8b"}, "messages"),
        (CHAT, {"model": "mock-llama-3-8b", "messages": []}, "messages"),
        (CHAT, {"model": "mock-llama-3-8b", "messages": "hi"}, "messages"),
        (COMPLETIONS, {"model": "mock-llama-3-8b", "prompt": 3}, "prompt"),
        (COMPLETIONS, {"model": "mock-llama-3-8b", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        (COMPLETIONS, {"model": "mock-llama-3-8b", "prompt": "x", "n": 2}, "n"),
        (COMPLETIONS, [1, 2], "body"),
    ],
)
async def test_bad_requests_get_a_400_error_object(
    mock: MockApi, path: str, body: Any, fragment: str
) -> None:
    resp = await mock.post(path, body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert fragment in error["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Mock-Tokens": "many"},
        {"X-Mock-Tokens": "0"},
        {"X-Mock-TTFT-Ms": "-1"},
        {"X-Mock-Inter-Token-Ms": "nan"},
        {"X-Mock-Fault": "explode"},
    ],
)
async def test_bad_mock_headers_get_a_400(mock: MockApi, headers: dict[str, str]) -> None:
    resp = await mock.post(CHAT, mock.chat_body(), headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == 400


async def test_unknown_model_is_a_404_error_object(mock: MockApi) -> None:
    resp = await mock.post(CHAT, {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["type"] == "NotFoundError" and error["code"] == 404
    assert "gpt-9" in error["message"]


async def test_unknown_route_is_an_error_object_too(mock: MockApi) -> None:
    resp = await mock.client.get("/v1/nothing")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == 404


async def test_metrics_use_vllm_names_and_count_requests(mock: MockApi) -> None:
    await mock.post(CHAT, mock.chat_body())
    await mock.post(CHAT, {"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    samples = await mock.metrics()
    label = (("model_name", mock.model),)
    assert samples[("vllm:num_requests_running", label)] == 0
    assert samples[("vllm:num_requests_waiting", label)] == 0
    assert samples[("vllm:kv_cache_usage_perc", label)] == 0
    ok = ("mockllm_requests_total", (("endpoint", CHAT), ("status", "200")))
    missing = ("mockllm_requests_total", (("endpoint", CHAT), ("status", "404")))
    assert samples[ok] == 1 and samples[missing] == 1
    success = ("vllm:request_success_total", (("finished_reason", "stop"), *label))
    assert samples[success] == 1
