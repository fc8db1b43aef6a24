"""What one upstream attempt's result means for routing.

``classify`` turns what the proxy saw (status code, stream markers, the kind of
error) into an :class:`Outcome`; the pool turns an outcome into breaker and
latency bookkeeping. Keeping the two apart means the breaker never has to know
HTTP, and the rules below are testable on their own:

* failures (the endpoint misbehaved): connect error, 5xx, no first token in
  time, an error event inside a 200 stream, a stream that ends without its
  terminal marker (``data: [DONE]``) or whose connection breaks;
* neither (the request or the client is to blame): other 4xx and a client
  that disconnects;
* 429: not a failure, but the endpoint is avoided until its Retry-After passes.
"""

from __future__ import annotations

from enum import Enum, StrEnum


class Outcome(StrEnum):
    SUCCESS = "success"
    CONNECT_ERROR = "connect_error"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    STREAM_ERROR_EVENT = "stream_error_event"
    STREAM_TRUNCATED = "stream_truncated"
    CLIENT_ERROR = "client_error"
    RATE_LIMITED = "rate_limited"
    CANCELLED = "cancelled"

    @property
    def is_failure(self) -> bool:
        """Counts against the endpoint (breaker failure and a latency penalty)."""
        return self in _FAILURES


_FAILURES = frozenset(
    {
        Outcome.CONNECT_ERROR,
        Outcome.SERVER_ERROR,
        Outcome.TIMEOUT,
        Outcome.STREAM_ERROR_EVENT,
        Outcome.STREAM_TRUNCATED,
    }
)


class ErrorKind(Enum):
    """An exception the proxy caught while talking to the upstream."""

    CONNECT = "connect"  # no connection, or it broke before a response status
    TIMEOUT = "timeout"  # no response / first token within the limit
    READ = "read"  # the upstream connection broke mid-body
    CLIENT_DISCONNECT = "client_disconnect"  # our client went away


_BY_ERROR = {
    ErrorKind.CONNECT: Outcome.CONNECT_ERROR,
    ErrorKind.TIMEOUT: Outcome.TIMEOUT,
    ErrorKind.READ: Outcome.STREAM_TRUNCATED,
    ErrorKind.CLIENT_DISCONNECT: Outcome.CANCELLED,
}


def classify(
    status: int | None = None,
    *,
    terminal_seen: bool = True,
    error_event: bool = False,
    error: ErrorKind | None = None,
) -> Outcome:
    """The outcome of one attempt.

    ``status`` is the upstream's HTTP status (None if none arrived);
    ``terminal_seen`` whether a stream's terminal marker arrived (leave True
    for a non-streamed body read in full); ``error_event`` whether a 200 stream
    carried an error event; ``error`` the exception the proxy caught, if any.
    A client disconnect wins over everything: it says nothing about the upstream.
    """
    if error is not None:
        return _BY_ERROR[error]
    if status is None:
        return Outcome.CONNECT_ERROR
    if status == 429:
        return Outcome.RATE_LIMITED
    if status >= 500:
        return Outcome.SERVER_ERROR
    if status >= 400:
        return Outcome.CLIENT_ERROR
    if error_event:
        return Outcome.STREAM_ERROR_EVENT
    if not terminal_seen:
        return Outcome.STREAM_TRUNCATED
    return Outcome.SUCCESS


# How vLLM, llama.cpp's server and TGI word a prompt too long for the model's
# context (lower case). Such an answer is the client's 400 whatever status it
# came with: never retried, never a failure of the replica.
_CONTEXT_OVERFLOW = (
    "maximum context length",  # vLLM / OpenAI: "This model's maximum context length is 8192 tokens"
    "exceeds the available context size",  # llama.cpp server
    "exceed_context_size",  # llama.cpp server, error type
    "context length exceeded",
    "context_length_exceeded",  # OpenAI code
    "must have less than",  # TGI: "`inputs` must have less than 4096 tokens"
    "tokens + `max_new_tokens` must be <=",  # TGI
    "prompt is too long",
)


def is_context_overflow(message: str) -> bool:
    """Whether a backend's error message says the prompt does not fit the context."""
    text = message.lower()
    return any(marker in text for marker in _CONTEXT_OVERFLOW)
