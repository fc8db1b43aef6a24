"""Is a model pool saturated? From what the gateway already knows of its endpoints.

Three signals, each optional (``FlowConfig``):

- **slots**: ``endpoint_concurrency`` requests per endpoint (vLLM's
  ``max_num_seqs``, the mock's ``MOCKLLM_MAX_CONCURRENCY``): the pool's
  capacity is that times its endpoints the breaker allows, and it is full when
  this replica has that many requests admitted (``flow.control`` counts them);
- **engine queue**: every endpoint's own waiting queue (vLLM's
  ``num_requests_waiting``, read by ``balance.engine_poller``, fresh readings
  only) is at least ``engine_waiting`` deep. This is the one signal that sees
  the other gateway replicas' requests;
- **first tokens**: every endpoint's TTFT cost (Peak EWMA) is above ``ttft_s``.

A pool is full on a signal only when every endpoint is: while one has room,
routing sends the request there. Pure: the readings come from
``Pool.readings``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.balance.pool import Reading
from gateway.flow.config import FlowConfig


@dataclass(frozen=True, slots=True)
class Fleet:
    capacity: int | None  # requests the pool runs at once; None: not known (no slot signal)
    full: str  # "" or the signal that says every endpoint is full: "engine_queue", "ttft"


def assess(readings: Sequence[Reading], config: FlowConfig) -> Fleet:
    if not readings:  # nothing eligible: routing decides (panic mode, or a 503 of its own)
        return Fleet(None, "")
    capacity = config.endpoint_concurrency * len(readings) or None
    if config.engine_waiting > 0 and all(
        r.waiting is not None and r.waiting >= config.engine_waiting for r in readings
    ):
        return Fleet(capacity, "engine_queue")
    if config.ttft_s > 0 and all(r.ttft_cost > config.ttft_s for r in readings):
        return Fleet(capacity, "ttft")
    return Fleet(capacity, "")
