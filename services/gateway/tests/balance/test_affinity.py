"""Prefix affinity in the pool: sticky conversations, spread misses, bounded load, agreement."""

from __future__ import annotations

import heapq
import random
from collections import Counter

from gateway.balance import Lease, Outcome, Pool, PoolConfig
from gateway.balance.affinity import AffinityConfig
from gateway.balance.breaker import BreakerConfig
from gateway.balance.prefix import PromptPrefix, prompt_prefix

from .conftest import FakeClock, PoolFactory, spec

NAMES = ("r1", "r2", "r3", "r4")


def system_prompt(i: int) -> str:
    return f"System prompt number {i}: " + f"rule {i} applies; " * 150


def chat(system: int, *turns: str) -> PromptPrefix:
    parts = ["system", system_prompt(system)]
    for turn in turns:
        parts += ["user", turn]
    return prompt_prefix(parts)


def warm(pool: Pool, clock: FakeClock) -> None:
    """One 20 ms answer from every endpoint: they look alike."""
    for name in NAMES:
        lease = pool.acquire("m", exclude=set(NAMES) - {name})
        clock.advance(0.02)
        lease.first_token()
        lease.release(Outcome.SUCCESS)


def serve(pool: Pool, prefix: PromptPrefix | None, clock: FakeClock, ttft: float = 0.02) -> str:
    lease = pool.acquire("m", prefix=prefix)
    clock.advance(ttft)
    lease.first_token()
    lease.release(Outcome.SUCCESS)
    return lease.endpoint.name


def test_later_turns_follow_the_endpoint_holding_the_conversation(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(*(spec(n) for n in NAMES))
    warm(pool, clock)  # every endpoint answers alike: load plays no part
    rng = random.Random(3)
    for conv in range(40):
        turns = [f"conversation {conv} question {t} " * rng.randint(5, 60) for t in range(6)]
        homes = {serve(pool, chat(conv % 8, *turns[: t + 1]), clock) for t in range(6)}
        assert len(homes) == 1, f"conversation {conv} moved: {homes}"


def test_unseen_prefixes_are_spread_and_two_gateways_agree_on_them(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    one = make_pool(*(spec(n) for n in NAMES), seed=1)
    two = make_pool(*(spec(n) for n in NAMES), seed=2)
    for pool in (one, two):
        warm(pool, clock)
    prefixes = [prompt_prefix(["user", f"unique document {i} " * 200]) for i in range(400)]
    first, second = [], []
    for prefix in prefixes:  # both gateways busy: their endpoints' costs stay fresh
        first.append(serve(one, prefix, clock))
        second.append(serve(two, prefix, clock))
    assert first == second
    shares = Counter(first)
    assert set(shares) == set(NAMES)
    assert max(shares.values()) < 0.35 * len(prefixes)


def test_a_hot_prefix_spills_over_when_its_endpoint_is_loaded(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(*(spec(n) for n in NAMES))
    warm(pool, clock)
    hot = chat(0, "the same question")
    leases = [pool.acquire("m", prefix=hot) for _ in range(40)]  # all in flight at once
    shares = Counter(lease.endpoint.name for lease in leases)
    assert len(shares) == len(NAMES)
    assert max(shares.values()) <= 1.5 * len(leases) / len(NAMES)
    for lease in leases:
        lease.release(Outcome.CANCELLED)


def test_short_prompts_and_affinity_off_are_routed_as_before(clock: FakeClock) -> None:
    def picks(config: PoolConfig, prefix: PromptPrefix | None) -> list[str]:
        pool = Pool(config, [spec(n) for n in NAMES], clock=clock, rng=random.Random(5))
        return [serve(pool, prefix, clock, ttft=0.01 * (i % 5 + 1)) for i in range(200)]

    baseline = picks(PoolConfig(), None)
    assert picks(PoolConfig(), prompt_prefix(["user", "a short question"])) == baseline
    off = PoolConfig(affinity=AffinityConfig(enabled=False))
    assert picks(off, chat(1, "a long conversation " * 50)) == baseline


def test_an_endpoint_back_from_ejection_has_forgotten_its_prefixes(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    config = PoolConfig(breaker=BreakerConfig(consecutive_failures=1, base_ejection_s=1.0))
    pool = make_pool(spec("a"), spec("b"), config=config)
    prefix = chat(2, "question")
    home = serve(pool, prefix, clock)
    lease = pool.acquire("m", exclude={n for n in ("a", "b") if n != home})
    lease.release(Outcome.SERVER_ERROR)  # ejected
    clock.advance(1.5)  # half-open: probing
    (state,) = [s for s in pool.snapshot() if s.name == home]
    assert state.breaker == "half_open"
    assert pool._endpoints[home].prefixes.match(prefix.blocks) == 0


def test_a_replica_ten_times_slower_gets_under_two_percent(clock: FakeClock) -> None:
    """A closed loop of 16 users over 8 system prompts and one-off prompts, on the real pool."""
    pool = Pool(PoolConfig(), [spec(n) for n in NAMES], clock=clock, rng=random.Random(11))
    base = {"r1": 0.02, "r2": 0.02, "r3": 0.02, "r4": 0.2}
    cached: dict[str, set[int]] = {n: set() for n in NAMES}
    rng = random.Random(4)
    events: list[tuple[float, int, int]] = []  # (time, user, step)
    turns: dict[int, list[str]] = {u: [] for u in range(16)}
    for user in range(16):
        heapq.heappush(events, (clock.now + rng.random() * 0.05, user, 0))
    served: Counter[str] = Counter()
    active: dict[int, Lease] = {}
    while sum(served.values()) < 3000:
        at, user, step = heapq.heappop(events)
        clock.now = max(clock.now, at)
        if step == 0:  # send the next turn
            if len(turns[user]) > 8 or rng.random() < 0.1:
                turns[user] = []  # a new conversation
            turns[user].append(f"user {user} says {rng.random()} " * rng.randint(2, 30))
            if rng.random() < 0.3:  # a one-off prompt: a miss everywhere
                prefix = prompt_prefix(["user", f"one-off {rng.random()} " * 100])
            else:
                prefix = chat(user % 8, *turns[user])
            lease = pool.acquire("m", prefix=prefix)
            name = lease.endpoint.name
            hit = sum(1 for b in prefix.blocks if b in cached[name])
            cached[name].update(prefix.blocks)
            ttft = base[name] * (1 + rng.random()) + (len(prefix.blocks) - hit) * 0.002
            active[user] = lease
            heapq.heappush(events, (clock.now + ttft, user, 1))
        elif step == 1:  # first token
            active[user].first_token()
            heapq.heappush(events, (clock.now + 0.16, user, 2))
        else:  # done
            lease = active.pop(user)
            lease.release(Outcome.SUCCESS)
            served[lease.endpoint.name] += 1
            heapq.heappush(events, (clock.now + rng.random() * 0.01, user, 0))
    assert served["r4"] < 0.02 * sum(served.values()), served
