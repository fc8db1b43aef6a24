"""Deficit round robin with priority classes: who goes next out of a saturated pool."""

from __future__ import annotations

import random

from gateway.flow.drr import Entry, FairQueue

INTERACTIVE, BATCH = 0, 1


def entry(tenant: str, cost: float, priority: int = INTERACTIVE, weight: float = 1.0) -> Entry[str]:
    return Entry(f"{tenant}:{cost}", tenant, priority, cost, weight)


def drain(queue: FairQueue[str], n: int) -> list[Entry[str]]:
    out = []
    for _ in range(n):
        got = queue.pop()
        assert got is not None
        out.append(got)
    return out


def test_interactive_always_goes_before_batch() -> None:
    queue: FairQueue[str] = FairQueue(256)
    for _ in range(5):
        queue.push(entry("etl", 100, BATCH))
    queue.push(entry("app", 100, INTERACTIVE))
    queue.push(entry("app", 100, INTERACTIVE))
    first = drain(queue, 3)
    assert [e.tenant for e in first] == ["app", "app", "etl"]


def test_backlogged_tenants_get_tokens_in_proportion_to_their_weights() -> None:
    rng = random.Random(7)
    queue: FairQueue[str] = FairQueue(64)
    for _ in range(3000):
        queue.push(entry("heavy", rng.randint(20, 400), weight=2.0))
        queue.push(entry("light", rng.randint(20, 400), weight=1.0))
    served: dict[str, float] = {"heavy": 0.0, "light": 0.0}
    for e in drain(queue, 2000):  # both stay backlogged throughout
        served[e.tenant] += e.cost
    assert abs(served["heavy"] / served["light"] - 2.0) < 0.1


def test_shares_are_tokens_not_requests() -> None:
    queue: FairQueue[str] = FairQueue(100)
    for _ in range(400):
        queue.push(entry("big", 1000))
        for _ in range(10):
            queue.push(entry("small", 100))
    out = drain(queue, 1100)
    big = sum(e.cost for e in out if e.tenant == "big")
    small = sum(e.cost for e in out if e.tenant == "small")
    assert abs(big / small - 1.0) < 0.05
    assert sum(e.tenant == "small" for e in out) > 5 * sum(e.tenant == "big" for e in out)


def test_a_newcomer_is_served_within_one_turn_of_a_flooding_tenant() -> None:
    queue: FairQueue[str] = FairQueue(256)
    for _ in range(100):
        queue.push(entry("noisy", 100))
    drain(queue, 5)
    queue.push(entry("quiet", 100))
    order = [e.tenant for e in drain(queue, 4)]
    assert "quiet" in order  # at most the rest of noisy's turn (256 tokens: 2 requests) first


def test_a_request_far_larger_than_the_quantum_still_goes() -> None:
    queue: FairQueue[str] = FairQueue(1)
    queue.push(entry("a", 1_000_000))
    queue.push(entry("b", 2_000_000))
    assert [e.tenant for e in drain(queue, 2)] == ["a", "b"]
    assert queue.pop() is None and len(queue) == 0


def test_removed_requests_are_never_sent_and_empty_tenants_leave() -> None:
    queue: FairQueue[str] = FairQueue(256)
    gone = entry("a", 10)
    queue.push(gone)
    kept = entry("b", 10)
    queue.push(kept)
    assert queue.remove(gone)
    assert not queue.remove(gone)
    assert queue.by_tenant == {"b": 1}
    assert queue.pop() is kept
    assert queue.pop() is None
    assert queue.by_tenant == {}


def test_allowed_picks_the_oldest_of_the_tenants_it_accepts() -> None:
    queue: FairQueue[str] = FairQueue(256)
    queue.push(entry("noisy", 10))
    queue.push(entry("quiet", 10))
    queue.push(entry("quiet", 20))
    got = queue.pop(lambda tenant: tenant == "quiet")
    assert got is not None and got.tenant == "quiet" and got.cost == 10
    assert queue.pop(lambda tenant: False) is None
    assert len(queue) == 2


def test_a_tenant_whose_queue_was_empty_goes_with_the_next_slot() -> None:
    queue: FairQueue[str] = FairQueue(1000)  # noisy's turn would be 10 requests long
    for _ in range(100):
        queue.push(entry("noisy", 100))
    drain(queue, 13)  # noisy's first credit is spent: it is in the ring, mid-turn
    queue.push(entry("quiet", 100))
    assert [e.tenant for e in drain(queue, 2)] == ["quiet", "noisy"]
    queue.push(entry("quiet", 100))  # sparse again: first again
    queue.push(entry("quiet", 100))
    queue.push(entry("quiet", 100))
    order = [e.tenant for e in drain(queue, 12)]
    assert order[0] == "quiet" and order.count("quiet") == 3  # its credit paid for all three


def test_a_new_tenant_that_sends_a_burst_gets_no_more_than_its_share() -> None:
    queue: FairQueue[str] = FairQueue(100)
    for _ in range(300):
        queue.push(entry("old", 100))
    drain(queue, 10)
    for _ in range(300):
        queue.push(entry("new", 100))
    order = [e.tenant for e in drain(queue, 200)]
    assert abs(order.count("new") - order.count("old")) <= 2
