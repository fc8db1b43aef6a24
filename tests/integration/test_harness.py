"""The harness itself: a real redis-server, mock-llm and gateway start, answer and stop."""

import time
from pathlib import Path

import httpx
import pytest
import redis

from deploy.local.harness import Stack, chat_body, wait_for
from deploy.local.procs import Proc, http_ok


def test_redis_fixture_serves_and_stops(redis_server: tuple[Proc, int], redis_url: str) -> None:
    proc, _ = redis_server
    client = redis.Redis.from_url(redis_url)
    client.set("k", b"v")
    assert client.get("k") == b"v"
    client.close()
    assert proc.stop() is not None
    assert not proc.alive()


def test_a_stack_starts_what_it_is_asked_and_stops_exactly_that(log_dir: Path) -> None:
    with Stack(log_dir) as stack:
        mock_proc, mock = stack.mock(output_tokens=3, ttft_ms=1, inter_token_ms=0)
        other, _ = stack.mock()
        gw_proc, gw = stack.gateway([mock])
        assert stack.procs == [mock_proc, other, gw_proc]
        assert [p.name for p in stack.procs][1].startswith("mock-")  # two "mock": unique names
        reply = httpx.post(f"{gw}/v1/chat/completions", json=chat_body("hi"), timeout=10)
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"]
    assert not any(p.alive() for p in (mock_proc, other, gw_proc))
    assert not http_ok(f"{gw}/healthz")


def test_a_process_that_dies_at_start_is_reported_and_still_stopped(log_dir: Path) -> None:
    stack = Stack(log_dir)
    with pytest.raises(RuntimeError, match="exited early"):
        stack.mock(port=-1)  # not a port: the mock exits with a settings error
    (proc,) = stack.procs
    stack.stop()
    assert not proc.alive()


def test_wait_for_returns_when_it_held_and_names_what_it_missed() -> None:
    before = time.monotonic()
    assert wait_for(lambda: True, "nothing") >= before
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_for(lambda: False, "the impossible", timeout=0.2)
