"""When a stream's first token is late enough to ask a second endpoint.

A hedge is a second attempt at the same streamed request on another eligible
endpoint, started when the first attempt has had no first token after
:func:`hedge_delay`; the first of the two to produce one answers, the other
is cancelled (``proxy.upstream``, ``proxy.hedging``). Hedges spend their own
budget, a share of recent requests (``budget``), like retries.

The delay depends on what the pool has learned of first tokens (the last 64
per endpoint and 256 over the pool, with the expected prefill of the prompt's
uncached part taken off, ``balance.lease``):

- **The endpoint is slow now** (:func:`slow_now`): its typical first token
  (the median of its last 8, or its Peak EWMA cost while it has fewer than
  4) is at least ``slow_factor`` times the pool's median. The pool then
  routes a stream there only as a probe, at most one per
  ``probe_interval_s`` and only when the hedge budget has room (else it takes
  the other candidate), and the probe is hedged after ``min_delay_s``: if
  the endpoint has recovered it answers first and its new first tokens count;
  if not, the hedge answers. A new endpoint, whose cost is the default RTT,
  counts as slow until it has answered.
- **Otherwise** only a stall is hedged: past ``stall_factor`` times the
  ``quantile`` of its own recent first tokens (of the pool's while it has
  fewer than ``min_samples``). Ordinary jitter is not hedged, so the budget
  is not spent on attempts the first endpoint then wins anyway.

The prompt's expected prefill is added to either. Until the pool has
``min_samples`` first tokens, the delay is ``initial_delay_s`` (0: no hedge).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.balance.recent import RecentSamples
from gateway.balance.retry_budget import RetryBudgetConfig


@dataclass(frozen=True)
class HedgeConfig:
    enabled: bool = True
    quantile: float = 0.99
    stall_factor: float = 1.5
    slow_factor: float = 4.0
    min_delay_s: float = 0.01
    min_samples: int = 16
    initial_delay_s: float = 0.0
    probe_interval_s: float = 1.0
    budget: RetryBudgetConfig = field(
        default_factory=lambda: RetryBudgetConfig(ratio=0.05, min_per_s=0.5)
    )


def slow_now(
    config: HedgeConfig, own: RecentSamples, own_cost_s: float, pool: RecentSamples
) -> bool:
    """Whether an endpoint's typical first token is ``slow_factor`` times the pool's."""
    if not config.enabled or len(pool) < config.min_samples:
        return False
    typical = pool.quantile(0.5)
    own_typical = own.latest_median(8) if len(own) >= 4 else own_cost_s
    return (
        typical is not None
        and own_typical is not None
        and (own_typical >= config.slow_factor * typical)
    )


def hedge_delay(
    config: HedgeConfig,
    own: RecentSamples,
    own_cost_s: float,
    pool: RecentSamples,
    prefill_s: float,
) -> float | None:
    """How long a stream may wait for its first token before a hedge; None: no hedge."""
    if not config.enabled:
        return None
    if len(pool) < config.min_samples:
        return config.initial_delay_s + prefill_s if config.initial_delay_s > 0 else None
    if slow_now(config, own, own_cost_s, pool):
        return config.min_delay_s + prefill_s
    learned = own if len(own) >= config.min_samples else pool
    stall = (learned.quantile(config.quantile) or 0.0) * config.stall_factor
    return max(config.min_delay_s, stall) + prefill_s
