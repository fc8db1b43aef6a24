"""The token bucket as GCRA, and the per-replica share of a tenant's limits.

GCRA (the generic cell rate algorithm) is a token bucket kept as one number:
the theoretical arrival time ``tat`` of the next request if requests came at
exactly the allowed rate. With emission interval ``T = 1 / rate`` and a bucket
of ``burst`` tokens, a request at ``now`` is allowed when
``max(tat, now) + T - burst * T <= now``; it then moves ``tat`` on by ``T``.
Otherwise it must wait until that inequality holds: that wait is the
``Retry-After``. The same arithmetic runs inside Redis (``shared.py``) for the
bucket all replicas share; this class is the in-process one used without Redis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.tenancy.model import Tenant

TOLERANCE_S = 1e-6  # float rounding must not refuse a request that arrives right on time


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: int

    @property
    def interval_s(self) -> float:
        return 1.0 / self.per_s


class Gcra:
    """One tenant's bucket. Pure: ``now`` is an argument."""

    __slots__ = ("_tat", "rate")

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._tat = -math.inf

    def take(self, now: float) -> float:
        """Take one token: 0.0 when allowed, else the seconds to wait (nothing taken)."""
        interval = self.rate.interval_s
        new_tat = max(self._tat, now) + interval
        allow_at = new_tat - self.rate.burst * interval
        if allow_at - now > TOLERANCE_S:
            return allow_at - now
        self._tat = new_tat
        return 0.0


@dataclass(frozen=True)
class LocalShare:
    """What one replica may allow on its own: the tenant's limits / replicas."""

    rate: Rate | None
    max_streams: int | None


def local_share(tenant: Tenant, replicas: int) -> LocalShare:
    """A tenant's limits divided among ``replicas`` (never below one request)."""
    replicas = max(1, replicas)
    rate = None
    if tenant.requests_per_s is not None:
        burst = max(1, math.ceil(tenant.effective_burst / replicas))
        rate = Rate(tenant.requests_per_s / replicas, burst)
    streams = None
    if tenant.max_streams is not None:
        streams = max(1, math.ceil(tenant.max_streams / replicas))
    return LocalShare(rate, streams)
