"""The hedge delay: learned quantiles, the lower of the endpoint's and the pool's,
the prompt's expected prefill on top, a floor, and nothing before it is learned."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.balance import Outcome, Pool
from gateway.balance.hedge import HedgeConfig, hedge_delay, slow_now
from gateway.balance.recent import RecentSamples
from gwkit import FakeClock

from .conftest import PoolFactory, spec


def samples(*values: float, size: int = 64) -> RecentSamples:
    kept = RecentSamples(size)
    for value in values:
        kept.observe(value)
    return kept


def test_quantiles_by_nearest_rank_over_the_last_samples_only() -> None:
    kept = samples(*[i / 100 for i in range(1, 101)], size=100)
    assert kept.quantile(0.5) == pytest.approx(0.50)
    assert kept.quantile(0.95) == pytest.approx(0.95)
    kept.observe(5.0)  # the oldest (0.01) leaves; the newest is the maximum
    assert kept.quantile(1.0) == 5.0 and kept.quantile(0.0) == pytest.approx(0.02)
    assert RecentSamples().quantile(0.5) is None


FAST = 0.020


def test_no_hedge_before_enough_first_tokens_are_known() -> None:
    config = HedgeConfig(min_samples=16)
    few = samples(*[FAST] * 15)
    assert hedge_delay(config, few, FAST, few, prefill_s=0.0) is None
    early = HedgeConfig(initial_delay_s=0.3)
    assert hedge_delay(early, few, FAST, few, 0.1) == pytest.approx(0.4)


def test_a_slow_endpoint_is_hedged_at_once_a_normal_one_only_when_it_stalls() -> None:
    config = HedgeConfig(quantile=0.99, stall_factor=1.5, slow_factor=2.0, min_delay_s=0.01)
    pool = samples(*[FAST] * 60, 0.030, 0.200)
    slow = samples(*[0.200] * 32)
    assert hedge_delay(config, slow, 0.2, pool, 0.0) == pytest.approx(0.01)
    fast = samples(*[FAST] * 31, 0.024)
    assert hedge_delay(config, fast, FAST, pool, 0.0) == pytest.approx(1.5 * 0.024)


def test_slowness_is_its_latest_median_or_while_it_has_few_its_cost() -> None:
    config = HedgeConfig(min_delay_s=0.01)
    pool = samples(*[FAST] * 64)
    unknown = samples()  # a new endpoint: no first token yet, the default cost
    assert hedge_delay(config, unknown, 0.5, pool, 0.0) == pytest.approx(0.01)
    recovered_cost = samples(*[0.2] * 8)  # its cost decayed, its last answers were slow
    assert hedge_delay(config, recovered_cost, FAST, pool, 0.0) == pytest.approx(0.01)
    fast = samples(*[FAST] * 8)  # too few of its own: the pool's quantile for a stall
    assert hedge_delay(config, fast, FAST, pool, 0.0) == pytest.approx(1.5 * FAST)


def test_the_prompt_s_prefill_is_added_and_the_floor_holds() -> None:
    config = HedgeConfig(min_samples=1, min_delay_s=0.05)
    kept = samples(0.01)
    assert hedge_delay(config, kept, 0.01, kept, prefill_s=0.0) == pytest.approx(0.05)
    assert hedge_delay(config, kept, 0.01, kept, prefill_s=0.2) == pytest.approx(0.25)
    assert hedge_delay(HedgeConfig(enabled=False), kept, 0.01, kept, 0.0) is None


def test_the_latest_median_follows_a_recovery() -> None:
    kept = samples(*[0.2] * 64)
    for _ in range(5):
        kept.observe(0.02)
    assert kept.latest_median(8) == pytest.approx(0.02)
    assert kept.quantile(0.5) == pytest.approx(0.2)
    pool = samples(*[FAST] * 64)
    assert not slow_now(HedgeConfig(), kept, 0.2, pool), "five fast answers: not slow now"


def answer(pool: Pool, clock: FakeClock, ttft: dict[str, float], stream: bool = True) -> str:
    lease = pool.acquire("m", stream=stream)
    clock.advance(ttft[lease.endpoint.name])
    lease.first_token()
    lease.release(Outcome.SUCCESS)
    return lease.endpoint.name


def test_a_slow_endpoint_gets_streams_only_as_probes(
    make_pool: PoolFactory, clock: FakeClock
) -> None:
    pool = make_pool(spec("a"), spec("b"), spec("slow"))
    ttft = {"a": 0.02, "b": 0.02, "slow": 0.2}
    for name in ttft:  # every endpoint has answered a few times
        for _ in range(6):
            lease = pool.acquire("m", exclude=set(ttft) - {name})
            clock.advance(ttft[name])
            lease.first_token()
            lease.release(Outcome.SUCCESS)
    served = Counter(answer(pool, clock, ttft) for _ in range(1000))  # 1000 x 20 ms = 20 s
    assert served["slow"] <= 21, f"at most one probe a second, got {served}"
    assert served["a"] > 400 and served["b"] > 400
    assert not slow_now(HedgeConfig(enabled=False), samples(*[0.2] * 8), 0.2, samples(*[FAST] * 64))


def test_a_ring_asked_often_is_resorted_only_every_so_many_samples() -> None:
    kept = RecentSamples(8, resort_after=4)
    for value in (1.0, 2.0, 3.0, 4.0):
        kept.observe(value)
    assert kept.quantile(1.0) == 4.0
    for value in (10.0, 11.0, 12.0):
        kept.observe(value)
    assert kept.quantile(1.0) == 4.0, "three new samples: the last sort still stands"
    kept.observe(13.0)
    assert kept.quantile(1.0) == 13.0, "the fourth: sorted again"
