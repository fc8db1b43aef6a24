"""Who may come in: authenticate the caller, then admit the request under its limits.

Built once by the lifespan from the settings (``tenancy/`` has the mechanisms:
hashed keys from a file or Redis, per-tenant rate and stream limits shared
through Redis with a local fallback, and global load shedding). The permit is
kept on the request (``request.state.permit``) and released by the outermost
ASGI layer when the response has really ended: the last byte of a stream, an
error, or a client that went away. A refusal by the limits is marked on the
request (``request.state.rejection``), so the error answer counts it by reason
(``app.ErrorAnswers``) and a backend's own 429 or 503 is not taken for one.
"""

from __future__ import annotations

from fastapi import Request

from gateway.errors import Overloaded, RateLimited
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.tenancy import (
    Authenticator,
    FileKeyStore,
    KeyStore,
    Limiter,
    RedisKeyStore,
    Tenant,
    connect,
)
from gateway.tenancy.tokens import Reservation, TokenBudgets


class Gate:
    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self.redis = (
            connect(settings.redis_url, timeout_s=settings.redis_timeout_s)
            if (settings.redis_url)
            else None
        )
        store: KeyStore | None = None
        if settings.api_keys_file is not None:
            store = FileKeyStore(settings.api_keys_file)
        elif self.redis is not None:
            store = RedisKeyStore(self.redis, settings.redis_keys_config())
        self.auth = Authenticator(settings.auth_config(), store)
        self.limiter = Limiter(settings.limits_config(), self.redis)
        self.tokens = TokenBudgets(
            self.redis,
            prefix=settings.redis_prefix,
            replicas=settings.expected_replicas,
            timeout_s=settings.redis_timeout_s,
            backoff_s=settings.redis_backoff_s,
            backoff_max_s=settings.redis_backoff_max_s,
        )

    async def enter(self, request: Request) -> Tenant:
        """The caller's tenant, admitted; raises 401/403/429/503 in the OpenAI shape."""
        tenant = await self.auth.authenticate(request.headers.get("authorization"))
        try:
            request.state.permit = await self.limiter.admit(tenant)
        except RateLimited:
            request.state.rejection = "rate_limited"
            raise
        except Overloaded:
            request.state.rejection = "overloaded"
            raise
        return tenant

    async def reserve(
        self, request: Request, tenant: Tenant, prompt: int, max_tokens: int
    ) -> Reservation | None:
        """The tenant's tokens for one request (None: no budget); 429 when short."""
        try:
            return await self.tokens.reserve(tenant, prompt, max_tokens)
        except RateLimited:
            request.state.rejection = "token_budget"
            raise

    async def authorize_admin(self, request: Request) -> None:
        await self.auth.authorize_admin(request.headers.get("authorization"))

    async def close(self) -> None:
        await self.limiter.close()
        await self.tokens.close()
        if self.redis is not None:
            await self.redis.aclose()
