"""Response pins: remembered locally, shared through Redis, and harmless when Redis is away.

The real Redis is in tests/integration/test_model_routes_live.py (two gateway
processes); here a stand-in with Redis's ``get``/``set`` shows the rules.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.api.pins import TTL_S, Pins
from gateway.protocol.responses import created_id


class FakeRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.expiry: dict[str, int] = {}
        self.down = False
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("refused")
        return self.data.get(key)

    async def set(self, key: str, value: str, ex: int) -> bool:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("refused")
        self.data[key], self.expiry[key] = value.encode(), ex
        return True


def pins(redis: Any, **kwargs: Any) -> Pins:
    return Pins(redis=redis, backoff_s=60.0, backoff_max_s=60.0, **kwargs)


async def test_a_pin_made_by_one_gateway_is_found_by_another() -> None:
    redis = FakeRedis()
    one, two = pins(redis), pins(redis)
    one.add("resp_1", "http://a:8000", "llama")
    await one.close()
    assert redis.expiry["llmgw:pin:resp_1"] == TTL_S
    assert await two.get("resp_1") == ("http://a:8000", "llama")
    calls = redis.calls
    assert await two.get("resp_1") == ("http://a:8000", "llama")  # now known locally
    assert redis.calls == calls
    assert await two.get("resp_unknown") is None


async def test_without_redis_pins_are_local_and_bounded() -> None:
    local = Pins(size=2)
    for i in range(3):
        local.add(f"resp_{i}", f"http://e{i}", "m")
    assert await local.get("resp_0") is None  # the least recently used went first
    assert await local.get("resp_2") == ("http://e2", "m")
    assert len(local) == 2


async def test_a_redis_that_is_away_means_not_known_and_is_asked_once_per_backoff() -> None:
    redis = FakeRedis()
    redis.down = True
    gw = pins(redis)
    gw.add("resp_1", "http://a", "m")  # the write fails in the background, quietly
    await gw.close()
    assert await gw.get("resp_1") == ("http://a", "m")  # local still answers
    assert await gw.get("resp_2") is None
    assert await gw.get("resp_3") is None
    assert redis.calls == 1  # backed off after the failed write: not asked per request


async def test_a_malformed_value_is_not_a_pin() -> None:
    redis = FakeRedis()
    redis.data["llmgw:pin:resp_1"] = b"no-tab-here"
    assert await pins(redis).get("resp_1") is None


async def test_a_slow_redis_is_given_up_on_within_the_timeout() -> None:
    class Slow(FakeRedis):
        async def get(self, key: str) -> bytes | None:
            await asyncio.sleep(5)
            return None

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await pins(Slow(), timeout_s=0.05).get("resp_1") is None
    assert loop.time() - started < 1.0


def test_a_streams_id_is_read_from_its_first_bytes() -> None:
    created = b'{"type":"response.created","sequence_number":0,"response":{"id":"resp_9"}}'
    first = b"event: response.created\ndata: " + created + b"\n\n"
    assert created_id(first + b"event: response.in_progress\ndata: {}\n\n") == "resp_9"
    assert created_id(first[:40]) == ""  # split: found later by the stream's watcher
    assert created_id(b"data: {not json response.created\n\n") == ""
