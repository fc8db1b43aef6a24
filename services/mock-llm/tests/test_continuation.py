"""Continuing a partial answer: the rest of the same answer, as vLLM would give it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from mockllm.continuation import completion_continuation
from mockllm.tokens import generate_tokens

if TYPE_CHECKING:
    from conftest import MockApi

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def text_of(body: dict) -> str:
    choice = body["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


@pytest.mark.parametrize("sent", [0, 1, 7, 31])
async def test_a_chat_answer_continued_from_any_token_is_the_same_answer(
    mock: MockApi, sent: int
) -> None:
    messages = [{"role": "user", "content": "tell me about rivers"}]
    whole = text_of(await (await mock.post(CHAT, mock.chat_body(messages=messages))).json())
    tokens = generate_tokens(mock.model, "user\x1ftell me about rivers", 32)
    partial = "".join(tokens[:sent])
    assert whole.startswith(partial)
    body = mock.chat_body(
        messages=[*messages, {"role": "assistant", "content": partial}],
        continue_final_message=True,
        add_generation_prompt=False,
    )
    reply = await (await mock.post(CHAT, body)).json()
    assert partial + text_of(reply) == whole
    assert reply["usage"]["completion_tokens"] == 32 - sent
    assert reply["choices"][0]["finish_reason"] == "stop"


async def test_a_whole_answer_continued_only_ends(mock: MockApi) -> None:
    messages = [{"role": "user", "content": "hi"}]
    whole = text_of(await (await mock.post(CHAT, mock.chat_body(messages=messages))).json())
    body = mock.chat_body(
        messages=[*messages, {"role": "assistant", "content": whole}], continue_final_message=True
    )
    reply = await (await mock.post(CHAT, body)).json()
    assert text_of(reply) == "" and reply["choices"][0]["finish_reason"] == "stop"


async def test_max_tokens_counts_from_where_the_answer_stands(mock: MockApi) -> None:
    messages = [{"role": "user", "content": "hi"}]
    tokens = generate_tokens(mock.model, "user\x1fhi", 32)
    body = mock.chat_body(
        messages=[*messages, {"role": "assistant", "content": "".join(tokens[:10])}],
        continue_final_message=True,
        max_tokens=5,
    )
    reply = await (await mock.post(CHAT, body)).json()
    assert text_of(reply) == "".join(tokens[10:15])
    assert reply["choices"][0]["finish_reason"] == "length"


async def test_text_that_is_not_its_own_is_continued_with_fresh_tokens(mock: MockApi) -> None:
    body = mock.chat_body(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Something else entirely"},
        ],
        continue_final_message=True,
    )
    reply = await (await mock.post(CHAT, body)).json()
    assert reply["usage"]["completion_tokens"] == 32


@pytest.mark.parametrize("sent", [1, 12, 31])
async def test_a_completion_continued_from_prompt_plus_text_is_the_same_answer(
    mock: MockApi, sent: int
) -> None:
    prompt = "Once upon a time"
    whole = text_of(
        await (await mock.post(COMPLETIONS, mock.completion_body(prompt=prompt))).json()
    )
    partial = "".join(generate_tokens(mock.model, prompt, 32)[:sent])
    reply = await (
        await mock.post(COMPLETIONS, mock.completion_body(prompt=prompt + partial))
    ).json()
    assert partial + text_of(reply) == whole


def test_an_ordinary_prompt_is_not_taken_for_a_continuation() -> None:
    assert completion_continuation("m", "What is the capital of France?", 32) is None
    assert completion_continuation("m", "the river", 32) is None  # its words, not its answer
