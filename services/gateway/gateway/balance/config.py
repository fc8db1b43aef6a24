"""The endpoint pool's configuration (mapped from the settings in ``gateway.settings``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.balance.affinity import AffinityConfig
from gateway.balance.breaker import BreakerConfig
from gateway.balance.engine import EngineConfig
from gateway.balance.hedge import HedgeConfig
from gateway.balance.retry_budget import RetryBudgetConfig

DECODE_WEIGHT = 0.1  # see docs/routing.md, "decode weight"


@dataclass(frozen=True)
class PoolConfig:
    tau_s: float = 10.0  # Peak EWMA decay time
    default_rtt_s: float = 0.5  # cost of an endpoint never heard from
    penalty_s: float = 5.0  # latency sample recorded for a failure
    # Weight in the load of a stream past its first token (one still waiting
    # for it weighs 1): low for continuous-batching servers, 1 for servers
    # that run one request at a time. See gateway.balance.endpoint.
    decode_weight: float = DECODE_WEIGHT
    ttft_failure_limit_s: float = 30.0  # a slower first token counts as a failure
    default_retry_after_s: float = 1.0  # a 429 without Retry-After
    max_retry_after_s: float = 60.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)
    hedge: HedgeConfig = field(default_factory=HedgeConfig)
