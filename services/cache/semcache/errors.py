"""The cache service's errors: one tree, each class carrying its gRPC status code.

::

    CacheError                      INTERNAL
    ├── InvalidArgument             INVALID_ARGUMENT  (bad dimension, empty namespace, too big)
    └── Unavailable                 UNAVAILABLE       (callers fail open: a miss)
        ├── StoreUnavailable        UNAVAILABLE       (Redis down or too slow)
        └── NotReady                UNAVAILABLE       (index still being built)

Lower-layer exceptions (redis-py, faiss) are translated once, where they are
caught, with ``raise ... from exc``. ``ResyncNeeded`` is not an error a caller
sees: the stream follower raises it to itself when it must rescan the store.
"""

from __future__ import annotations

import grpc


class CacheError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(CacheError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(CacheError):
    code = grpc.StatusCode.UNAVAILABLE


class StoreUnavailable(Unavailable):
    pass


class NotReady(Unavailable):
    pass


class ResyncNeeded(Exception):
    """The change stream no longer covers what this replica missed: rescan the store."""
