"""The pool side of flow control: its readings, and full endpoints routed last."""

from __future__ import annotations

import random

from gateway.balance import Outcome, Pool, PoolConfig
from gateway.balance.endpoint import EndpointSpec
from gwkit import FakeClock

MODEL = "m"


def pool(clock: FakeClock) -> Pool:
    specs = [EndpointSpec(f"http://{n}", (MODEL,), name=n) for n in ("fast", "slow")]
    return Pool(PoolConfig(), specs, clock=clock, rng=random.Random(3))


def test_an_endpoint_with_every_slot_taken_is_chosen_only_when_all_are(
    clock: FakeClock,
) -> None:
    p = pool(clock)
    slow = p.acquire(MODEL, exclude=("fast",))
    clock.advance(2.0)  # "slow" answers its first token in 2 s
    slow.first_token()
    slow.release(Outcome.SUCCESS)
    stacked = [p.acquire(MODEL) for _ in range(2)]
    assert [lease.endpoint.name for lease in stacked] == ["fast", "fast"]  # without slots
    for lease in stacked:
        lease.release(Outcome.CANCELLED)
    p.slots = 1
    first = p.acquire(MODEL)
    second = p.acquire(MODEL)
    assert (first.endpoint.name, second.endpoint.name) == ("fast", "slow")
    third = p.acquire(MODEL)  # both full: still routed (the lighter one)
    assert third.endpoint.name in ("fast", "slow")


def test_readings_are_the_eligible_endpoints_with_fresh_engine_queues(clock: FakeClock) -> None:
    p = pool(clock)
    p.set_engine_stats("fast", 3, None)
    held = p.acquire(MODEL)
    readings = {r.pending: r for r in p.readings(MODEL)}
    assert set(readings) == {0, 1}
    assert sorted(r.waiting or 0 for r in p.readings(MODEL)) == [0, 3]
    clock.advance(60)  # stale engine figures stop counting
    assert all(r.waiting is None for r in p.readings(MODEL))
    assert p.readings("other") == []
    assert held is not None
