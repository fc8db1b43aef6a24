"""A request's place in flow control, from its tenant, its body and two headers.

- ``x-llmgw-priority: interactive | batch``: the request's class. A tenant's
  ``priority`` is both its default and the highest class it may use; a request
  asking for more gets the tenant's (quietly: a client that sends the header
  to every gateway must not fail on one that limits it).
- ``x-llmgw-max-wait-ms``: how long it may wait in the queue, at most
  ``GATEWAY_FLOW_MAX_WAIT_LIMIT_S``; without it, ``GATEWAY_FLOW_MAX_WAIT_S``.

Its cost is its estimated tokens: the prompt's (the routing prefix's count
when prefix affinity computed one, else a quarter of the body's bytes) plus
``max_tokens`` (or ``default_max_tokens`` when the request sets none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.errors import InvalidRequest
from gateway.flow.config import PRIORITIES, FlowConfig
from gateway.flow.control import FlowRequest
from gateway.tenancy import Tenant

PRIORITY_HEADER = "x-llmgw-priority"
MAX_WAIT_HEADER = "x-llmgw-max-wait-ms"


def flow_request(
    config: FlowConfig,
    tenant: Tenant,
    model: str,
    headers: Mapping[str, str],
    *,
    prompt_tokens: int,
    max_tokens: int | None,
) -> FlowRequest:
    allowed = PRIORITIES.index(tenant.priority)
    priority = allowed
    asked = headers.get(PRIORITY_HEADER)
    if asked is not None:
        name = asked.strip().lower()
        if name not in PRIORITIES:
            raise InvalidRequest(f"{PRIORITY_HEADER} must be one of {', '.join(PRIORITIES)}")
        priority = max(allowed, PRIORITIES.index(name))  # a lower class, or the tenant's
    wait = config.max_wait_s
    raw = headers.get(MAX_WAIT_HEADER)
    if raw is not None:
        try:
            ms = float(raw)
        except ValueError:
            ms = math.nan
        if not ms >= 0 or math.isinf(ms):
            raise InvalidRequest(f"{MAX_WAIT_HEADER} must be a number of milliseconds >= 0")
        wait = min(ms / 1000, config.max_wait_limit_s)
    limit = max_tokens if max_tokens is not None else config.default_max_tokens
    return FlowRequest(
        model=model,
        tenant=tenant.name,
        priority=priority,
        weight=tenant.weight,
        cost=float(max(1, prompt_tokens + limit)),
        max_wait_s=wait,
    )
