"""The prefix cache in the served mock: a cached prefix makes the first token sooner."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import MockApi

MakeMock = Callable[..., Awaitable["MockApi"]]
CHAT = "/v1/chat/completions"
SYSTEM = "You are a careful assistant. " * 300  # about 2,200 tokens


def _chat(mock: MockApi, question: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": mock.model, "messages": messages, "stream": True, "max_tokens": 2}


async def _ttft(mock: MockApi, body: dict[str, Any]) -> float:
    start = time.perf_counter()
    resp = await mock.post(CHAT, body)
    assert resp.status == 200
    await resp.content.readuntil(b"\n\n")
    elapsed = time.perf_counter() - start
    await resp.read()
    return elapsed


async def test_a_cached_prefix_is_prefilled_only_past_the_hit(make_mock: MakeMock) -> None:
    mock = await make_mock(prefix_cache_blocks=1000, prefill_ms_per_token=0.2)
    cold = await _ttft(mock, _chat(mock, "first question"))
    warm = await _ttft(mock, _chat(mock, "second question"))
    assert cold > 0.4  # 2,200 uncached tokens at 0.2 ms each: a lower bound, never flaky
    assert warm < cold
    samples = await mock.metrics()
    label = (("model_name", mock.model),)
    queries = samples[("vllm:prefix_cache_queries_total", label)]
    hits = samples[("vllm:prefix_cache_hits_total", label)]
    assert 0.4 < hits / queries < 0.5  # the second prompt hit almost all of its tokens
    assert samples[("vllm:kv_cache_usage_perc", label)] == 0.0  # nothing running


async def test_without_the_settings_the_prompt_costs_nothing_and_no_counters(
    make_mock: MakeMock,
) -> None:
    mock = await make_mock()
    await _ttft(mock, _chat(mock, "a question"))
    names = {name for name, _ in await mock.metrics()}
    assert "vllm:prefix_cache_hits_total" not in names
