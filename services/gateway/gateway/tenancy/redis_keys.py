"""API keys and tenants kept in Redis, shared by every replica and editable live.

Layout (``prefix`` defaults to ``llmgw``)::

    {prefix}:api_keys   HASH  field = SHA-256 hex of an API key   value = tenant name
    {prefix}:tenants    HASH  field = tenant name                 value = JSON limits
                              {"requests_per_s": 5, "burst": 10, "max_streams": 4, "admin": false}

A key whose tenant has no record, or a record that does not parse, is refused
(and logged, without the key). Answers are cached in-process for ``cache_s``
seconds, found or not, so the hot path does not go to Redis per request; a
revoked key stops working within ``cache_s``. When Redis cannot be reached,
keys already known keep working from the cache (however old), and any other
key is refused with 503 and ``Retry-After`` (fail closed) until Redis answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from pydantic import ValidationError

from gateway.errors import DependencyUnavailable
from gateway.tenancy.backoff import Backoff
from gateway.tenancy.guard import Guard
from gateway.tenancy.model import Tenant, TenantLimits
from llmgw_common.logs import get_logger

log = get_logger("gateway.tenancy")


@dataclass(frozen=True)
class RedisKeysConfig:
    prefix: str = "llmgw"
    cache_s: float = 5.0  # how long an answer is trusted before asking Redis again
    max_entries: int = 100_000  # cached answers; the oldest go first
    timeout_s: float = 0.05
    backoff_s: float = 0.5
    backoff_max_s: float = 10.0


@dataclass(frozen=True)
class _Cached:
    tenant: Tenant | None
    at: float


class RedisKeyStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        config: RedisKeysConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._config = config or RedisKeysConfig()
        self._clock = clock
        backoff = Backoff(self._config.backoff_s, self._config.backoff_max_s)
        self._guard = Guard("tenancy_keys", backoff, clock, self._config.timeout_s)
        self._cache: dict[str, _Cached] = {}
        self.keys_key = f"{self._config.prefix}:api_keys"
        self.tenants_key = f"{self._config.prefix}:tenants"

    async def lookup(self, key_hash: str) -> Tenant | None:
        """The key's tenant, None for an unknown key; DependencyUnavailable if it cannot tell."""
        now = self._clock()
        cached = self._cache.get(key_hash)
        if cached is not None and now - cached.at < self._config.cache_s:
            return cached.tenant
        if not self._guard.ready():
            return self._stale(cached)
        found = await self._guard.call(lambda: self._fetch(key_hash))
        if found is None:
            return self._stale(cached)
        name, record = found
        tenant = self._parse(name, record)
        self._remember(key_hash, tenant, now)
        return tenant

    async def _fetch(self, key_hash: str) -> tuple[str | None, str | None]:
        name = _text(await self._redis.hget(self.keys_key, key_hash))
        if name is None:
            return None, None
        return name, _text(await self._redis.hget(self.tenants_key, name))

    def _parse(self, name: str | None, record: str | None) -> Tenant | None:
        if name is None:
            return None
        if record is None:
            log.warning("tenancy_key_without_tenant", tenant=name, hash=self.tenants_key)
            return None
        try:
            return TenantLimits.model_validate_json(record).tenant(name)
        except (ValidationError, ValueError) as exc:
            log.error("tenancy_bad_tenant_record", tenant=name, error=str(exc))
            return None

    def _stale(self, cached: _Cached | None) -> Tenant:
        if cached is not None and cached.tenant is not None:
            return cached.tenant
        raise DependencyUnavailable("API keys cannot be checked right now", retry_after=1)

    def _remember(self, key_hash: str, tenant: Tenant | None, now: float) -> None:
        self._cache.pop(key_hash, None)
        self._cache[key_hash] = _Cached(tenant, now)
        while len(self._cache) > self._config.max_entries:
            del self._cache[next(iter(self._cache))]


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value
