"""Tenancy against a real redis-server: limits shared by replicas, fallback, keys in Redis.

Two ``Limiter`` instances on one Redis stand for two gateway replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from deploy.local.procs import Proc, redis_ready
from gateway.errors import DependencyUnavailable, RateLimited, Unauthorized
from gateway.tenancy import (
    AuthConfig,
    Authenticator,
    Limiter,
    LimitsConfig,
    Permit,
    RedisKeysConfig,
    RedisKeyStore,
    Tenant,
    connect,
    hash_key,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    # Generous timeout: a loaded test machine must not look like a Redis outage.
    redis = connect(redis_url, timeout_s=0.5)
    yield redis
    await redis.aclose()


@pytest.fixture
async def limiters(client: aioredis.Redis) -> AsyncIterator[Callable[..., Limiter]]:
    made: list[Limiter] = []

    def make(clock: Callable[[], float] = time.monotonic, **config: object) -> Limiter:
        config.setdefault("redis_timeout_s", 0.5)
        limiter = Limiter(LimitsConfig(**config), client, clock=clock)  # type: ignore[arg-type]
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


def restart(redis_server: tuple[Proc, int]) -> None:
    proc, port = redis_server
    proc.start()
    proc.wait_until(redis_ready(port), timeout=10)


async def eventually(attempt: Callable[[], Awaitable[Permit]], within_s: float = 5.0) -> Permit:
    """Retry ``attempt`` while it is rate limited (work in background tasks settling)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await attempt()
        except RateLimited:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def test_two_replicas_share_one_tenants_request_budget(
    limiters: Callable[..., Limiter],
) -> None:
    a, b = limiters(), limiters()
    tenant = Tenant("acme", requests_per_s=0.1, burst=3, max_streams=None)
    for _ in range(3):
        (await a.admit(tenant)).release()
    with pytest.raises(RateLimited) as limited:
        await b.admit(tenant)
    assert 5 < limited.value.retry_after <= 10  # one emission interval, less the time taken
    assert b.stats().local_decisions == 0
    await b.admit(Tenant("other", requests_per_s=0.1, burst=1, max_streams=None))


async def test_two_replicas_share_one_tenants_concurrent_streams(
    limiters: Callable[..., Limiter],
) -> None:
    a, b = limiters(), limiters()
    tenant = Tenant("acme", requests_per_s=None, burst=None, max_streams=2)
    first = await a.admit(tenant)
    await b.admit(tenant)
    with pytest.raises(RateLimited, match="concurrent"):
        await b.admit(tenant)
    with pytest.raises(RateLimited):
        await a.admit(tenant)
    first.release()  # the stream on replica a ends: replica b may start one
    await eventually(lambda: b.admit(tenant))


async def test_a_crashed_replicas_streams_free_up_after_the_lease_ttl(
    limiters: Callable[..., Limiter],
) -> None:
    crashed, survivor = limiters(lease_ttl_s=0.3), limiters(lease_ttl_s=0.3)
    tenant = Tenant("acme", requests_per_s=None, burst=None, max_streams=2)
    await crashed.admit(tenant)
    await crashed.admit(tenant)
    await crashed.close()  # stops renewing; its permits are never released
    with pytest.raises(RateLimited):
        await survivor.admit(tenant)
    await eventually(lambda: survivor.admit(tenant))


async def test_a_long_stream_keeps_its_slot_beyond_the_lease_ttl(
    limiters: Callable[..., Limiter],
) -> None:
    holder, other = limiters(lease_ttl_s=0.3), limiters(lease_ttl_s=0.3)
    tenant = Tenant("acme", requests_per_s=None, burst=None, max_streams=1)
    permit = await holder.admit(tenant)
    await asyncio.sleep(1.0)  # several TTLs: only renewals keep the lease
    with pytest.raises(RateLimited):
        await other.admit(tenant)
    permit.release()
    await eventually(lambda: other.admit(tenant))


async def test_concurrent_requests_get_exactly_the_budget_between_them(
    limiters: Callable[..., Limiter], client: aioredis.Redis
) -> None:
    a, b = limiters(), limiters()
    tenant = Tenant("acme", requests_per_s=0.01, burst=10, max_streams=None)
    await client.script_flush()  # the batch reloads its script (NOSCRIPT) and carries on
    outcomes = await asyncio.gather(
        *(lim.admit(tenant) for _ in range(30) for lim in (a, b)), return_exceptions=True
    )
    assert sum(isinstance(o, Permit) for o in outcomes) == 10
    assert sum(isinstance(o, RateLimited) for o in outcomes) == 50
    assert a.stats().local_decisions == b.stats().local_decisions == 0


async def test_a_request_cancelled_while_redis_answers_gives_its_stream_slot_back(
    limiters: Callable[..., Limiter],
) -> None:
    a, b = limiters(), limiters()
    tenant = Tenant("acme", requests_per_s=None, burst=None, max_streams=1)
    task = asyncio.create_task(a.admit(tenant))
    await asyncio.sleep(0)  # the script is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await a.close()  # waits for the batches on their way: Redis has answered
    await b.admit(tenant)  # the slot is free at once, not after the lease TTL


async def commands(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


async def test_a_tenant_without_limits_never_touches_redis(
    limiters: Callable[..., Limiter], client: aioredis.Redis
) -> None:
    limiter = limiters()
    free = Tenant("free", None, None, None)
    before = await commands(client)
    for _ in range(200):
        (await limiter.admit(free)).release()
    assert await commands(client) - before == 1  # the INFO call itself
    (await limiter.admit(Tenant("paid", 100, 100, None))).release()
    assert await commands(client) - before > 2


async def test_redis_going_away_falls_back_to_local_limits_and_recovers(
    limiters: Callable[..., Limiter], redis_server: tuple[Proc, int]
) -> None:
    clock = FakeClock()
    a = limiters(clock, replicas=2, backoff_s=1.0)
    b = limiters()
    tenant = Tenant("acme", requests_per_s=0.01, burst=4, max_streams=None)
    (await a.admit(tenant)).release()

    redis_server[0].stop()
    # Local share: 4 / 2 replicas = 2 at once, and no error about Redis.
    (await a.admit(tenant)).release()
    (await a.admit(tenant)).release()
    with pytest.raises(RateLimited):
        await a.admit(tenant)
    assert not a.stats().redis_healthy
    assert a.stats().local_decisions == 3

    restart(redis_server)  # empty: persistence is off
    for _ in range(10):  # the back-off passes; a probe finds Redis again
        clock.advance(60)
        with contextlib.suppress(RateLimited):
            (await a.admit(tenant)).release()
        if a.stats().redis_healthy:
            break
    assert a.stats().redis_healthy
    for _ in range(3):  # the shared bucket again: 4 in total across a and b
        (await a.admit(tenant)).release()
    with pytest.raises(RateLimited):
        await b.admit(tenant)


async def test_a_redis_that_hangs_costs_one_timeout_then_decisions_are_local(
    limiters: Callable[..., Limiter], redis_server: tuple[Proc, int]
) -> None:
    clock = FakeClock()
    limiter = limiters(clock, redis_timeout_s=0.05)
    tenant = Tenant("acme", requests_per_s=100, burst=100, max_streams=10)
    (await limiter.admit(tenant)).release()
    redis_server[0].signal(signal.SIGSTOP)
    try:
        permits = [await limiter.admit(tenant) for _ in range(10)]
        with pytest.raises(RateLimited, match="concurrent"):
            await limiter.admit(tenant)
        for permit in permits:
            permit.release()
        stats = limiter.stats()
        assert not stats.redis_healthy
        assert stats.redis_errors == 1  # later requests did not wait for Redis
    finally:
        redis_server[0].signal(signal.SIGCONT)


TENANT_JSON = '{"requests_per_s": 5, "burst": 10, "max_streams": 2}'


@pytest.fixture
async def keys(client: aioredis.Redis) -> Callable[[FakeClock], Authenticator]:
    await client.hset("llmgw:tenants", mapping={"acme": TENANT_JSON, "broken": "{"})
    await client.hset(
        "llmgw:api_keys",
        mapping={
            hash_key("sk-acme"): "acme",
            hash_key("sk-orphan"): "nobody",
            hash_key("sk-broken"): "broken",
        },
    )

    def make(clock: FakeClock) -> Authenticator:
        store = RedisKeyStore(client, RedisKeysConfig(cache_s=5, timeout_s=0.5), clock=clock)
        return Authenticator(AuthConfig(enabled=True), store)

    return make


async def test_keys_in_redis_authenticate_as_their_tenant(
    keys: Callable[[FakeClock], Authenticator],
) -> None:
    auth = keys(FakeClock())
    assert await auth.authenticate("Bearer sk-acme") == Tenant("acme", 5, 10, 2)
    for wrong in ("sk-unknown", "sk-orphan", "sk-broken"):
        with pytest.raises(Unauthorized):
            await auth.authenticate(f"Bearer {wrong}")


async def test_a_revoked_key_stops_working_once_the_cache_expires(
    keys: Callable[[FakeClock], Authenticator], client: aioredis.Redis
) -> None:
    clock = FakeClock()
    auth = keys(clock)
    await auth.authenticate("Bearer sk-acme")
    await client.hdel("llmgw:api_keys", hash_key("sk-acme"))
    await client.hset("llmgw:api_keys", hash_key("sk-new"), "acme")
    clock.advance(4)
    await auth.authenticate("Bearer sk-acme")  # still cached
    assert (await auth.authenticate("Bearer sk-new")).name == "acme"  # new keys work at once
    clock.advance(2)
    with pytest.raises(Unauthorized):
        await auth.authenticate("Bearer sk-acme")


async def test_with_redis_down_known_keys_keep_working_and_others_are_refused(
    keys: Callable[[FakeClock], Authenticator],
    client: aioredis.Redis,
    redis_server: tuple[Proc, int],
) -> None:
    clock = FakeClock()
    auth = keys(clock)
    await auth.authenticate("Bearer sk-acme")
    redis_server[0].stop()
    clock.advance(3600)
    assert (await auth.authenticate("Bearer sk-acme")).name == "acme"
    with pytest.raises(DependencyUnavailable) as refused:
        await auth.authenticate("Bearer sk-unknown")
    assert refused.value.status == 503
    assert refused.value.headers() == {"retry-after": "1", "retry-after-ms": "1000"}
    restart(redis_server)  # empty: persistence is off
    await client.hset("llmgw:tenants", "acme", TENANT_JSON)
    await client.hset("llmgw:api_keys", hash_key("sk-new"), "acme")
    for _ in range(10):  # the back-off passes; a probe finds Redis again
        clock.advance(60)
        try:
            assert (await auth.authenticate("Bearer sk-new")).name == "acme"
            break
        except DependencyUnavailable:
            continue
    else:
        pytest.fail("the key store did not go back to Redis")
    with pytest.raises(Unauthorized):
        await auth.authenticate("Bearer sk-unknown")
