"""A tenant's limits shared by every gateway replica through Redis.

Two keys per tenant, with the tenant in a hash tag so that both land in the same
Redis Cluster slot and one script can touch both::

    {prefix}:limits:{<tenant>}:rate      STRING  GCRA theoretical arrival time, µs of Redis TIME
    {prefix}:limits:{<tenant>}:streams   ZSET    member = lease id, score = lease expiry (µs)

``admit`` is one ``EVALSHA`` (one round trip, shared with the other commands of
the same event-loop turn: ``batch.py``): drop expired leases; refuse if the
tenant already holds ``max_streams`` leases; refuse if the bucket has no token;
otherwise take the token and add the lease. Nothing is written for a refused
request. Time is Redis's own ``TIME``, so replicas whose clocks disagree still
share one bucket.

A lease expires ``lease_ttl`` after it was taken or last renewed: a replica
renews the leases it holds every third of the TTL, so a stream may last as long
as it needs, and the slots of a replica that crashed are free within one TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.tenancy.batch import Batcher
from gateway.tenancy.model import Tenant

ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local max_streams = tonumber(ARGV[3])
if max_streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_streams then
    return {2, 0}
  end
end
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * tonumber(ARGV[2])
  if allow_at - now > 1 then
    return {1, math.ceil((allow_at - now) / 1000)}
  end
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat),
             'PX', math.ceil((new_tat - now) / 1000) + 1)
end
if max_streams > 0 then
  local ttl_ms = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], now + ttl_ms * 1000, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
end
return {0, 0}
"""

RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl_ms = tonumber(ARGV[1])
local expiry = now + ttl_ms * 1000
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl_ms)
return 0
"""

ALLOWED, RATE_LIMITED, TOO_MANY_STREAMS = 0, 1, 2


@dataclass(frozen=True)
class Verdict:
    outcome: int  # ALLOWED, RATE_LIMITED or TOO_MANY_STREAMS
    retry_after_s: float


class SharedLimits:
    """The Redis side of the limiter: one script per decision, batched per loop turn."""

    def __init__(
        self, redis: aioredis.Redis, *, prefix: str, lease_ttl_s: float, timeout_s: float
    ) -> None:
        self._prefix = prefix
        self._ttl_ms = max(1, round(lease_ttl_s * 1000))
        self.batcher = Batcher(redis, timeout_s)
        self._admit = self.batcher.script(ADMIT)
        self._renew = self.batcher.script(RENEW)

    def rate_key(self, tenant: str) -> str:
        return f"{self._prefix}:limits:{{{tenant}}}:rate"

    def streams_key(self, tenant: str) -> str:
        return f"{self._prefix}:limits:{{{tenant}}}:streams"

    async def admit(self, tenant: Tenant, lease_id: str) -> Verdict:
        """Take a token and, when the tenant has a stream limit, a lease named ``lease_id``.

        If the caller is cancelled before Redis answers, a lease taken for it is given back.
        """
        interval_us = 1e6 / tenant.requests_per_s if tenant.requests_per_s else 0
        args = (
            repr(interval_us),
            tenant.effective_burst,
            tenant.max_streams or 0,
            self._ttl_ms,
            lease_id,
        )
        keys = (self.rate_key(tenant.name), self.streams_key(tenant.name))

        def give_back(reply: list[int]) -> None:
            if lease_id and int(reply[0]) == ALLOWED:
                self.release(tenant.name, lease_id)

        outcome, retry_ms = await self.batcher.evalsha(self._admit, keys, args, give_back)
        outcome = int(outcome)
        if outcome == TOO_MANY_STREAMS:
            return Verdict(outcome, 1.0)  # unknown: when one of the tenant's streams ends
        return Verdict(outcome, int(retry_ms) / 1000)

    async def renew(self, tenant: str, lease_ids: list[str]) -> None:
        """Push the expiry of leases still held; a lease already gone stays gone."""
        await self.batcher.evalsha(
            self._renew, (self.streams_key(tenant),), (self._ttl_ms, *lease_ids)
        )

    def release(self, tenant: str, lease_id: str) -> None:
        """Remove a lease with the next batch (if that fails, the lease expires)."""
        self.batcher.send("ZREM", self.streams_key(tenant), lease_id)
