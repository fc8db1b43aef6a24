"""Admission: global load shedding, then the tenant's rate and concurrency limits.

::

    admit(tenant)
      in flight >= max_in_flight ──────────▶ Overloaded 503, Retry-After 1
      tenant has no limits ────────────────▶ Permit (Redis not touched)
      Redis healthy (or this is the probe) ─▶ one EVALSHA (shared.py) ─ refused ▶ RateLimited 429
           └ error / timeout ─┐                                      └ allowed ▶ Permit
      Redis in back-off ──────┴─▶ local share: limits / replicas ─── refused ▶ RateLimited 429
                                                                  └ allowed ▶ Permit

``Permit.release()`` (from a ``finally``, once the response has ended) frees
the global slot and the tenant's stream slot; a Redis lease is removed in a
background task, or expires after ``lease_ttl_s`` if Redis cannot be reached.

A request is never failed because Redis is down: an error or a call slower
than ``redis_timeout_s`` moves the decision to the in-process limits at once,
and Redis is tried again after an exponential back-off (one probe at a time).
Calls made in the same event-loop turn share one pipelined round trip
(``batch.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.errors import Overloaded, RateLimited
from gateway.tenancy.backoff import Backoff
from gateway.tenancy.bucket import Gcra, LocalShare, local_share
from gateway.tenancy.guard import REDIS_ERRORS, Guard
from gateway.tenancy.model import Tenant
from gateway.tenancy.shared import (
    ALLOWED,
    RATE_LIMITED,
    TOO_MANY_STREAMS,
    SharedLimits,
    Verdict,
)
from llmgw_common.logs import get_logger

log = get_logger("gateway.tenancy")


@dataclass(frozen=True)
class LimitsConfig:
    max_in_flight: int = 1024  # per replica; 0: no global limit
    replicas: int = 1  # expected gateway replicas: the local fallback allows limits / replicas
    redis_timeout_s: float = 0.05  # longest wait for Redis before deciding locally
    backoff_s: float = 0.5  # first wait before trying Redis again; doubles per failure
    backoff_max_s: float = 10.0
    lease_ttl_s: float = 30.0  # a crashed replica's stream slots are freed after this
    prefix: str = "llmgw"


@dataclass(frozen=True)
class LimiterStats:
    in_flight: int
    redis_configured: bool
    redis_healthy: bool
    shed: int  # 503: over max_in_flight
    rate_limited: int  # 429: a tenant's rate or stream limit
    local_decisions: int  # tenant decisions taken without Redis
    redis_errors: int


class Permit:
    """A slot held until :meth:`release`; releasing twice is harmless."""

    __slots__ = ("_lease", "_limiter", "_released", "_tenant")

    def __init__(self, limiter: Limiter, tenant: str | None, lease: str | None) -> None:
        self._limiter = limiter
        self._tenant = tenant  # set when the tenant has a stream limit
        self._lease = lease  # set when the slot is a lease in Redis
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._limiter._release(self._tenant, self._lease)


class _Local:
    """A tenant's in-process limits, rebuilt when its settings change."""

    __slots__ = ("bucket", "share", "tenant")

    def __init__(self, tenant: Tenant, share: LocalShare) -> None:
        self.tenant = tenant
        self.share = share
        self.bucket = Gcra(share.rate) if share.rate is not None else None


class Limiter:
    def __init__(
        self,
        config: LimitsConfig,
        redis: aioredis.Redis | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._shared = None
        if redis is not None:
            self._shared = SharedLimits(
                redis,
                prefix=config.prefix,
                lease_ttl_s=config.lease_ttl_s,
                timeout_s=config.redis_timeout_s,
            )
        self._guard = Guard("tenancy", Backoff(config.backoff_s, config.backoff_max_s), clock)
        self._in_flight = 0
        self._streams: dict[str, int] = {}  # tenant -> its permits in flight on this replica
        self._local: dict[str, _Local] = {}
        self._leases: dict[str, set[str]] = {}  # tenant -> lease ids this replica holds in Redis
        self._replica = uuid.uuid4().hex[:12]
        self._seq = itertools.count()
        self._renewer: asyncio.Task[None] | None = None
        self._shed = self._rate_limited = self._local_decisions = 0

    async def admit(self, tenant: Tenant) -> Permit:
        """A permit for one request, or Overloaded (503) / RateLimited (429)."""
        limit = self._config.max_in_flight
        if limit and self._in_flight >= limit:
            self._shed += 1
            raise Overloaded("The gateway is over capacity; retry shortly", retry_after=1)
        self._in_flight += 1
        if not tenant.limited:
            return Permit(self, None, None)
        try:
            lease = await self._admit_tenant(tenant)
        except BaseException:
            self._in_flight -= 1
            raise
        if tenant.max_streams is not None:
            self._streams[tenant.name] = self._streams.get(tenant.name, 0) + 1
            return Permit(self, tenant.name, lease)
        return Permit(self, None, None)

    async def close(self) -> None:
        """Stop renewing leases and finish pending releases (the Redis client is the caller's)."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        if self._shared is not None:
            await self._shared.batcher.close()

    def stats(self) -> LimiterStats:
        return LimiterStats(
            in_flight=self._in_flight,
            redis_configured=self._shared is not None,
            redis_healthy=self._shared is not None and self._guard.healthy,
            shed=self._shed,
            rate_limited=self._rate_limited,
            local_decisions=self._local_decisions,
            redis_errors=self._guard.errors,
        )

    async def _admit_tenant(self, tenant: Tenant) -> str | None:
        """The lease id when a Redis lease was taken; raises RateLimited when refused."""
        now = self._clock()
        if self._shared is not None and self._guard.ready():
            decided = await self._admit_shared(self._shared, tenant)
            if decided is not None:
                verdict, lease = decided
                if verdict.outcome != ALLOWED:
                    raise self._refusal(tenant, verdict)
                if lease is not None:
                    self._leases.setdefault(tenant.name, set()).add(lease)
                    self._start_renewer()
                return lease
        self._admit_local(tenant, now)
        return None

    async def _admit_shared(
        self, shared: SharedLimits, tenant: Tenant
    ) -> tuple[Verdict, str | None] | None:
        """Redis's verdict, or None when Redis failed (the caller decides locally)."""
        lease = f"{self._replica}:{next(self._seq)}" if tenant.max_streams is not None else None
        # Cancelled: a lease taken for us is given back by ``shared``.
        verdict = await self._guard.call(lambda: shared.admit(tenant, lease or ""))
        if verdict is None:
            if lease is not None:  # the script may have run before the deadline
                shared.release(tenant.name, lease)
            return None
        return verdict, lease if verdict.outcome == ALLOWED else None

    def _admit_local(self, tenant: Tenant, now: float) -> None:
        self._local_decisions += 1
        local = self._local.get(tenant.name)
        if local is None or local.tenant != tenant:
            local = _Local(tenant, local_share(tenant, self._config.replicas))
            self._local[tenant.name] = local
        streams = local.share.max_streams
        if streams is not None and self._streams.get(tenant.name, 0) >= streams:
            raise self._refusal(tenant, Verdict(TOO_MANY_STREAMS, 1.0))
        if local.bucket is not None:
            wait = local.bucket.take(now)
            if wait > 0:
                raise self._refusal(tenant, Verdict(RATE_LIMITED, wait))

    def _refusal(self, tenant: Tenant, verdict: Verdict) -> RateLimited:
        self._rate_limited += 1
        if verdict.outcome == TOO_MANY_STREAMS:
            message = (
                f"Too many concurrent requests for tenant {tenant.name!r}: "
                f"the limit is {tenant.max_streams}"
            )
        else:
            message = (
                f"Rate limit reached for tenant {tenant.name!r}: "
                f"{tenant.requests_per_s:g} requests per second"
            )
        return RateLimited(message, retry_after=verdict.retry_after_s)

    def _release(self, tenant: str | None, lease: str | None) -> None:
        self._in_flight -= 1
        if tenant is None:
            return
        left = self._streams.get(tenant, 1) - 1
        if left > 0:
            self._streams[tenant] = left
        else:
            self._streams.pop(tenant, None)
        if lease is not None and self._shared is not None:
            held = self._leases.get(tenant)
            if held is not None:
                held.discard(lease)
                if not held:
                    del self._leases[tenant]
            self._shared.release(tenant, lease)

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.lease_ttl_s / 3)
            try:
                await self.renew_leases()
            except Exception as exc:  # a bug must not stop the renewals
                log.error("tenancy_renew_error", exc_info=exc)

    async def renew_leases(self) -> None:
        """Push back the expiry of every lease this replica holds (one batch for all tenants)."""
        if self._shared is None or not self._leases:
            return
        renewals = [self._shared.renew(t, sorted(held)) for t, held in self._leases.items()]
        for result in await asyncio.gather(*renewals, return_exceptions=True):
            if isinstance(result, BaseException):
                if not isinstance(result, REDIS_ERRORS):
                    raise result
                log.warning("tenancy_redis_renew_failed", error=type(result).__name__)
                return
