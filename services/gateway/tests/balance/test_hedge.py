"""The hedge delay: learned quantiles, the lower of the endpoint's and the pool's,
the prompt's expected prefill on top, a floor, and nothing before it is learned."""

from __future__ import annotations

import pytest

from gateway.balance.hedge import HedgeConfig, hedge_delay
from gateway.balance.recent import RecentSamples


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


def test_no_hedge_before_enough_first_tokens_are_known() -> None:
    config = HedgeConfig(min_samples=16)
    few = samples(*[0.02] * 15)
    assert hedge_delay(config, few, few, prefill_s=0.0) is None
    assert hedge_delay(HedgeConfig(initial_delay_s=0.3), few, few, 0.1) == pytest.approx(0.4)


def test_a_slow_endpoint_is_held_to_the_pool_and_a_fast_one_to_itself() -> None:
    config = HedgeConfig(quantile=0.95, min_samples=16, min_delay_s=0.0)
    slow = samples(*[0.200] * 32)
    fast = samples(*[0.010] * 32)
    pool = samples(*[0.020] * 60, 0.200, 0.200)
    assert hedge_delay(config, slow, pool, 0.0) == pytest.approx(0.020)
    assert hedge_delay(config, fast, pool, 0.0) == pytest.approx(0.010)


def test_the_prompt_s_prefill_is_added_and_the_floor_holds() -> None:
    config = HedgeConfig(quantile=0.5, min_samples=1, min_delay_s=0.05)
    kept = samples(0.01)
    assert hedge_delay(config, kept, kept, prefill_s=0.0) == pytest.approx(0.05)
    assert hedge_delay(config, kept, kept, prefill_s=0.2) == pytest.approx(0.21)
    assert hedge_delay(HedgeConfig(enabled=False), kept, kept, 0.0) is None
