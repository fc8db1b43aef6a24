from gateway.balance import EndpointSpec, EndpointState, Outcome, Pool
from gateway.balance.breaker import BreakerConfig
from gateway.balance.pool import PoolConfig

from .conftest import FakeClock, PoolFactory, spec


def state(pool: Pool, name: str) -> EndpointState:
    return {s.name: s for s in pool.snapshot()}[name]


def test_survivors_keep_their_cost_and_breaker(make_pool: PoolFactory, clock: FakeClock) -> None:
    config = PoolConfig(breaker=BreakerConfig(consecutive_failures=1))
    pool = make_pool(spec("a"), spec("b"), config=config)
    slow = pool.acquire("m", exclude={"b"})
    clock.advance(3.0)
    slow.first_token()
    slow.release(Outcome.SUCCESS)
    pool.acquire("m", exclude={"a"}).release(Outcome.SERVER_ERROR)
    cost_a = state(pool, "a").cost

    pool.update([spec("a"), spec("b"), spec("c")])

    assert state(pool, "a").cost == cost_a
    assert state(pool, "b").breaker == "open"
    assert state(pool, "c").cost == config.default_rtt_s


def test_a_changed_model_list_is_picked_up(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a", "llama"))
    pool.update([spec("a", "qwen")])
    assert pool.models() == ["qwen"]


def test_vanished_endpoints_drain_then_disappear(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a"), spec("b"))
    in_flight = pool.acquire("m", exclude={"b"})

    pool.update([spec("b")])

    assert state(pool, "a").draining is True
    assert state(pool, "a").pending == 1
    assert {pool.acquire("m").endpoint.name for _ in range(20)} == {"b"}
    in_flight.release(Outcome.SUCCESS)
    assert [s.name for s in pool.snapshot()] == ["b"]


def test_an_idle_vanished_endpoint_goes_at_once(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a", "llama"), spec("b", "qwen"))
    pool.update([spec("b", "qwen")])
    assert [s.name for s in pool.snapshot()] == ["b"]
    assert pool.models() == ["qwen"]


def test_a_draining_endpoint_that_returns_keeps_its_state(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"))
    lease = pool.acquire("m", exclude={"b"})
    clock.advance(2.0)
    lease.first_token()
    pool.update([spec("b")])
    pool.update([spec("a"), spec("b")])
    lease.release(Outcome.SUCCESS)
    a = state(pool, "a")
    assert (a.draining, a.pending) == (False, 0)
    assert a.cost > 1.9


def test_an_empty_pool_is_not_ready_and_knows_no_model(make_pool: PoolFactory) -> None:
    pool = make_pool()
    assert not pool.ready()
    assert pool.models() == []
    pool.update([EndpointSpec(url="http://x:1/", models=("m",))])
    assert pool.ready()
    assert pool.snapshot()[0].name == "http://x:1"


def test_a_replica_added_beside_fast_ones_gets_its_share_at_once(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    """Its placeholder cost (0.5 s) would keep it idle beside 20 ms replicas until
    tau decayed it; it is judged as the pool's typical replica instead."""
    pool = make_pool(spec("a"), spec("b"), config=PoolConfig(default_rtt_s=0.5))
    for stream in (True, False):
        for name in ("a", "b"):
            for _ in range(3):
                lease = pool.acquire("m", exclude={"a", "b"} - {name}, stream=stream)
                clock.advance(0.02)
                lease.first_token()
                lease.release(Outcome.SUCCESS)
    pool.update([spec("a"), spec("b"), spec("c")])
    for stream in (True, False):
        chosen = []
        for _ in range(60):  # one at a time: a low load, where only the cost decides
            lease = pool.acquire("m", stream=stream)
            chosen.append(lease.endpoint.name)
            lease.release(Outcome.CANCELLED)
        assert chosen.count("c") >= 10, (stream, chosen.count("c"))
