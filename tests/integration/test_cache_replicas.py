"""Two real cache replicas (`python -m semcache`) on one real Redis.

What the issue asks the service to guarantee, checked from outside: an entry
stored through one replica is found through the other; a replica killed and
restarted comes back with the same entries; expiry and invalidation remove
entries from every replica's lookups; no lookup crosses a namespace; Redis
stopped and restarted mid-test gives UNAVAILABLE meanwhile and no crash, and
the replicas recover by themselves.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from deploy.local.harness import wait_for
from deploy.local.procs import Proc, free_port, grpc_serving, redis_proc, redis_ready
from llmgw.cache.v1 import cache_pb2 as pb
from llmgw.cache.v1 import cache_pb2_grpc

DIM = 384
PROMPT = "What is the capital city of Australia?"


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


class Replica:
    """One `python -m semcache` process and a client to it."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.port = free_port()
        self.env = {**env, "CACHE_PORT": str(self.port), "CACHE_METRICS_PORT": "0"}
        self.name, self.log_dir = name, log_dir
        self.proc: Proc | None = None
        self.channel: grpc.Channel | None = None

    def start(self) -> Replica:
        argv = [sys.executable, "-m", "semcache"]
        self.proc = Proc(self.name, argv, env=self.env, log_dir=self.log_dir).start()
        self.proc.wait_until(lambda: grpc_serving(self.port), timeout=60)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = cache_pb2_grpc.CacheServiceStub(self.channel)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None:
            if sig == signal.SIGKILL:
                self.proc.kill()
            self.proc.stop()

    def store(self, ns: str, seed: int, *, key: str = "", ttl: int = 0) -> str:
        request = pb.StoreRequest(
            namespace=ns, exact_key=key, prompt_text=PROMPT, vector=unit(seed),
            response=f"answer {seed}".encode(), ttl_seconds=ttl,
        )  # fmt: skip
        return str(self.stub.Store(request, timeout=5).entry_id)

    def semantic(self, ns: str, seed: int) -> pb.LookupResponse:
        request = pb.LookupRequest(namespace=ns, vector=unit(seed), prompt_text=PROMPT)
        return self.stub.Lookup(request, timeout=5)

    def exact(self, ns: str, key: str) -> pb.LookupResponse:
        return self.stub.Lookup(pb.LookupRequest(namespace=ns, exact_key=key), timeout=5)


@pytest.fixture
def replicas(redis_url: str, log_dir: Path) -> Iterator[tuple[Replica, Replica]]:
    env = {"CACHE_REDIS_URL": redis_url, "CACHE_SWEEP_INTERVAL_S": "0.2"}
    a = Replica("cache-a", env, log_dir).start()
    b = Replica("cache-b", env, log_dir).start()
    yield a, b
    for replica in (a, b):
        replica.stop()


def test_an_entry_stored_through_one_replica_is_found_through_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    entry_id = a.store("ns", 1, key="k1")

    exact = b.exact("ns", "k1")
    assert (exact.kind, exact.entry_id, exact.response) == (
        pb.HIT_KIND_EXACT,
        entry_id,
        b"answer 1",
    )
    wait_for(lambda: b.semantic("ns", 1).kind == pb.HIT_KIND_SEMANTIC, "a hit on b", 1.0)
    hit = b.semantic("ns", 1)
    assert (hit.entry_id, hit.response) == (entry_id, b"answer 1")
    assert hit.similarity == pytest.approx(1.0, abs=1e-5)


def test_a_killed_replica_comes_back_with_the_same_entries(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    ids = {seed: b.store("ns", seed) for seed in range(40)}
    a.stop(signal.SIGKILL)

    a.start()

    stats = a.stub.Stats(pb.StatsRequest(), timeout=5)
    assert (stats.entries, stats.index_size, stats.store) == (40, 40, "redis")
    assert all(a.semantic("ns", seed).entry_id == ids[seed] for seed in range(40))


def test_expiry_and_invalidation_remove_entries_on_every_replica(
    replicas: tuple[Replica, Replica],
) -> None:
    a, b = replicas
    a.store("ns", 1, key="short", ttl=1)
    doomed = a.store("ns", 2, key="doomed")
    a.store("other", 3, key="k3")
    wait_for(lambda: b.semantic("ns", 1).kind == pb.HIT_KIND_SEMANTIC, "a hit on b", 5)

    b.stub.Invalidate(pb.InvalidateRequest(entry_id=doomed), timeout=5)
    a.stub.Invalidate(pb.InvalidateRequest(namespace="other"), timeout=5)

    for replica in (a, b):
        assert replica.semantic("ns", 2).kind == pb.HIT_KIND_MISS
        assert replica.exact("ns", "doomed").kind == pb.HIT_KIND_MISS
        assert replica.semantic("other", 3).kind == pb.HIT_KIND_MISS
        wait_for(lambda r=replica: r.semantic("ns", 1).kind == pb.HIT_KIND_MISS, "a miss", 5)
        assert replica.exact("ns", "short").kind == pb.HIT_KIND_MISS
    # The replicas' indexes converge too, not only their answers.
    wait_for(lambda: b.stub.Stats(pb.StatsRequest()).index_size == 0, "b empty", 5)


def test_no_lookup_crosses_a_namespace(replicas: tuple[Replica, Replica]) -> None:
    a, b = replicas
    for seed in range(30):
        a.store("tenant-a", seed, key=f"k{seed}")
    wait_for(lambda: b.semantic("tenant-a", 29).kind == pb.HIT_KIND_SEMANTIC, "a hit", 5)

    for replica in (a, b):
        for seed in range(30):
            assert replica.semantic("tenant-b", seed).kind == pb.HIT_KIND_MISS
            assert replica.exact("tenant-b", f"k{seed}").kind == pb.HIT_KIND_MISS


def test_redis_stopped_and_restarted_gives_unavailable_then_recovers(
    replicas: tuple[Replica, Replica], redis_server: tuple[Proc, int], log_dir: Path
) -> None:
    a, b = replicas
    a.store("ns", 1, key="k1")
    proc, port = redis_server
    proc.stop()

    for replica in (a, b):
        for call in (lambda r=replica: r.exact("ns", "k1"), lambda r=replica: r.store("ns", 2)):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    time.sleep(1.0)  # the followers retry meanwhile
    assert a.proc is not None and a.proc.alive() and b.proc is not None and b.proc.alive()

    restarted = redis_proc(port, log_dir=log_dir).start()  # empty: no persistence
    try:
        restarted.wait_until(redis_ready(port), timeout=10)
        wait_for(lambda: _available(a), "a available again", 10)
        assert a.exact("ns", "k1").kind == pb.HIT_KIND_MISS  # that Redis lost everything
        entry_id = a.store("ns", 3, key="k3")
        wait_for(lambda: b.semantic("ns", 3).entry_id == entry_id, "the entry on b", 10)
        assert b.semantic("ns", 1).kind == pb.HIT_KIND_MISS  # the lost entry left the index
        wait_for(lambda: b.stub.Stats(pb.StatsRequest()).index_size == 1, "one entry on b", 10)
    finally:
        for replica in (a, b):
            replica.stop()
        restarted.stop()


def _available(replica: Replica) -> bool:
    try:
        replica.exact("ns", "probe")
    except grpc.RpcError:
        return False
    return True


def test_the_embedded_store_keeps_its_entries_across_a_restart(
    log_dir: Path, tmp_path: Path
) -> None:
    env = {"CACHE_REDIS_URL": "", "CACHE_SNAPSHOT_PATH": str(tmp_path / "cache.sqlite")}
    first = Replica("cache-embedded", env, log_dir).start()
    try:
        entry_id = first.store("ns", 7, key="k7")
    finally:
        first.stop()  # SIGTERM: drain, then snapshot

    second = Replica("cache-embedded-2", env, log_dir).start()
    try:
        assert second.exact("ns", "k7").entry_id == entry_id
        assert second.semantic("ns", 7).entry_id == entry_id
        assert second.stub.Stats(pb.StatsRequest()).store == "memory"
    finally:
        second.stop()
