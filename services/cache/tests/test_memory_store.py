"""The embedded store behaves like the Redis one: TTL, exact-key replacement, LRU, snapshot."""

from __future__ import annotations

from pathlib import Path

from cachekit import FakeClock, unit

from semcache.memory_store import MemoryStore
from semcache.model import Entry, Removed


def entry(i: int, clock: FakeClock, *, ns: str = "ns", key: str = "", ttl: float = 60) -> Entry:
    return Entry(
        entry_id=f"e{i}",
        namespace=ns,
        exact_key=key or f"k{i}",
        prompt_text=f"question {i}",
        vector=unit(i).tobytes(),
        response=f"answer {i}".encode(),
        created_at=clock(),
        expires_at=clock() + ttl,
        upstream_seconds=0.5,
    )


async def test_entries_expire_with_their_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=10, clock=clock)
    await store.put(entry(1, clock, ttl=5))

    assert (await store.get_exact("ns", "k1", clock())) is not None
    clock.advance(6)
    assert await store.get_exact("ns", "k1", clock()) is None
    assert await store.get_many(["e1"]) == [None]
    assert await store.count(clock()) == 0


async def test_storing_the_same_exact_key_replaces_the_old_entry() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=10, clock=clock)
    await store.put(entry(1, clock, key="same"))

    result = await store.put(entry(2, clock, key="same"))

    assert result.removed == [Removed("e1", "ns")]
    found = await store.get_exact("ns", "same", clock())
    assert found is not None and found.entry_id == "e2"


async def test_the_least_recently_used_entry_is_evicted_first() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=3, clock=clock)
    for i in range(3):
        await store.put(entry(i, clock))
    await store.get_exact("ns", "k0", clock())  # e0 used: e1 is now the oldest
    await store.touch(["e2"], clock())

    result = await store.put(entry(3, clock))

    assert result.evicted == 1 and result.removed == [Removed("e1", "ns")]
    assert [e is not None for e in await store.get_many(["e0", "e1", "e2", "e3"])] == [
        True, False, True, True,
    ]  # fmt: skip


async def test_dropping_a_namespace_leaves_the_others() -> None:
    clock = FakeClock()
    store = MemoryStore(max_entries=10, clock=clock)
    await store.put(entry(1, clock, ns="a"))
    await store.put(entry(2, clock, ns="a"))
    await store.put(entry(3, clock, ns="b"))

    assert await store.drop_namespace("a") == 2
    assert await store.get_exact("a", "k1", clock()) is None
    assert await store.get_exact("b", "k3", clock()) is not None


async def test_a_snapshot_brings_entries_and_their_lru_order_back(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "cache.sqlite"
    store = MemoryStore(max_entries=3, snapshot_path=str(path), clock=clock)
    await store.open()
    await store.put(entry(1, clock))
    await store.put(entry(2, clock))
    await store.put(entry(3, clock, ttl=1))
    await store.get_exact("ns", "k1", clock())  # e2 is now the least recently used
    clock.advance(2)  # e3 expires before the snapshot
    await store.close()

    again = MemoryStore(max_entries=2, snapshot_path=str(path), clock=clock)
    await again.open()

    e1 = await again.get_exact("ns", "k1", clock())
    assert e1 is not None and e1.response == b"answer 1" and e1.vector == unit(1).tobytes()
    assert await again.count(clock()) == 2
    scanned = [a async for batch in again.scan(clock()) for a in batch]
    assert {a.entry_id for a in scanned} == {"e1", "e2"}
    await again.put(entry(4, clock))  # full: the oldest by use (e2) goes
    found = await again.get_many(["e1", "e2", "e4"])
    assert [e is not None for e in found] == [True, False, True]
