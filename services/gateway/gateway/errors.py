"""Every error the gateway answers with, in the OpenAI error shape.

::

    GatewayError                      500 internal_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── PayloadTooLarge           413 invalid_request_error / payload_too_large
    │   └── HeadersTooLarge           431 invalid_request_error / headers_too_large
    ├── Unauthorized                  401 authentication_error
    ├── Forbidden                     403 permission_error
    ├── ModelNotFound                 404 invalid_request_error / model_not_found
    ├── RateLimited                   429 rate_limit_error        (Retry-After, retry-after-ms)
    ├── Overloaded                    503 overloaded_error        (Retry-After, retry-after-ms)
    ├── NoBackendAvailable            503 service_unavailable
    ├── UpstreamError                 502 upstream_error
    │   ├── RequestFailedEverywhere   502 upstream_error / request_failed (x-should-retry: false)
    │   └── UpstreamTimeout           504 upstream_timeout
    └── DependencyUnavailable         503 service_unavailable     (a sidecar)

Lower-layer exceptions are translated into these once, at the boundary
(``raise UpstreamError(...) from exc``). :meth:`GatewayError.body` is what
the client sees: never a backend's traceback.

Retry signals (:meth:`GatewayError.headers`), as openai-python reads them
(``_should_retry`` / ``_parse_retry_after_header``): an error with a wait
sends ``retry-after-ms`` (the wait in milliseconds, rounded up: read first by
OpenAI's SDKs) and ``Retry-After`` in whole seconds rounded up, at least 1, so
a client that reads only that never comes back early; a backend's own
``Retry-After`` (integer seconds or an HTTP-date) is passed on as it was
(``retry_after_header``). ``should_retry`` sets ``x-should-retry``; the
gateway only ever says ``false`` (see ``proxy.upstream.Upstream.open``).
"""

from __future__ import annotations

import math

import orjson


def retry_headers(seconds: float, given: str | None = None) -> dict[str, str]:
    """``Retry-After`` (``given`` if a backend said it, else whole seconds rounded up,
    at least 1) and ``retry-after-ms`` (rounded up to the millisecond, at least 1)."""
    ms = max(1, math.ceil(round(seconds * 1000, 3)))
    whole = given or str(max(1, math.ceil(round(seconds, 6))))
    return {"retry-after": whole, "retry-after-ms": str(ms)}


class GatewayError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None
    should_retry: bool | None = None  # x-should-retry; None: the client's own rules decide

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        retry_after_header: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after  # seconds to wait
        self.retry_after_header = retry_after_header  # a backend's own Retry-After, passed on

    def payload(self) -> dict[str, object]:
        return {
            "error": {"message": self.message, "type": self.type, "param": None, "code": self.code}
        }

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers = retry_headers(self.retry_after, self.retry_after_header)
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers

    def sse_event(self) -> bytes:
        """The final event of a stream that failed after its first byte."""
        return b"data: " + self.body() + b"\n\n"


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class HeadersTooLarge(InvalidRequest):
    status = 431
    code = "headers_too_large"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class StoredElsewhere(GatewayError):
    """A request that refers to what one model server stored (a response id), whose
    server has left the pool: what it stored left with it."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(GatewayError):
    status = 503
    type = "overloaded_error"
    code = "overloaded"


class NoBackendAvailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "no_backend_available"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class RequestFailedEverywhere(UpstreamError):
    """Two replicas failed the same request with a 5xx: the request, not them, is at fault.

    ``x-should-retry: false`` tells OpenAI's SDKs not to retry it.
    """

    code = "request_failed"
    should_retry = False


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class DependencyUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "dependency_unavailable"
