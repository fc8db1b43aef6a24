"""Token budgets: a tenant's tokens per minute (prompt + completion), shared through Redis.

::

    reserve(tenant, prompt estimate + max_tokens)       at admission, after the body is read
      Redis healthy: one script takes them from the tenant's bucket ─ short ▶ 429 (+ the wait)
      Redis away (or failing): the local share, tokens_per_min / replicas ─ short ▶ 429
    Reservation.settle(used)    the answer ended: the real usage; the difference goes back
                                (or, when the estimate was short, is taken: never refused)
    Reservation.release()       nothing was generated (refused later, failed before the
                                first byte, a cache hit): everything goes back

The bucket is GCRA over tokens (``bucket.py`` does the same for requests): a
token moves the tenant's theoretical arrival time ``tat`` on by ``T = 60 s /
tokens_per_min``, and the bucket holds one minute's worth. Taking ``n`` is
allowed when ``max(tat, now) + n * T - now <= 60 s``. Reserving the most a
request can use and giving back the rest means a tenant is refused before it
passes its budget, never after: "within one request of the limit" holds across
replicas because every replica takes from the same Redis key, in one script.

Redis key, beside the request limits (``shared.py``)::

    {prefix}:limits:{<tenant>}:tokens   STRING  tat, µs of Redis TIME (expires when full)

The answer carries the bucket as OpenAI's ``x-ratelimit-limit-tokens``,
``x-ratelimit-remaining-tokens`` and ``x-ratelimit-reset-tokens`` (the time
until the bucket is full again, as OpenAI writes it: ``1m30s``, ``250ms``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.errors import RateLimited
from gateway.tenancy.backoff import Backoff
from gateway.tenancy.batch import Batcher
from gateway.tenancy.guard import Guard
from gateway.tenancy.model import Tenant

WINDOW_S = 60.0

TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new = tat + n * cost
if new < now then new = now end
if ARGV[4] ~= '1' and new - now > window then
  return {0, math.ceil((new - now - window) / 1000), math.floor((window - (tat - now)) / cost),
          math.ceil((tat - now) / 1000)}
end
if new > now then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
return {1, 0, math.floor((window - (new - now)) / cost), math.ceil((new - now) / 1000)}
"""


@dataclass(frozen=True, slots=True)
class Level:
    """A bucket after a take: allowed or not, and what the headers say."""

    allowed: bool
    wait_s: float  # refused: until the request's tokens are there
    remaining: int
    reset_s: float  # until the bucket is full again


class LocalBucket:
    """One tenant's bucket in process (pure: ``now`` is an argument)."""

    __slots__ = ("_cost", "_tat", "_window")

    def __init__(self, tokens_per_min: float, window_s: float = WINDOW_S) -> None:
        self._cost = window_s / tokens_per_min
        self._window = window_s
        self._tat = -math.inf

    def take(self, n: float, now: float, *, force: bool = False) -> Level:
        tat = max(self._tat, now)
        new = max(now, tat + n * self._cost)
        if not force and new - now > self._window + 1e-9:
            remaining = math.floor((self._window - (tat - now)) / self._cost)
            return Level(False, new - now - self._window, remaining, tat - now)
        self._tat = new
        return Level(True, 0.0, math.floor((self._window - (new - now)) / self._cost), new - now)


def duration(seconds: float) -> str:
    """A wait as OpenAI's ``x-ratelimit-reset-*`` headers write it: ``6m0s``, ``1s``, ``20ms``."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def headers(limit: int, level: Level) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-ratelimit-limit-tokens", str(limit).encode()),
        (b"x-ratelimit-remaining-tokens", str(max(0, level.remaining)).encode()),
        (b"x-ratelimit-reset-tokens", duration(level.reset_s).encode()),
    ]


class OverTokenBudget(RateLimited):
    """429: the tenant's tokens per minute cannot pay for this request now."""

    def __init__(self, message: str, retry_after: float, ratelimit: list[tuple[bytes, bytes]]):
        super().__init__(message, retry_after=retry_after)
        self.ratelimit = ratelimit

    def headers(self) -> dict[str, str]:
        return {**super().headers(), **{k.decode(): v.decode() for k, v in self.ratelimit}}


class Reservation:
    """Tokens taken at admission; :meth:`settle` or :meth:`release` once, at the end."""

    __slots__ = ("_budgets", "_done", "_shared", "headers", "prompt", "reserved", "tenant")

    def __init__(
        self,
        budgets: TokenBudgets,
        tenant: Tenant,
        reserved: int,
        prompt: int,
        shared: bool,
        level: Level,
    ) -> None:
        self._budgets = budgets
        self.tenant = tenant
        self.reserved = reserved
        self.prompt = prompt  # the estimate, when the answer does not say
        self._shared = shared  # taken in Redis: given back there
        self._done = False
        self.headers = headers(tenant.tokens_per_min or 0, level)

    def settle(self, used: int) -> None:
        """The answer ended having used ``used`` tokens (prompt + completion)."""
        if not self._done:
            self._done = True
            self._budgets._adjust(self.tenant, used - self.reserved, self._shared)

    def release(self) -> None:
        """Nothing was generated: every reserved token goes back."""
        self.settle(0)

    def end(self, tokens_in: int, tokens_out: int) -> None:
        """How the call ended, in tokens: none at all (no answer, a cache hit, an error
        before any token) releases; otherwise the prompt (as reported, else the
        estimate) and the completion are what the tenant used."""
        if tokens_in or tokens_out:
            self.settle((tokens_in or self.prompt) + tokens_out)
        else:
            self.release()


class TokenBudgets:
    def __init__(
        self,
        redis: aioredis.Redis | None,
        *,
        prefix: str,
        replicas: int,
        timeout_s: float,
        backoff_s: float,
        backoff_max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = prefix
        self._replicas = max(1, replicas)
        self._clock = clock
        self._batcher = Batcher(redis, timeout_s) if redis is not None else None
        self._take = self._batcher.script(TAKE) if self._batcher is not None else ""
        self._guard = Guard("token_budget", Backoff(backoff_s, backoff_max_s), clock)
        self._local: dict[str, tuple[int, LocalBucket]] = {}
        self.refused = 0

    def key(self, tenant: str) -> str:
        return f"{self._prefix}:limits:{{{tenant}}}:tokens"

    async def reserve(self, tenant: Tenant, prompt: int, max_tokens: int) -> Reservation | None:
        """Take ``prompt + max_tokens`` from the tenant's budget (None: it has none); 429
        when the budget cannot pay for them now."""
        limit = tenant.tokens_per_min
        if limit is None:
            return None
        tokens = max(1, prompt + max_tokens)
        level, shared = None, False
        if self._batcher is not None and self._guard.ready():
            level = await self._take_shared(tenant, tokens, force=False)
            shared = level is not None
        if level is None:
            level = self._bucket(tenant).take(tokens, self._clock())
        if not level.allowed:
            self.refused += 1
            raise OverTokenBudget(
                f"Rate limit reached for tenant {tenant.name!r} on tokens per min: limit"
                f" {limit}, requested {tokens}, remaining {max(0, level.remaining)}",
                retry_after=level.wait_s if tokens <= limit else WINDOW_S,
                ratelimit=headers(limit, level),
            )
        return Reservation(self, tenant, tokens, prompt, shared, level)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    def _bucket(self, tenant: Tenant) -> LocalBucket:
        limit = tenant.tokens_per_min or 1
        held = self._local.get(tenant.name)
        if held is None or held[0] != limit:
            held = self._local[tenant.name] = (limit, LocalBucket(limit / self._replicas))
        return held[1]

    async def _take_shared(self, tenant: Tenant, n: int, *, force: bool) -> Level | None:
        """Redis's bucket after taking ``n``, or None when Redis failed (decide locally)."""
        batcher = self._batcher
        assert batcher is not None
        cost_us = WINDOW_S * 1e6 / (tenant.tokens_per_min or 1)
        args = (repr(cost_us), repr(WINDOW_S * 1e6), n, "1" if force else "0")
        key = (self.key(tenant.name),)
        reply = await self._guard.call(lambda: batcher.evalsha(self._take, key, args))
        if reply is None:
            return None
        allowed, wait_ms, remaining, reset_ms = (int(x) for x in reply)
        return Level(bool(allowed), wait_ms / 1000, remaining, reset_ms / 1000)

    def _adjust(self, tenant: Tenant, delta: int, shared: bool) -> None:
        """Give back (``delta`` < 0) or take more, never refused; Redis's in the background."""
        if delta == 0:
            return
        if not shared or self._batcher is None:
            self._bucket(tenant).take(delta, self._clock(), force=True)
            return
        cost_us = WINDOW_S * 1e6 / (tenant.tokens_per_min or 1)
        args = (repr(cost_us), repr(WINDOW_S * 1e6), delta, "1")
        reply = self._batcher.evalsha(self._take, (self.key(tenant.name),), args)
        reply.add_done_callback(_ignore)  # lost: the over-reservation ages out within a minute


def _ignore(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()
