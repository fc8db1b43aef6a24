"""What the load counts: decoding streams, request kinds, cold and returning endpoints."""

from collections import Counter

import pytest

from gateway.balance import Lease, Outcome, Pool, PoolConfig
from gateway.balance.breaker import BreakerConfig

from .conftest import FakeClock, PoolFactory, spec


def sample(pool: Pool, name: str, ttft: float, clock: FakeClock, *, stream: bool = True) -> None:
    """One answer from ``name`` after ``ttft`` seconds (the whole answer if not streamed)."""
    others = {e.name for e in pool.snapshot()} - {name}
    lease = pool.acquire("m", exclude=others, stream=stream)
    clock.advance(ttft)
    lease.first_token()
    lease.release(Outcome.SUCCESS)


def picks(pool: Pool, n: int, *, stream: bool = True) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        lease = pool.acquire("m", stream=stream)
        seen[lease.endpoint.name] += 1
        lease.release(Outcome.CANCELLED)
    return seen


def decoding(pool: Pool, name: str, n: int) -> list[Lease]:
    """``n`` streams on ``name`` that have had their first token and go on."""
    others = {e.name for e in pool.snapshot()} - {name}
    leases = [pool.acquire("m", exclude=others) for _ in range(n)]
    for lease in leases:
        lease.first_token()
    return leases


@pytest.mark.parametrize(("decode_weight", "chosen"), [(1.0, "b"), (0.1, "a")])
def test_streams_past_their_first_token_weigh_decode_weight(
    make_pool: PoolFactory, clock: FakeClock, decode_weight: float, chosen: str
) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PoolConfig(decode_weight=decode_weight))
    sample(pool, "a", 0.02, clock)
    sample(pool, "b", 0.06, clock)
    streams = decoding(pool, "a", 7)
    # a: 0.02 x (7 w + 1) against b idle: 0.06 x 1. Seven streams decoding on
    # a batching server barely delay a new first token; on a server that runs
    # one request at a time they do.
    assert picks(pool, 10) == {chosen: 10}
    for lease in streams:
        lease.release(Outcome.SUCCESS)


def test_streams_waiting_for_their_first_token_weigh_one_whatever_the_setting(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PoolConfig(decode_weight=0.0))
    sample(pool, "a", 0.02, clock)
    sample(pool, "b", 0.06, clock)
    waiting = [pool.acquire("m", exclude={"b"}) for _ in range(3)]  # 0.02 x 4 > 0.06
    assert picks(pool, 10) == {"b": 10}
    for lease in waiting:
        lease.release(Outcome.CANCELLED)


def test_a_cold_pool_believes_its_first_answers(make_pool: PoolFactory, clock: FakeClock) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PoolConfig(default_rtt_s=0.5))
    sample(pool, "a", 0.02, clock)
    sample(pool, "b", 0.2, clock)
    costs = {s.name: s.cost for s in pool.snapshot()}
    assert costs == pytest.approx({"a": 0.02, "b": 0.2}, rel=0.1)  # decayed by the time since
    assert picks(pool, 50) == {"a": 50}


def test_non_streamed_answers_do_not_count_as_time_to_first_token(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"))
    sample(pool, "a", 0.02, clock)  # a: quick first token, slow whole answers
    sample(pool, "b", 0.05, clock)
    sample(pool, "a", 0.4, clock, stream=False)
    sample(pool, "b", 0.2, clock, stream=False)
    costs = {s.name: s.cost for s in pool.snapshot()}
    assert costs == pytest.approx({"a": 0.02, "b": 0.05}, rel=0.1)
    assert picks(pool, 20) == {"a": 20}
    assert picks(pool, 20, stream=False) == {"b": 20}


def test_a_non_streamed_request_in_flight_bounds_only_whole_answers(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    config = PoolConfig(decode_weight=0.0)
    pool = make_pool(spec("a"), spec("b"), config=config)
    for name, ttft, whole in (("a", 0.02, 0.3), ("b", 0.05, 0.3)):
        sample(pool, name, ttft, clock)
        sample(pool, name, whole, clock, stream=False)
    long = pool.acquire("m", exclude={"b"}, stream=False)
    clock.advance(2.0)  # a's answer takes long: it might be a long completion
    # Streams: a = 0.02 x (1 + 1) (decayed), b = 0.05: a still wins.
    assert picks(pool, 10) == {"a": 10}
    # Whole answers: a's is at least 2 s now.
    assert picks(pool, 10, stream=False) == {"b": 10}
    long.release(Outcome.SUCCESS)


def test_a_non_streamed_attempt_weighs_as_waiting_until_its_first_token_is_due(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PoolConfig(decode_weight=0.0))
    sample(pool, "a", 0.05, clock)
    sample(pool, "b", 0.06, clock)
    unary = pool.acquire("m", exclude={"b"}, stream=False)
    assert picks(pool, 10) == {"b": 10}  # a: 0.05 x (1 + 1) > b: 0.06
    clock.advance(0.1)  # past a's TTFT: the answer is being generated
    assert picks(pool, 10) == {"a": 10}  # a: 0.05 x (0 + 1) < b: 0.06
    unary.release(Outcome.SUCCESS)


def test_a_long_non_streamed_answer_is_not_a_slow_first_token(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    config = PoolConfig(ttft_failure_limit_s=1.0, breaker=BreakerConfig(consecutive_failures=1))
    pool = make_pool(spec("a"), config=config)
    sample(pool, "a", 5.0, clock, stream=False)
    assert pool.snapshot()[0].breaker == "closed"
    sample(pool, "a", 5.0, clock)
    assert pool.snapshot()[0].breaker == "open"


def test_a_failure_penalises_both_kinds(make_pool: PoolFactory, clock: FakeClock) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PoolConfig(penalty_s=5.0))
    for stream in (True, False):
        sample(pool, "a", 0.02, clock, stream=stream)
        sample(pool, "b", 0.05, clock, stream=stream)
    pool.acquire("m", exclude={"b"}, stream=False).release(Outcome.SERVER_ERROR)
    assert picks(pool, 10) == {"b": 10}
    assert picks(pool, 10, stream=False) == {"b": 10}


def test_first_token_is_ignored_on_a_non_streamed_attempt(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), config=PoolConfig(default_rtt_s=0.5))
    lease = pool.acquire("m", stream=False)
    clock.advance(0.01)
    lease.first_token()
    assert pool.snapshot()[0].cost == pytest.approx(0.5, rel=0.01)  # no TTFT sample
    lease.release(Outcome.SUCCESS)


PROBING = PoolConfig(
    penalty_s=5.0, breaker=BreakerConfig(consecutive_failures=1, base_ejection_s=5.0, probes=2)
)


def eject(pool: Pool, clock: FakeClock) -> None:
    sample(pool, "a", 0.02, clock)
    sample(pool, "b", 0.02, clock)
    pool.acquire("m", exclude={"b"}).release(Outcome.CONNECT_ERROR)
    assert {s.name: s.breaker for s in pool.snapshot()} == {"a": "open", "b": "closed"}


def test_when_its_ejection_ends_an_endpoint_is_probed_at_once(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PROBING)
    eject(pool, clock)
    clock.advance(5.0)  # the 5 s penalty would still be worth 1.8 s
    state = {s.name: s for s in pool.snapshot()}["a"]
    assert (state.breaker, state.cost) == ("half_open", 0.0)
    leases = [pool.acquire("m") for _ in range(6)]
    # Both probe slots go to a as soon as P2C draws it, then it is full.
    assert Counter(lease.endpoint.name for lease in leases) == {"a": 2, "b": 4}
    for lease in leases:
        clock.advance(0.01)
        lease.first_token()
        lease.release(Outcome.SUCCESS)
    state = {s.name: s for s in pool.snapshot()}["a"]
    assert state.breaker == "closed"
    assert state.cost < 0.1  # its probes' answers, not the penalty (1.8 s by now)


def test_a_failed_probe_ejects_again_and_the_next_end_resets_again(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"), config=PROBING)
    eject(pool, clock)
    clock.advance(5.0)
    probe = pool.acquire("m", exclude={"b"})
    probe.release(Outcome.CONNECT_ERROR)
    states = {s.name: s for s in pool.snapshot()}
    assert (states["a"].breaker, states["a"].cost) == ("open", 5.0)
    clock.advance(10.0)  # the second ejection lasts twice as long
    assert {s.name: s.cost for s in pool.snapshot()}["a"] == 0.0
    assert picks(pool, 20)["a"] > 0
