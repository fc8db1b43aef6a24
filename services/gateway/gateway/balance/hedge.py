"""When a stream's first token is late enough to ask a second endpoint.

A hedge is a second attempt at the same streamed request on another eligible
endpoint, started when the first attempt has had no first token after
:func:`hedge_delay`; the first of the two to produce one answers, the other
is cancelled (``proxy.upstream``, ``proxy.hedging``). Hedges spend their own
budget, a share of recent requests (``budget``), like retries.

The delay depends on what the pool has learned of first tokens (the last 64
per endpoint and 256 over the pool, with the expected prefill of the prompt's
uncached part taken off, ``balance.lease``):

- **The endpoint is slow now**: its typical first token (the median of its
  own recent ones, or its Peak EWMA cost, whichever is higher) is at least
  ``slow_factor`` times the pool's median. Routing sends it little, but what
  it gets would wait its whole slow first token: hedge after ``min_delay_s``
  (the chance to show it has recovered: if it answers first, its new sample
  counts). A new endpoint, whose cost is the default RTT, counts as slow
  until it has answered.
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
    slow_factor: float = 2.0
    min_delay_s: float = 0.01
    min_samples: int = 16
    initial_delay_s: float = 0.0
    budget: RetryBudgetConfig = field(
        default_factory=lambda: RetryBudgetConfig(ratio=0.05, min_per_s=0.5)
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
    typical = pool.quantile(0.5) if len(pool) >= config.min_samples else None
    if typical is None:
        return config.initial_delay_s + prefill_s if config.initial_delay_s > 0 else None
    own_typical = own.quantile(0.5) if len(own) >= 4 else None
    if max(own_cost_s, own_typical or 0.0) >= config.slow_factor * typical:
        return config.min_delay_s + prefill_s
    learned = own if len(own) >= config.min_samples else pool
    stall = (learned.quantile(config.quantile) or typical) * config.stall_factor
    return max(config.min_delay_s, stall) + prefill_s
