"""The ``GATEWAY_FLOW_*`` settings, a part of ``GatewaySettings`` kept beside the code they set.

``GatewaySettings`` (``gateway.settings``) inherits these fields, so they are
read with the rest, once, with the same prefix; defaults are ``FlowConfig``'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings

from gateway.flow.config import FlowConfig

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(FlowConfig)}


def _field(name: str, description: str, **bounds: Any) -> Any:
    return Field(_DEFAULTS[name], description=description, **bounds)


class FlowSettings(BaseSettings):
    flow_endpoint_concurrency: int = _field(
        "endpoint_concurrency",
        "requests one endpoint runs at once (vLLM max_num_seqs); more wait at the gateway"
        " (0: unknown)",
        ge=0,
    )
    flow_engine_waiting: float = _field(
        "engine_waiting", "every endpoint's vLLM waiting queue this deep: saturated (0: off)", ge=0
    )
    flow_ttft_s: float = _field(
        "ttft_s", "every endpoint's TTFT cost above this: saturated (0: off)", ge=0
    )
    flow_reserve: int = _field(
        "reserve", "free slots kept for tenants under their fair share (0: work-conserving)", ge=0
    )
    flow_queue_per_tenant: int = _field("queue_per_tenant", "more of a tenant waiting: 429", ge=0)
    flow_queue_max: int = _field("queue_max", "more waiting in a pool: 503", ge=0)
    flow_max_wait_s: float = _field(
        "max_wait_s", "deadline in the queue (x-llmgw-max-wait-ms may change it)", gt=0
    )
    flow_max_wait_limit_s: float = _field(
        "max_wait_limit_s", "the longest deadline x-llmgw-max-wait-ms may ask for", gt=0
    )
    flow_quantum_tokens: int = _field(
        "quantum_tokens", "deficit round robin credit per turn, times the tenant's weight", ge=1
    )
    flow_default_max_tokens: int = _field(
        "default_max_tokens", "the cost estimate of a request without max_tokens", ge=1
    )

    def flow_config(self, *, engine_metrics: bool = True) -> FlowConfig:
        return FlowConfig(
            endpoint_concurrency=self.flow_endpoint_concurrency,
            engine_waiting=self.flow_engine_waiting if engine_metrics else 0.0,
            ttft_s=self.flow_ttft_s,
            reserve=self.flow_reserve,
            queue_per_tenant=self.flow_queue_per_tenant,
            queue_max=self.flow_queue_max,
            max_wait_s=self.flow_max_wait_s,
            max_wait_limit_s=self.flow_max_wait_limit_s,
            quantum_tokens=self.flow_quantum_tokens,
            default_max_tokens=self.flow_default_max_tokens,
        )
