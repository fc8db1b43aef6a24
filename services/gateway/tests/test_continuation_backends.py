"""Continuation is a per-backend setting: a backend continues on the chat route
(vLLM's fields, the default), on the completions route with its chat template
rendered by the gateway (llama-cpp-python), or not at all."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from gateway.balance.config import ContinuationConfig
from gateway.balance.discovery import expand, parse_target
from gateway.balance.endpoint import EndpointSpec
from gateway.protocol.calls import Kind
from gateway.proxy.continuation import Partial, plans
from gateway.settings import BackendConfig
from gwkit import FirstTry, MakeBackend, MakeGateway, backend, chat, content, events, metric

CHATML = ContinuationConfig(
    "prompt",
    message="<|im_start|>{role}\n{content}<|im_end|>\n",
    generation="<|im_start|>assistant\n",
    system="You are terse.",
)
PROMPT_SETTING = {
    "mode": "prompt",
    "message": CHATML.message,
    "generation": CHATML.generation,
    "system": CHATML.system,
}


def test_the_setting_takes_a_mode_alone_or_a_template() -> None:
    assert BackendConfig(url="http://a").continuation.config().mode == "chat"
    off = BackendConfig.model_validate({"url": "http://a", "continuation": "off"})
    assert off.continuation.config().mode == "off"
    yaml_off = BackendConfig.model_validate({"url": "http://a", "continuation": False})
    assert yaml_off.continuation.config().mode == "off", "YAML reads a bare off as false"
    full = BackendConfig.model_validate({"url": "http://a", "continuation": PROMPT_SETTING})
    assert full.continuation.config() == CHATML
    with pytest.raises(ValidationError):
        BackendConfig.model_validate({"url": "http://a", "continuation": {"mode": "prompt"}})


def test_every_replica_of_a_dns_backend_continues_as_its_entry_says() -> None:
    target = parse_target("dns+http://llama:8080", ("m",), "llama", CHATML)
    specs = expand(target, ["10.0.0.1", "10.0.0.2"])
    assert [spec.continuation for spec in specs] == [CHATML, CHATML]


def test_the_template_renders_the_conversation_with_its_own_system_message() -> None:
    user = [{"role": "user", "content": "hi"}]
    assert CHATML.render(user) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    own = [{"role": "system", "content": "S"}, *user]
    assert CHATML.render(own).startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user")


def test_plans_ask_each_way_of_continuing_apart_and_never_the_broken_or_an_off_one() -> None:
    partial = Partial("Hello wor", 3, {}, finished=False, tool_call=False)
    specs = [
        EndpointSpec("http://a", ("m",)),  # broke the stream
        EndpointSpec("http://b", ("m",)),
        EndpointSpec("http://c", ("m",), continuation=CHATML),
        EndpointSpec("http://d", ("m",), continuation=CHATML),
        EndpointSpec("http://e", ("m",), continuation=ContinuationConfig("off")),
    ]
    body = orjson.dumps(chat("hi", max_tokens=10, tools=None, temperature=0))
    first, second = plans(Kind.CHAT, body, partial, specs, "http://a")
    assert first.kind is Kind.COMPLETION, "the larger group first"
    assert set(first.exclude) == {"http://a", "http://b", "http://e"}
    asked = orjson.loads(first.body)
    assert asked["prompt"] == CHATML.render([{"role": "user", "content": "hi"}]) + "Hello wor"
    assert asked["max_tokens"] == 7 and asked["temperature"] == 0 and "messages" not in asked
    assert second.kind is Kind.CHAT and set(second.exclude) == {
        "http://a",
        "http://c",
        "http://d",
        "http://e",
    }
    asked = orjson.loads(second.body)
    assert asked["messages"][-1] == {"role": "assistant", "content": "Hello wor"}
    assert asked["continue_final_message"] is True and asked["add_generation_prompt"] is False
    with_tools = orjson.dumps(chat("hi", tools=[{"type": "function", "function": {"name": "f"}}]))
    only_chat = plans(Kind.CHAT, with_tools, partial, specs, "http://a")
    assert [p.kind for p in only_chat] == [Kind.CHAT], "tools cannot be rendered into a prompt"


async def _text(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> str:
    reply = await client.post(url, json={**body, "stream": True})
    assert reply.status_code == 200
    return reply.text


async def test_a_prompt_backend_continues_a_chat_stream_on_the_completions_route(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    breaking = await make_backend(fault="cut:9", inter_token_ms=1, output_tokens=32)
    healthy = await make_backend(inter_token_ms=1, output_tokens=32)
    gw = await make_gateway(
        [backend(breaking), {**backend(healthy), "continuation": PROMPT_SETTING}],
        pool=FirstTry(first=breaking),
    )
    asked = chat("tell me a story")
    direct = httpx.AsyncClient()
    whole = await _text(direct, healthy + Kind.CHAT.route, asked)
    pieces = [orjson.loads(e)["choices"][0]["delta"].get("content", "") for e in events(whole)[:-1]]
    sent = "".join([p for p in pieces if p][:9])  # what the breaking replica sent
    prompt = CHATML.render(asked["messages"]) + sent
    rest = await _text(direct, healthy + Kind.COMPLETION.route, {**asked, "prompt": prompt})

    body = await _text(gw, Kind.CHAT.route, asked)
    assert content(body) == sent + content(rest), "the completions route's own continuation"
    data = events(body)
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]" and '"error"' not in body
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert all("text" not in choice for c in chunks for choice in c["choices"])
    ended = orjson.loads(events(rest)[-2])["choices"][0]["finish_reason"]
    assert ended and chunks[-1]["choices"][0]["finish_reason"] == ended
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_stream_continuations_total", result="continued") == 1


async def test_a_backend_whose_continuation_is_off_is_not_asked(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    breaking = await make_backend(fault="cut:5", inter_token_ms=1, output_tokens=32)
    other = await make_backend(inter_token_ms=1, output_tokens=32)
    gw = await make_gateway(
        [backend(breaking), {**backend(other), "continuation": "off"}],
        pool=FirstTry(first=breaking),
    )
    body = await _text(gw, Kind.CHAT.route, chat("hi"))
    assert '"error"' in body and "[DONE]" not in body
    text = (await gw.get("/metrics")).text
    assert metric(text, "gateway_stream_continuations_total", result="not_continuable") == 1
    assert metric(text, "gateway_upstream_attempts_total", endpoint=other) == 0
