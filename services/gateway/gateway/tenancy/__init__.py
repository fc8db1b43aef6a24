"""Tenants, API keys and admission limits.

::

    Authorization: Bearer <key>
      └ Authenticator (keys.py) ── sha256 ─▶ KeyStore: FileKeyStore | RedisKeyStore ─▶ Tenant
                                                                                      │
    Limiter.admit(tenant) (limits.py) ◀──────────────────────────────────────────────┘
      global in-flight cap (503) ─▶ tenant rate + streams: Redis script, shared by replicas
                                    (shared.py), or the local share when Redis is away (429)
      └ Permit.release() when the response has ended

Modules: ``model.py`` (Tenant), ``keys.py`` (hashing, stores, Authenticator),
``redis_keys.py`` (the Redis store), ``bucket.py`` (GCRA, pure), ``shared.py``
(the Redis scripts), ``limits.py`` (Limiter), ``backoff.py`` and ``guard.py`` (every
Redis call: back-off, one probe, an outage logged once), ``redis_client.py``,
``hashkey.py`` (the CLI). Design and Redis layout: docs/tenancy.md.
"""

from gateway.tenancy.keys import (
    AuthConfig,
    Authenticator,
    FileKeyStore,
    KeyStore,
    RedisKeysConfig,
    RedisKeyStore,
    hash_key,
)
from gateway.tenancy.limits import Limiter, LimiterStats, LimitsConfig, Permit
from gateway.tenancy.model import Tenant
from gateway.tenancy.redis_client import connect

__all__ = [
    "AuthConfig",
    "Authenticator",
    "FileKeyStore",
    "KeyStore",
    "Limiter",
    "LimiterStats",
    "LimitsConfig",
    "Permit",
    "RedisKeyStore",
    "RedisKeysConfig",
    "Tenant",
    "connect",
    "hash_key",
]
