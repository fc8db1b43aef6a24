"""What a model server's error says, and what the client may be told of it.

Backends answer errors in several shapes (OpenAI's ``error.message``, TGI's
``error`` string, a bare traceback from a crashed handler). The client gets
the OpenAI shape, the backend's own message when it is safe to pass on, and
never a traceback or a server's internals.
"""

from __future__ import annotations

import aiohttp
import orjson

from gateway.errors import GatewayError, InvalidRequest, RateLimited, UpstreamError


def error_message(body: bytes) -> str | None:
    """A backend error's message (the OpenAI ``error.message``, TGI's ``error``), first line."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str):
        return None
    return message.split("\nTraceback", 1)[0].split("\n", 1)[0][:300]


def context_error(body: bytes) -> bytes:
    message = error_message(body) or "The prompt is longer than the model's context"
    return InvalidRequest(message, code="context_length_exceeded").body()


def retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def upstream_error(status: int, body: bytes) -> GatewayError:
    """What the client is told when every endpoint failed with ``status``."""
    if status == 429:
        return RateLimited("Every model server is rate limiting; retry later", retry_after=1)
    message = error_message(body)
    if message and "Traceback" not in message and 'File "' not in message:
        return UpstreamError(f"The model server answered {status}: {message}")
    return UpstreamError(f"The model server answered {status}")


def sanitize_error(status: int, body: bytes) -> bytes:
    """A backend's 4xx in the OpenAI shape; never its traceback or internals."""
    try:
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"].split("\nTraceback", 1)[0][:500]
            return orjson.dumps(
                {
                    "error": {
                        "message": message,
                        "type": str(error.get("type") or "invalid_request_error"),
                        "param": error.get("param"),
                        "code": error.get("code"),
                    }
                }
            )
    except orjson.JSONDecodeError:
        pass
    return InvalidRequest(f"The model server rejected the request ({status})").body()
