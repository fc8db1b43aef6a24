"""What a model server's error says, and what the client may be told of it.

Backends answer errors in several shapes; :func:`parse_error` reads them all:

====================================================  ===============================
``{"error": {"message", "type", "param", "code"}}``   OpenAI, vLLM >= 0.10.1, llama.cpp's
                                                      server, llama-cpp-python
``{"object": "error", "message", "type", "code"}``     vLLM before 0.10.1 (top level)
``{"error": "...", "error_type": "..."}``              TGI
``{"detail": "..."}`` / ``{"detail": [{"msg"}]}``      FastAPI (llama-cpp-python's 422,
                                                      a route the server lacks)
====================================================  ===============================

The client gets the OpenAI shape, the backend's own message when it is safe to
pass on (what comes before any traceback; of a 5xx, its first line), and
never a server's internals. A 429's wait is read from
``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP-date): the pool
avoids the endpoint that long, and the client is told the backend's own value.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from gateway.errors import GatewayError, InvalidRequest, RateLimited, UpstreamError

_MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class BackendError:
    """A backend's error, whatever shape it came in; ``message`` is safe to pass on."""

    message: str | None
    type: str | None = None
    param: str | None = None
    code: str | int | None = None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _code(value: object) -> str | int | None:
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def safe_message(message: str | None) -> str | None:
    """``message`` up to any traceback (or a line of one), at most 500 characters."""
    if not message:
        return None
    kept: list[str] = []
    for line in message.split("Traceback (most recent call last)", 1)[0].splitlines():
        if 'File "' in line or line.lstrip().startswith("Traceback"):
            break
        kept.append(line.rstrip())
    return "\n".join(kept).strip()[:_MAX_MESSAGE] or None


def _detail(detail: object) -> str | None:
    """FastAPI's ``detail``: a string, or validation errors ``[{"loc", "msg"}, ...]``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = first.get("loc")
        where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
        msg = _text(first.get("msg"))
        if msg:
            return f"{where}: {msg}" if where else msg
    return None


def parse_error(body: bytes) -> BackendError:
    """A backend's error body read in any of the shapes above (message None if none)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return BackendError(None)
    if not isinstance(data, dict):
        return BackendError(None)
    error = data.get("error")
    if isinstance(error, dict):  # OpenAI, vLLM >= 0.10.1, llama.cpp
        fields = error
    elif isinstance(error, str):  # TGI
        return BackendError(safe_message(error), _text(data.get("error_type")))
    elif "message" in data:  # vLLM before 0.10.1
        fields = data
    elif "detail" in data:  # FastAPI
        return BackendError(safe_message(_detail(data["detail"])))
    else:
        return BackendError(None)
    return BackendError(
        safe_message(_text(fields.get("message"))),
        _text(fields.get("type")),
        _text(fields.get("param")),
        _code(fields.get("code")),
    )


def error_message(body: bytes) -> str | None:
    """A backend error's message, in any shape; never a traceback."""
    return parse_error(body).message


def context_error(body: bytes) -> bytes:
    message = error_message(body) or "The prompt is longer than the model's context"
    return InvalidRequest(message, code="context_length_exceeded").body()


@dataclass(frozen=True, slots=True)
class RetryHint:
    """How long a backend asked to be left alone, and its own header to pass on."""

    seconds: float
    header: str | None  # its Retry-After when it is integer seconds or an HTTP-date


def retry_hint(headers: Mapping[str, str], now: float | None = None) -> RetryHint | None:
    """A 429's wait: ``retry-after-ms`` first (as openai-python reads it), then
    ``Retry-After`` in seconds or as an HTTP-date; None if neither says."""
    given = headers.get("Retry-After")
    given = given.strip() if given else None
    kept = given if given and (given.isdigit() or _http_date(given) is not None) else None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        seconds = _number(ms)
        if seconds is not None:
            return RetryHint(seconds / 1000, kept)
    if given is None:
        return None
    seconds = _number(given)
    if seconds is not None:
        return RetryHint(seconds, kept)
    when = _http_date(given)
    if when is None:
        return None
    return RetryHint(max(0.0, when - (time.time() if now is None else now)), kept)


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_tz(value)
        return None if parsed is None else float(email.utils.mktime_tz(parsed))
    except (TypeError, ValueError, OverflowError):
        return None


def upstream_error(status: int, body: bytes, hint: RetryHint | None = None) -> GatewayError:
    """What the client is told when every endpoint failed with ``status``.

    A 429 keeps the backend's wait (``hint``; 1 s when it gave none).
    """
    if status == 429:
        return RateLimited(
            "Every model server is rate limiting; retry later",
            retry_after=1.0 if hint is None else hint.seconds,
            retry_after_header=None if hint is None else hint.header,
        )
    message = error_message(body)
    if message:  # its first line: a server error's details are for its own logs
        first = message.split("\n", 1)[0]
        return UpstreamError(f"The model server answered {status}: {first}")
    return UpstreamError(f"The model server answered {status}")


def sanitize_error(status: int, body: bytes) -> bytes:
    """A backend's 4xx in the OpenAI shape; never its traceback or internals."""
    error = parse_error(body)
    if error.message is None:
        return InvalidRequest(f"The model server rejected the request ({status})").body()
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.type or "invalid_request_error",
                "param": error.param,
                "code": error.code,
            }
        }
    )


class Failures:
    """One request's failed attempts, and what the client is told when nothing answered.

    * Any endpoint answered 429: a 429 with the shortest wait they gave (the
      backend's own ``Retry-After`` passed on, ``retry-after-ms`` exact), even
      if others failed with a 5xx: waiting is what helps, and the SDKs wait.
    * A 502/504 after more than one endpoint was tried (hedges count), or once
      the retry budget refused a retry: ``x-should-retry: false``. The gateway
      has retried already, or is shedding retries on purpose: an SDK's own
      retries (two by default) would multiply its attempts (3 x 3 = 9).
    * A 502/504 after one attempt because no other endpoint was left to try
      (or ``GATEWAY_MAX_ATTEMPTS=1``): nothing said, so the client's retry,
      after its back-off, is the only one the request gets. The same for a
      503 with nothing tried (no endpoint available).
    """

    __slots__ = ("last", "limited", "refused")

    def __init__(self, first: GatewayError) -> None:
        self.last = first
        self.limited: RateLimited | None = None  # the 429 whose wait ends first
        self.refused = False  # the retry budget said no

    def add(self, error: GatewayError) -> None:
        self.last = error
        if isinstance(error, RateLimited) and (
            self.limited is None or (error.retry_after or 0.0) < (self.limited.retry_after or 0.0)
        ):
            self.limited = error

    def final(self, *, tried: int) -> GatewayError:
        if self.limited is not None:
            return self.limited
        if isinstance(self.last, UpstreamError) and (tried > 1 or self.refused):
            self.last.should_retry = False
        return self.last
