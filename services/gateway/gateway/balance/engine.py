"""Engine-aware load: fold a model server's own queue into the balancer's view.

A gateway replica only sees its own in-flight requests. vLLM publishes the
whole engine's queue on ``/metrics`` (``vllm:num_requests_waiting``) and how
full its KV cache is (``vllm:kv_cache_usage_perc``); requests waiting there
will be served before ours, so each one counts as an extra pending request.
A KV cache close to full means new sequences will wait or preempt others, so
usage above ``kv_threshold`` adds up to ``kv_weight`` more.

Data older than ``stale_after_s`` is ignored: a poller that stopped must not
pin an endpoint's load forever. This module is pure; the poller lives in
:mod:`gateway.balance.engine_poller`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineConfig:
    stale_after_s: float = 5.0
    queue_weight: float = 1.0
    kv_threshold: float = 0.9
    kv_weight: float = 4.0


@dataclass(frozen=True)
class EngineStats:
    waiting: float
    kv_usage: float | None
    at: float  # pool clock time of the reading


def extra_pending(stats: EngineStats | None, now: float, config: EngineConfig) -> float:
    """How many pending requests the engine's own state is worth (0 if unknown or stale)."""
    if stats is None or now - stats.at > config.stale_after_s:
        return 0.0
    extra = config.queue_weight * max(0.0, stats.waiting)
    usage = stats.kv_usage
    if usage is not None and usage > config.kv_threshold:
        span = max(1e-9, 1.0 - config.kv_threshold)
        extra += config.kv_weight * min(1.0, (usage - config.kv_threshold) / span)
    return extra
