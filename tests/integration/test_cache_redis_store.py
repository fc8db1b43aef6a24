"""The Redis store against a real redis-server: TTL, LRU, the change stream and its resyncs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis

from deploy.local.procs import Proc
from semcache.errors import ResyncNeeded, StoreUnavailable
from semcache.model import Added, Cleared, Entry, NamespaceDropped, Removed
from semcache.redis_store import RedisStore

DIM = 8


def vector(seed: int) -> bytes:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).tobytes()


def entry(i: int, *, ns: str = "ns", key: str | None = None, ttl: float = 60.0,
          with_vector: bool = True) -> Entry:  # fmt: skip
    now = time.time()
    return Entry(
        entry_id=f"e{i}",
        namespace=ns,
        exact_key=f"k{i}" if key is None else key,
        prompt_text=f"question {i}",
        vector=vector(i) if with_vector else b"",
        response=f"answer {i}".encode(),
        created_at=now,
        expires_at=now + ttl,
        upstream_seconds=1.5,
    )


@pytest.fixture
async def stores(redis_url: str) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    """Two replicas' stores on one Redis, as two cache processes would have."""
    a = RedisStore(redis_url, max_entries=5, stream_maxlen=100, block_ms=100)
    b = RedisStore(redis_url, max_entries=5, stream_maxlen=100, block_ms=100)
    yield a, b
    await a.close()
    await b.close()


async def test_entries_round_trip_and_expire_with_their_ttl(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    a, b = stores
    await a.put(entry(1, ttl=1.0))
    await a.put(entry(2, with_vector=False))

    found = await b.get_exact("ns", "k1", time.time())
    assert found is not None and (found.response, found.upstream_seconds) == (b"answer 1", 1.5)
    assert [e.entry_id if e else None for e in await b.get_many(["e1", "e2", "nope"])] == [
        "e1", "e2", None,
    ]  # fmt: skip
    assert [x.entry_id async for batch in b.scan(time.time()) for x in batch] == [
        "e1"
    ]  # vectors only

    async with asyncio.timeout(5):
        while await b.get_exact("ns", "k1", time.time()) is not None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert await b.count(time.time()) == 1
    assert [x async for x in b.scan(time.time())] == []


async def test_replacement_and_eviction_reach_the_other_replica_through_the_stream(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    a, b = stores
    checkpoint = await b.checkpoint()
    for i in range(5):
        await a.put(entry(i))
    await a.get_exact("ns", "k0", time.time())  # e1 is now the least recently used

    replaced = await a.put(entry(10, key="k3"))
    evicted = await a.put(entry(11))

    assert replaced.removed == [Removed("e3", "ns")] and replaced.evicted == 0
    assert evicted.removed == [Removed("e1", "ns")] and evicted.evicted == 1
    changes = []
    while len(changes) < 9:
        batch = await b.read_changes(checkpoint)
        changes += batch.changes
        checkpoint = batch.checkpoint
    assert [type(c).__name__ for c in changes] == ["Added"] * 5 + [
        "Removed", "Added", "Added", "Removed",
    ]  # fmt: skip
    assert changes[5] == Removed("e3", "ns") and changes[8] == Removed("e1", "ns")
    assert isinstance(changes[7], Added) and changes[7].vector == vector(11)


async def test_namespace_drop_and_clear_are_announced(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    a, b = stores
    await a.put(entry(1, ns="x"))
    await a.put(entry(2, ns="y"))
    checkpoint = await b.checkpoint()

    assert await a.drop_namespace("x") == 1
    assert await a.get_exact("x", "k1", time.time()) is None
    assert await a.get_exact("y", "k2", time.time()) is not None
    assert await a.clear() == 1
    assert await a.get_exact("y", "k2", time.time()) is None

    batch = await b.read_changes(checkpoint)
    assert batch.changes == [NamespaceDropped("x"), Cleared()]


async def test_a_replica_that_fell_behind_the_trimmed_stream_must_resync(
    stores: tuple[RedisStore, RedisStore],
) -> None:
    a, b = stores
    checkpoint = await b.checkpoint()
    for i in range(400):  # maxlen 100: most of these changes are trimmed away
        await a.put(entry(i))
    with pytest.raises(ResyncNeeded, match="trimmed"):
        await b.read_changes(checkpoint)


async def test_a_wiped_redis_means_resync(
    stores: tuple[RedisStore, RedisStore], redis_url: str
) -> None:
    a, b = stores
    await a.put(entry(1))
    checkpoint = await b.checkpoint()
    client = aioredis.Redis.from_url(redis_url)
    await client.flushall()
    await client.aclose()
    with pytest.raises(ResyncNeeded, match="wiped"):
        await b.read_changes(checkpoint)
    fresh = await b.checkpoint()
    assert fresh.epoch != checkpoint.epoch
    assert (await b.read_changes(fresh)).changes == []


async def test_a_stopped_redis_is_unavailable_not_a_crash(
    stores: tuple[RedisStore, RedisStore], redis_server: tuple[Proc, int]
) -> None:
    a, _ = stores
    await a.put(entry(1))
    redis_server[0].stop()
    with pytest.raises(StoreUnavailable):
        await a.get_exact("ns", "k1", time.time())
    with pytest.raises(StoreUnavailable):
        await a.put(entry(2))


async def test_a_malformed_stream_message_is_skipped(
    stores: tuple[RedisStore, RedisStore], redis_url: str
) -> None:
    a, b = stores
    checkpoint = await b.checkpoint()
    client = aioredis.Redis.from_url(redis_url)
    await client.xadd("{llmgw-cache}:stream", {"op": "add", "id": "broken"})  # no vector
    await client.aclose()
    await a.put(entry(1))

    batch = await b.read_changes(checkpoint)

    assert [type(c).__name__ for c in batch.changes] == ["Added"]
    assert batch.checkpoint.read == checkpoint.read + 2


async def test_the_stream_is_trimmed_by_age_too_and_a_replica_behind_it_resyncs(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("semcache.redis_store._TRIM_EVERY_S", 0.0)
    a = RedisStore(redis_url, max_entries=10_000, stream_maxlen=100_000, stream_max_age_s=1.0)
    b = RedisStore(redis_url, max_entries=10_000, stream_maxlen=100_000, stream_max_age_s=1.0)
    try:
        checkpoint = await b.checkpoint()
        for i in range(500):  # far under MAXLEN: only age can trim these
            await a.put(entry(i))
        await asyncio.sleep(1.2)
        await a.put(entry(500))  # this write trims what is over a second old
        client = aioredis.from_url(redis_url)
        length = await client.xlen("{llmgw-cache}:stream")
        await client.aclose()
        assert length < 200, f"{length} changes left of 501"
        with pytest.raises(ResyncNeeded, match="trimmed"):
            await b.read_changes(checkpoint)
    finally:
        await a.close()
        await b.close()
