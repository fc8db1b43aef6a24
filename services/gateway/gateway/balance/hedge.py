"""When a stream's first token is late enough to ask a second endpoint.

A hedge is a second attempt at the same streamed request on another eligible
endpoint, started when the first attempt has had no first token for longer
than :func:`hedge_delay`; the first of the two to produce one answers, the
other is cancelled (``proxy.upstream``). The delay is the ``quantile`` of
recent times to first token, the lower of the endpoint's own and the whole
pool's (an endpoint that is slow all the time has a slow quantile of its own;
against the pool's, its requests are still late), plus the prefill expected
for the uncached part of this prompt (a long new prompt is rightly slower),
and never less than ``min_delay_s``. Each quantile needs ``min_samples``
first tokens; until then the delay is ``initial_delay_s`` (0: no hedge before
the pool has learned what a first token takes). Hedges spend their own
budget, a share of recent requests (``budget``), like retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.balance.recent import RecentSamples
from gateway.balance.retry_budget import RetryBudgetConfig


@dataclass(frozen=True)
class HedgeConfig:
    enabled: bool = True
    quantile: float = 0.95
    min_delay_s: float = 0.01
    min_samples: int = 16
    initial_delay_s: float = 0.0
    budget: RetryBudgetConfig = field(
        default_factory=lambda: RetryBudgetConfig(ratio=0.05, min_per_s=0.5)
    )


def hedge_delay(
    config: HedgeConfig, own: RecentSamples, pool: RecentSamples, prefill_s: float
) -> float | None:
    """How long a stream may wait for its first token before a hedge; None: no hedge."""
    if not config.enabled:
        return None
    known = [
        q
        for samples in (own, pool)
        if len(samples) >= config.min_samples
        and (q := samples.quantile(config.quantile)) is not None
    ]
    if not known:
        return config.initial_delay_s + prefill_s if config.initial_delay_s > 0 else None
    return max(config.min_delay_s, min(known) + prefill_s)
