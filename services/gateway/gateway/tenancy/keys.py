"""API keys: ``Authorization: Bearer <key>`` mapped to a tenant.

A key is hashed (SHA-256) as soon as it is read and only its hex digest is ever
stored, looked up or compared; the key itself is never logged. Keys come from
a file (:class:`FileKeyStore`) or from Redis (:class:`RedisKeyStore`,
``redis_keys.py``). ``python -m gateway.tenancy.hashkey`` prints a key's digest.

Digests are looked up in a hash table (a Python dict, or a Redis hash). Both
compare strings only after their seeded 64-bit hashes match, and a digest
reveals nothing that lets anyone build a key, so the lookup leaks nothing
useful through its timing. The admin key, compared directly, is compared with
:func:`hmac.compare_digest`.

Keys file (JSON or YAML)::

    tenants:
      - name: acme                      # letters, digits, '.', '_', '-'; in cache namespaces
        key_sha256: [9f86d0...]         # one or more digests (rotate keys by listing two)
        requests_per_s: 5               # null or absent: unlimited
        burst: 10                       # absent: one second's worth
        max_streams: 4                  # concurrent requests; absent: unlimited
        admin: false                    # true: this tenant's keys may use /admin
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import Field, ValidationError, field_validator

from gateway.errors import Forbidden, Unauthorized
from gateway.tenancy.model import NAME, Tenant, TenantLimits
from gateway.tenancy.redis_keys import RedisKeysConfig, RedisKeyStore

__all__ = [
    "AuthConfig",
    "Authenticator",
    "FileKeyStore",
    "KeyStore",
    "RedisKeyStore",
    "RedisKeysConfig",
    "hash_key",
]

DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_KEY_CHARS = 512


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore(Protocol):
    async def lookup(self, key_hash: str) -> Tenant | None: ...


class TenantEntry(TenantLimits):
    """One tenant in a keys file."""

    name: str = Field(pattern=NAME.pattern)
    key_sha256: tuple[str, ...] = ()

    @field_validator("key_sha256", mode="before")
    @classmethod
    def _digests(cls, value: object) -> object:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list | tuple):
            return value
        digests = [str(v).strip().lower() for v in values]
        if not all(DIGEST.match(d) for d in digests):
            # Never echo the value: a plaintext key pasted here by mistake stays out of logs.
            raise ValueError(
                "key_sha256 entries must be SHA-256 hex digests "
                "(python -m gateway.tenancy.hashkey <key>), never the keys themselves"
            )
        return digests


class TenantsFileError(ValueError):
    pass


def parse_tenants(data: object) -> dict[str, Tenant]:
    """Digest -> tenant, from a keys file's content; every mistake is an error."""
    if not isinstance(data, dict) or not isinstance(data.get("tenants"), list):
        raise TenantsFileError("expected an object with a 'tenants' list")
    index: dict[str, Tenant] = {}
    names: set[str] = set()
    for i, item in enumerate(data["tenants"]):
        try:
            entry = TenantEntry.model_validate(item)
        except ValidationError as exc:
            raise TenantsFileError(f"tenants[{i}]: {exc}") from None
        if entry.name in names:
            raise TenantsFileError(f"tenant {entry.name!r} is listed twice")
        names.add(entry.name)
        tenant = entry.tenant(entry.name)
        for digest in entry.key_sha256:
            if digest in index:
                other = index[digest].name
                raise TenantsFileError(f"one key digest is listed for {other!r} and {entry.name!r}")
            index[digest] = tenant
    return index


class FileKeyStore:
    """Keys and tenants from a JSON or YAML file, read once when built."""

    def __init__(self, path: Path) -> None:
        self.path = path
        text = path.read_text()
        try:
            if path.suffix in {".yaml", ".yml"}:
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
            self._index = parse_tenants(data)
        except (ValueError, ImportError) as exc:
            raise TenantsFileError(f"API keys file {path}: {exc}") from None

    @property
    def tenants(self) -> frozenset[Tenant]:
        return frozenset(self._index.values())

    async def lookup(self, key_hash: str) -> Tenant | None:
        return self._index.get(key_hash)


@dataclass(frozen=True)
class AuthConfig:
    enabled: bool = False  # False: no key needed, every request is the default tenant
    default_tenant: str = "default"
    admin_key_sha256: str = ""  # hash_key(admin key); empty: no admin key


def bearer(authorization: str | None) -> str | None:
    """The key in ``Bearer <key>``, or None when the header is absent or not of that form."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > MAX_KEY_CHARS:
        return None
    return key


class Authenticator:
    def __init__(self, config: AuthConfig, store: KeyStore | None) -> None:
        admin = config.admin_key_sha256.strip().lower()
        if admin and not DIGEST.match(admin):
            raise ValueError("the admin key must be given as its SHA-256 hex digest")
        self._config = config
        self._admin = admin.encode()
        self._store = store
        self._default = Tenant(config.default_tenant, None, None, None)

    async def authenticate(self, authorization: str | None) -> Tenant:
        """The caller's tenant; Unauthorized (401) for a missing or unknown key."""
        if not self._config.enabled:
            return self._default
        if not authorization:
            raise Unauthorized(
                "You didn't provide an API key. Send it in an Authorization header: "
                "'Authorization: Bearer YOUR_KEY'"
            )
        key = bearer(authorization)
        if key is None:
            raise Unauthorized("Malformed Authorization header: expected 'Bearer YOUR_KEY'")
        tenant = await self._store.lookup(hash_key(key)) if self._store is not None else None
        if tenant is None:
            raise Unauthorized("Incorrect API key provided")
        return tenant

    def is_admin(self, authorization: str | None) -> bool:
        """True when the header carries the configured admin key."""
        key = bearer(authorization)
        if not self._admin or key is None:
            return False
        return hmac.compare_digest(hash_key(key).encode(), self._admin)

    async def authorize_admin(self, authorization: str | None) -> None:
        """Pass for the admin key or an admin tenant's key; else 401, or 403 if not allowed."""
        if self.is_admin(authorization):
            return
        key = bearer(authorization)
        if self._config.enabled and self._store is not None and key is not None:
            tenant = await self._store.lookup(hash_key(key))
            if tenant is not None and tenant.admin:
                return
            if tenant is not None:
                raise Forbidden(f"Tenant {tenant.name!r} may not use admin endpoints")
        if not self._admin and not self._config.enabled:
            raise Forbidden("Admin endpoints are disabled: no admin key is configured")
        raise Unauthorized("A valid admin key is required")
