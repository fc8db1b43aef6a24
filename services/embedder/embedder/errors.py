"""Every error the embedder answers with, each carrying its gRPC status code.

::

    EmbedderError                 INTERNAL
    ├── InvalidInput              INVALID_ARGUMENT    (empty or oversized request)
    ├── Overloaded                RESOURCE_EXHAUSTED  (queue full; retry elsewhere or later)
    ├── NotReady                  UNAVAILABLE         (model loading, or draining)
    ├── DeadlineExpired           DEADLINE_EXCEEDED   (dropped before inference)
    ├── InferenceFailed           INTERNAL            (the model raised)
    └── StartupFailed             (the process exits 1: a port taken, ...)
        └── ModelBuildFailed      (the ONNX export failed)

Lower-layer exceptions are translated into these once (``raise ... from exc``);
the servicer turns them into a gRPC status with the message as details.
"""

from __future__ import annotations

import grpc


class EmbedderError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # Label value of ``embedder_requests_total{outcome=...}``.
    outcome = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(EmbedderError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    outcome = "invalid"


class Overloaded(EmbedderError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    outcome = "overloaded"


class NotReady(EmbedderError):
    code = grpc.StatusCode.UNAVAILABLE
    outcome = "unavailable"


class DeadlineExpired(EmbedderError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    outcome = "expired"


class InferenceFailed(EmbedderError):
    code = grpc.StatusCode.INTERNAL
    outcome = "error"


class StartupFailed(EmbedderError):
    code = grpc.StatusCode.INTERNAL
    outcome = "error"


class ModelBuildFailed(StartupFailed):
    pass
