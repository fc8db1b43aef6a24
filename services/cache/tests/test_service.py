"""The cache service over gRPC, in-process on the embedded store: what a caller sees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
import pytest
from cachekit import DIM, FakeVerifier, near, settings, unit
from conftest import wait_ready
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from llmgw.cache.v1 import cache_pb2 as pb
from llmgw.cache.v1 import cache_pb2_grpc
from semcache.memory_store import MemoryStore
from semcache.model import Added
from semcache.server import CacheServer, create_server

Stub = cache_pb2_grpc.CacheServiceStub


def store_req(ns: str, v: np.ndarray | None, *, key: str = "", prompt: str = "q", **kw: object):  # type: ignore[no-untyped-def]
    return pb.StoreRequest(
        namespace=ns,
        exact_key=key,
        prompt_text=prompt,
        vector=[] if v is None else v.tolist(),
        response=kw.pop("response", b"cached answer"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


async def semantic(stub: Stub, ns: str, v: np.ndarray, **kw: object) -> pb.LookupResponse:
    return await stub.Lookup(pb.LookupRequest(namespace=ns, vector=v.tolist(), **kw))  # type: ignore[arg-type]


async def test_an_exact_hit_returns_the_stored_response(stub: Stub) -> None:
    stored = await stub.Store(store_req("ns", None, key="k1", upstream_seconds=2.5))

    found = await stub.Lookup(pb.LookupRequest(namespace="ns", exact_key="k1"))

    assert found.kind == pb.HIT_KIND_EXACT
    assert (found.entry_id, found.response, found.similarity) == (
        stored.entry_id,
        b"cached answer",
        1.0,
    )
    assert 0 <= found.age_seconds < 5 and found.upstream_seconds == 2.5
    missing = await stub.Lookup(pb.LookupRequest(namespace="ns", exact_key="k2"))
    assert missing.kind == pb.HIT_KIND_MISS and not missing.response


async def test_a_near_vector_is_a_semantic_hit_and_a_far_one_a_miss(stub: Stub) -> None:
    v = unit(1)
    stored = await stub.Store(store_req("ns", v, key="k1"))

    hit = await semantic(stub, "ns", near(v, 0.95), prompt_text="q")
    far = await semantic(stub, "ns", near(v, 0.5))

    assert hit.kind == pb.HIT_KIND_SEMANTIC and hit.entry_id == stored.entry_id
    assert hit.similarity == pytest.approx(0.95, abs=1e-4)
    assert hit.response == b"cached answer" and hit.verification_reason == "ok"
    assert far.kind == pb.HIT_KIND_MISS and not far.rejected_by_verification


async def test_nothing_crosses_a_namespace_whatever_the_similarity(stub: Stub) -> None:
    v = unit(1)
    await stub.Store(store_req("tenant-a", v, key="same-key"))

    by_vector = await semantic(stub, "tenant-b", v)
    by_key = await stub.Lookup(pb.LookupRequest(namespace="tenant-b", exact_key="same-key"))

    assert by_vector.kind == pb.HIT_KIND_MISS and by_key.kind == pb.HIT_KIND_MISS
    assert (await semantic(stub, "tenant-a", v)).kind == pb.HIT_KIND_SEMANTIC


async def test_the_most_similar_candidate_that_passes_verification_wins(stub: Stub) -> None:
    v = unit(1)
    await stub.Store(store_req("ns", near(v, 0.99), prompt="REJECT me", response=b"wrong"))
    await stub.Store(store_req("ns", near(v, 0.9, seed=5), prompt="fine", response=b"right"))

    found = await semantic(stub, "ns", v)

    assert found.kind == pb.HIT_KIND_SEMANTIC and found.response == b"right"
    assert found.similarity == pytest.approx(0.9, abs=1e-3)


async def test_a_candidate_refused_by_verification_is_reported_as_such(stub: Stub) -> None:
    v = unit(1)
    await stub.Store(store_req("ns", v, prompt="REJECT me"))

    found = await semantic(stub, "ns", v)

    assert found.kind == pb.HIT_KIND_MISS and not found.response
    assert found.rejected_by_verification and found.verification_reason == "fake_rejection"


async def test_a_request_can_raise_the_similarity_floor_but_not_lower_it(stub: Stub) -> None:
    v = unit(1)
    await stub.Store(store_req("ns", v))
    query = near(v, 0.9)

    assert (await semantic(stub, "ns", query, min_similarity=0.95)).kind == pb.HIT_KIND_MISS
    lowered = await semantic(stub, "ns", near(v, 0.7), min_similarity=0.5)
    assert lowered.kind == pb.HIT_KIND_MISS  # calibrated floor (0.8) still applies
    assert (await semantic(stub, "ns", query)).kind == pb.HIT_KIND_SEMANTIC


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.LookupRequest(namespace="ns", vector=[1.0, 2.0]), "vector has 2 dimensions"),
        (pb.LookupRequest(namespace="", exact_key="k"), "namespace is required"),
        (pb.LookupRequest(namespace="ns"), "needs an exact_key, a vector"),
        (pb.LookupRequest(namespace="ns", vector=[0.0] * DIM), "zero or non-finite norm"),
        (pb.LookupRequest(namespace="n" * 2000, exact_key="k"), "namespace is 2000 bytes"),
    ],
)
async def test_bad_lookups_are_invalid_arguments_with_a_clear_message(
    stub: Stub, request_: pb.LookupRequest, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Lookup(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_bad_stores_are_invalid_arguments(stub: Stub) -> None:
    too_big = store_req("ns", None, key="k", response=b"x" * ((1 << 20) + 1))
    cases = [
        (too_big, "response is 1048577 bytes, the limit is 1048576"),
        (store_req("ns", unit(1, dim=DIM + 1), key="k"), f"this cache expects {DIM}"),
        (store_req("ns", None), "needs an exact_key, a vector"),
        (store_req("ns", None, key="k", response=b""), "response is empty"),
        (store_req("", None, key="k"), "namespace is required"),
    ]
    for request_, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Store(request_)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (caught.value.details() or "")
    assert (await stub.Stats(pb.StatsRequest())).entries == 0


async def test_invalidation_by_entry_exact_key_namespace_and_all(stub: Stub) -> None:
    e1 = await stub.Store(store_req("a", unit(1), key="k1"))
    await stub.Store(store_req("a", unit(2), key="k2"))
    await stub.Store(store_req("b", unit(3), key="k3"))
    await stub.Store(store_req("c", unit(4), key="k4"))

    async def removed(**target: object) -> int:
        return (await stub.Invalidate(pb.InvalidateRequest(**target))).removed  # type: ignore[arg-type]

    assert await removed(entry_id=e1.entry_id) == 1
    assert (await semantic(stub, "a", unit(1))).kind == pb.HIT_KIND_MISS
    assert await removed(exact=pb.ExactKey(namespace="a", exact_key="k2")) == 1
    assert (await semantic(stub, "a", unit(2))).kind == pb.HIT_KIND_MISS
    assert await removed(namespace="b") == 1
    assert (
        await stub.Lookup(pb.LookupRequest(namespace="b", exact_key="k3"))
    ).kind == pb.HIT_KIND_MISS
    assert (await semantic(stub, "c", unit(4))).kind == pb.HIT_KIND_SEMANTIC
    assert await removed(all=True) == 1
    assert (await semantic(stub, "c", unit(4))).kind == pb.HIT_KIND_MISS
    assert (await stub.Stats(pb.StatsRequest())).entries == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Invalidate(pb.InvalidateRequest(exact=pb.ExactKey(namespace="c")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_expired_entries_stop_hitting(stub: Stub) -> None:
    v = unit(1)
    await stub.Store(store_req("ns", v, key="k", ttl_seconds=1))
    assert (await semantic(stub, "ns", v)).kind == pb.HIT_KIND_SEMANTIC

    async with asyncio.timeout(5):
        while (await semantic(stub, "ns", v)).kind != pb.HIT_KIND_MISS:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert (
        await stub.Lookup(pb.LookupRequest(namespace="ns", exact_key="k"))
    ).kind == pb.HIT_KIND_MISS


@pytest.fixture
async def small(make_server: Callable[..., CacheServer]) -> AsyncIterator[tuple[CacheServer, Stub]]:
    srv = make_server(max_entries=2, ivf_min_vectors=256, sweep_interval_s=0.05)
    await srv.start()
    await wait_ready(srv)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield srv, cache_pb2_grpc.CacheServiceStub(channel)
    await srv.stop()


async def test_the_least_recently_used_entry_is_evicted_past_the_maximum(
    small: tuple[CacheServer, Stub],
) -> None:
    _, stub = small
    await stub.Store(store_req("ns", unit(1), key="k1"))
    await stub.Store(store_req("ns", unit(2), key="k2"))
    await stub.Lookup(pb.LookupRequest(namespace="ns", exact_key="k1"))  # k2 is now the oldest

    third = await stub.Store(store_req("ns", unit(3), key="k3"))

    assert third.evicted == 1
    assert (await semantic(stub, "ns", unit(2))).kind == pb.HIT_KIND_MISS
    assert (await semantic(stub, "ns", unit(1))).kind == pb.HIT_KIND_SEMANTIC
    assert (await stub.Stats(pb.StatsRequest())).entries == 2


async def test_a_growing_namespace_moves_to_ivf_in_the_background(
    make_server: Callable[..., CacheServer],
) -> None:
    srv = make_server(ivf_min_vectors=256, sweep_interval_s=0.05)
    await srv.start()
    await wait_ready(srv)
    vectors = [unit(i) for i in range(400)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for i, v in enumerate(vectors):
                await stub.Store(store_req("big", v, key=f"k{i}", response=f"r{i}".encode()))
            async with asyncio.timeout(20):
                while (await stub.Stats(pb.StatsRequest())).index_type != "ivf":  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            stats = await stub.Stats(pb.StatsRequest())
            assert (stats.index_size, stats.namespaces) == (400, 1)
            hits = [
                (await semantic(stub, "big", near(vectors[i], 0.98, seed=i))).response
                for i in range(0, 400, 40)
            ]
            assert hits == [f"r{i}".encode() for i in range(0, 400, 40)]
    finally:
        await srv.stop()


async def test_lookups_are_counted_by_outcome(server: CacheServer, stub: Stub) -> None:
    v = unit(1)
    await stub.Store(store_req("ns", v, key="k"))
    await stub.Store(store_req("ns", unit(2), prompt="REJECT"))
    await stub.Lookup(pb.LookupRequest(namespace="ns", exact_key="k"))
    await semantic(stub, "ns", near(v, 0.95))
    await semantic(stub, "ns", unit(2))
    await semantic(stub, "ns", unit(3))

    counter = server.cache.metrics.lookups
    counts = {
        o: counter.labels(o)._value.get()
        for o in ("exact_hit", "semantic_hit", "rejected_by_verification", "miss")
    }
    assert counts == {"exact_hit": 1, "semantic_hit": 1, "rejected_by_verification": 1, "miss": 1}


class GatedStore(MemoryStore):
    """An embedded store whose scan waits for a gate: a slow index build."""

    def __init__(self) -> None:
        super().__init__(max_entries=10, poll_s=0.05)
        self.gate = asyncio.Event()

    async def scan(self, now: float) -> AsyncIterator[list[Added]]:
        await self.gate.wait()
        async for batch in super().scan(now):
            yield batch


async def test_health_is_not_serving_and_calls_unavailable_until_the_index_is_built() -> None:
    store = GatedStore()
    srv = create_server(
        settings(),
        store=store,
        verifier=FakeVerifier(),
        min_similarity=0.8,
        registry=CollectorRegistry(),
    )
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            check = await health.Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Lookup(pb.LookupRequest(namespace="ns", exact_key="k"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            store.gate.set()
            await wait_ready(srv)
            check = await health.Check(
                health_pb2.HealthCheckRequest(service="llmgw.cache.v1.CacheService")
            )
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            assert (
                await stub.Lookup(pb.LookupRequest(namespace="ns", exact_key="k"))
            ).kind == pb.HIT_KIND_MISS
    finally:
        await srv.stop()


async def test_the_default_verifier_is_the_calibrated_one(
    make_server: Callable[..., CacheServer],
) -> None:
    srv = create_server(
        settings(), store=MemoryStore(max_entries=10, poll_s=0.05), registry=CollectorRegistry()
    )
    await srv.start()
    await wait_ready(srv)
    v = unit(1)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            await stub.Store(store_req("ns", v, prompt="How do I lose 5 kg in a month?"))
            same = await semantic(stub, "ns", v, prompt_text="How do I lose 5 kg in a month?")
            other = await semantic(stub, "ns", v, prompt_text="How do I lose 10 kg in a month?")
    finally:
        await srv.stop()
    assert same.kind == pb.HIT_KIND_SEMANTIC
    assert other.kind == pb.HIT_KIND_MISS and other.rejected_by_verification
    assert other.verification_reason == "number_mismatch"
