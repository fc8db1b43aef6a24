from collections import Counter

import pytest

from gateway.balance import (
    EndpointState,
    Lease,
    NoEndpoint,
    Outcome,
    Pool,
    PoolConfig,
    UnknownModel,
)
from gateway.balance.breaker import BreakerConfig
from gateway.balance.retry_budget import RetryBudgetConfig

from .conftest import FakeClock, PoolFactory, spec

FAST_TRIP = PoolConfig(breaker=BreakerConfig(consecutive_failures=2, base_ejection_s=10.0))


def serve(lease: Lease, ttft: float, clock: FakeClock, outcome: Outcome = Outcome.SUCCESS) -> None:
    """The first token arrives after ``ttft`` seconds, then the response ends."""
    clock.advance(ttft)
    lease.first_token()
    lease.release(outcome)


def names(states: list[EndpointState]) -> dict[str, EndpointState]:
    return {s.name: s for s in states}


def test_a_new_endpoint_starts_at_the_default_rtt(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a"), config=PoolConfig(default_rtt_s=0.25))
    (state,) = pool.snapshot()
    assert state.cost == 0.25
    assert state.pending == 0
    assert state.breaker == "closed"


def test_a_single_endpoint_pool_always_routes_there(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a"))
    assert {pool.acquire("m").endpoint.name for _ in range(10)} == {"a"}


def test_with_two_endpoints_the_slower_one_is_never_chosen(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"))
    slow = pool.acquire("m")
    other = "b" if slow.endpoint.name == "a" else "a"
    serve(slow, 2.0, clock)
    assert picks(pool, 100) == {other: 100}


def test_pending_requests_spread_load_over_equal_endpoints(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a"), spec("b"), spec("c"))
    leases = [pool.acquire("m") for _ in range(30)]
    pending = sorted(s.pending for s in pool.snapshot())
    assert pending == [10, 10, 10]
    for lease in leases:
        lease.release(Outcome.CANCELLED)
        lease.release(Outcome.CANCELLED)  # idempotent
    assert [s.pending for s in pool.snapshot()] == [0, 0, 0]


def test_requests_only_go_to_endpoints_serving_the_model(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a", "llama"), spec("b", "qwen"), spec("c", "llama", "qwen"))
    assert pool.models() == ["llama", "qwen"]
    assert pool.has_model("qwen") and not pool.has_model("gpt")
    picks = {pool.acquire("llama").endpoint.name for _ in range(50)}
    assert picks == {"a", "c"}
    with pytest.raises(UnknownModel):
        pool.acquire("gpt")


def test_excluding_every_endpoint_is_no_endpoint_not_unknown(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a"), spec("b"))
    assert pool.acquire("m", exclude={"a"}).endpoint.name == "b"
    with pytest.raises(NoEndpoint):
        pool.acquire("m", exclude={"a", "b"})


def picks(pool: Pool, n: int) -> Counter[str]:
    """Where n requests go, each finished before the next one starts."""
    seen: Counter[str] = Counter()
    for _ in range(n):
        lease = pool.acquire("m")
        seen[lease.endpoint.name] += 1
        lease.release(Outcome.CANCELLED)
    return seen


def fail(pool: Pool, name: str, times: int) -> None:
    """``times`` connect errors on endpoint ``name``."""
    for _ in range(times):
        lease = pool.acquire("m", exclude={n for n in ("a", "b", "c") if n != name})
        lease.release(Outcome.CONNECT_ERROR)


def test_a_replica_that_fails_fast_does_not_look_fast(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PoolConfig(default_rtt_s=0.2, penalty_s=5.0))
    fail(pool, "a", 1)
    ok = pool.acquire("m", exclude={"a"})
    serve(ok, 0.3, clock)
    costs = {s.name: s.cost for s in pool.snapshot()}
    assert costs["a"] > 10 * costs["b"]
    assert picks(pool, 20) == {"b": 20}


def test_consecutive_failures_eject_and_ready_reflects_it(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a"), spec("b"), config=FAST_TRIP)
    fail(pool, "a", 2)
    assert names(pool.snapshot())["a"].breaker == "open"
    assert pool.ready()
    assert picks(pool, 20) == {"b": 20}
    fail(pool, "b", 2)
    assert not pool.ready()


def test_when_all_are_open_the_least_bad_is_a_panic_choice(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"), config=FAST_TRIP)
    fail(pool, "a", 2)
    clock.advance(3.0)
    fail(pool, "b", 2)
    lease = pool.acquire("m")
    assert lease.panic
    assert lease.endpoint.name == "a"  # its ejection ends first
    lease.release(Outcome.SUCCESS)
    clock.advance(7.0)  # a is half-open now: a normal choice again
    lease = pool.acquire("m")
    assert (lease.endpoint.name, lease.panic) == ("a", False)


def test_a_half_open_probe_that_succeeds_brings_the_endpoint_back(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    config = PoolConfig(breaker=BreakerConfig(consecutive_failures=1, probes=1))
    pool = make_pool(spec("a"), spec("b"), config=config)
    fail(pool, "a", 1)
    clock.advance(config.breaker.base_ejection_s)
    probe = pool.acquire("m", exclude={"b"})
    assert names(pool.snapshot())["a"].breaker == "half_open"
    serve(probe, 0.1, clock)
    assert names(pool.snapshot())["a"].breaker == "closed"


def test_client_disconnects_and_bad_requests_never_eject(make_pool: PoolFactory) -> None:
    pool = make_pool(spec("a"), config=FAST_TRIP)
    for outcome in [Outcome.CANCELLED, Outcome.CLIENT_ERROR] * 5:
        pool.acquire("m").release(outcome)
    (state,) = pool.snapshot()
    assert (state.breaker, state.pending) == ("closed", 0)


def test_a_slow_first_token_counts_as_a_failure(make_pool: PoolFactory, clock: FakeClock) -> None:
    config = PoolConfig(ttft_failure_limit_s=1.0, breaker=BreakerConfig(consecutive_failures=2))
    pool = make_pool(spec("a"), config=config)
    for _ in range(2):
        serve(pool.acquire("m"), 1.5, clock)
    assert pool.snapshot()[0].breaker == "open"


def test_a_429_is_avoided_until_retry_after_without_ejection(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"))
    pool.acquire("m", exclude={"b"}).release(Outcome.RATE_LIMITED, retry_after_s=2.0)
    state = names(pool.snapshot())["a"]
    assert state.rate_limited and state.breaker == "closed"
    assert picks(pool, 20) == {"b": 20}
    clock.advance(2.0)
    assert picks(pool, 20)["a"] > 0


def test_can_retry_spends_the_budget(make_pool: PoolFactory) -> None:
    config = PoolConfig(retry_budget=RetryBudgetConfig(ratio=0.5, min_per_s=0.0))
    pool = make_pool(spec("a"), config=config)
    for _ in range(4):
        pool.acquire("m").release(Outcome.SUCCESS)
    assert [pool.can_retry() for _ in range(3)] == [True, True, False]


def test_an_endpoint_that_went_silent_is_avoided_before_it_answers(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"))
    for other in ("b", "a"):
        serve(pool.acquire("m", exclude={other}), 0.1, clock)  # both cost 0.1 s
    hung = pool.acquire("m", exclude={"b"})  # never gets a first token
    streams = [pool.acquire("m", exclude={"a"}) for _ in range(2)]
    for stream in streams:
        stream.first_token()  # still streaming: decoding on b
    assert picks(pool, 1) == {"b": 1}  # a's one waiting request outweighs two decoding
    clock.advance(5.0)  # b's streams go on; a has kept its request 5 s
    assert names(pool.snapshot())["a"].load >= 2 * 5.0  # (1 waiting + 1) x its age
    assert picks(pool, 20) == {"b": 20}
    hung.release(Outcome.CANCELLED)


def test_a_slow_endpoint_is_tried_again_once_its_peak_has_decayed(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"))
    serve(pool.acquire("m", exclude={"b"}), 2.0, clock)
    seen: Counter[str] = Counter()
    for _ in range(40):  # one request a second, each answered in 0.3 s
        lease = pool.acquire("m")
        seen[lease.endpoint.name] += 1
        serve(lease, 0.3, clock)
        clock.advance(0.7)
    assert seen["b"] > 20  # the peak kept a away for a good while
    assert seen["a"] > 0  # but not forever
