"""The gateway's own response headers, and the one spelling of a cache outcome."""

from __future__ import annotations

import enum

X_CACHE = b"x-cache"
X_CACHE_SIMILARITY = b"x-cache-similarity"
X_REQUEST_ID = b"x-request-id"


class CacheOutcome(enum.StrEnum):
    """How a request was answered, spelled the same in the ``X-Cache`` header, the
    ``cache`` label of ``gateway_requests_total`` and the request's log line.

    (How a *lookup* ended is another thing, with more endings: abandoned,
    skipped, error, refused by the verifier; it is the ``outcome`` label of
    ``gateway_cache_lookups_total``, see ``cache.layer``. What the cache
    service found is the proto's ``HitKind``, mapped in one place,
    ``cache.layer.CacheLayer._lookup``.)
    """

    HIT_EXACT = "HIT-EXACT"
    HIT_SEMANTIC = "HIT-SEMANTIC"
    MISS = "MISS"  # looked up (or stored only), answered by a model server
    BYPASS = "BYPASS"  # not cacheable: neither looked up nor stored

    @property
    def header(self) -> tuple[bytes, bytes]:
        return (X_CACHE, self.value.encode())
