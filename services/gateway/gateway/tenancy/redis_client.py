"""The Redis client for limits and keys: fail fast, never retry inside the client.

redis-py retries a failed command up to 10 times with back-off by default,
which would hold every request for seconds while Redis is down. Here a command
gets one try within ``timeout_s``; the limiter and the key store decide what to
do next (decide locally, back off, try again later). The pool is bounded and
blocking: past ``max_connections`` a caller waits (within its deadline) for a
connection instead of getting an error that would look like an outage.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, *, timeout_s: float = 0.05, max_connections: int = 64) -> aioredis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://`` or ``unix://``); connects lazily."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        client_name="llmgw-gateway",
    )
    return aioredis.Redis(connection_pool=pool)
