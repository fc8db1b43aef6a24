"""One attempt at a request on one endpoint, over HTTP, up to its first byte.

:class:`Attempts` holds the upstream session and the timeouts; an attempt
returns an :class:`Opened` (a stream with its first chunk read, or a whole
non-streamed answer) or raises :class:`Retryable` for what another endpoint
may do better (connect error, 5xx, 429, no first chunk in time, a stream that
closes empty). Choosing endpoints, failing over, hedging: ``proxy.upstream``.

Streams go out on the data plane's own connections (``proxy.wire``: each
chunk after the first relayed from the read callback); non-streamed calls on
an aiohttp session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from gateway.balance.endpoint import EndpointSpec
from gateway.balance.lease import Lease
from gateway.balance.outcome import ErrorKind, Outcome, classify, is_context_overflow
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.protocol import responses
from gateway.protocol.calls import Kind
from gateway.proxy.backend_errors import (
    context_error,
    error_message,
    retry_hint,
    sanitize_error,
    upstream_error,
)
from gateway.proxy.call import Call
from gateway.proxy.wire import Conn, Wire
from gateway.settings import GatewaySettings


@dataclass(slots=True)
class Opened:
    """An upstream answer ready to go to the client."""

    lease: Lease
    status: int
    content_type: str
    response: Conn | None  # a stream still being read
    first_chunk: bytes  # streams: first body bytes; non-streamed: the whole body


# A 500 may be the request's doing (a field that crashes the server's handler);
# 502-504 say the server is down, overloaded or cut off: charged at once.
REQUEST_FAULT_STATUSES = frozenset({500})


class Retryable(Exception):
    """An attempt that failed before the client saw a byte: another endpoint may do better."""

    def __init__(
        self,
        outcome: Outcome,
        error: GatewayError,
        retry_after: float | None = None,
        status: int | None = None,
    ):
        super().__init__(error.message)
        self.outcome = outcome
        self.error = error
        self.retry_after = retry_after
        self.status = status
        self.lease: Lease | None = None  # the attempt that failed


class Attempts:
    """The model servers, reached through one aiohttp session."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self.wire = Wire(
            keepalive_s=settings.upstream_keepalive_s,
            connect_s=settings.connect_timeout_s,
            idle_s=settings.idle_timeout_s,
            total_s=settings.total_timeout_s,
        )
        self._unary_timeout = aiohttp.ClientTimeout(
            total=min(settings.unary_timeout_s, settings.total_timeout_s),
            sock_connect=settings.connect_timeout_s,
        )

    async def start(self) -> None:
        # Reuse idle upstream connections for less time than model servers keep them
        # (uvicorn-based servers such as vLLM close after 5 s): a request never goes
        # out on a connection the server is closing.
        connector = aiohttp.TCPConnector(
            limit=0, ttl_dns_cache=10, keepalive_timeout=self._settings.upstream_keepalive_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        self.wire.close()
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.start() was not awaited"
        return self._session

    async def _attempt(self, lease: Lease, call: Call) -> Opened:
        try:
            return await self._try(lease, call)
        except Retryable as failure:
            failure.lease = lease
            raise

    async def _try(self, lease: Lease, call: Call) -> Opened:
        url = lease.endpoint.url + call.upstream_path
        call.upstream_started = time.perf_counter()
        try:
            if call.stream:
                async with asyncio.timeout(self._settings.ttft_timeout_s):
                    return await self._open_stream(lease, url, call)
            return await self._unary(lease, url, call)
        except Retryable:
            raise
        except TimeoutError as exc:
            raise Retryable(
                Outcome.TIMEOUT, UpstreamTimeout("The model server did not answer in time")
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:  # OSError: the wire's (streams)
            raise Retryable(
                classify(error=ErrorKind.CONNECT),
                UpstreamError("The model server could not be reached"),
            ) from exc

    async def _post(
        self, spec: EndpointSpec, url: str, call: Call, limits: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        """A replica whose URL holds its address gets its host name as TLS SNI and ``Host``."""
        headers = {**call.headers, "Host": spec.host_header} if spec.host_header else call.headers
        return await self.session.request(
            call.method,
            url,
            data=call.body or None,
            headers=headers,
            timeout=limits,
            server_hostname=spec.server_hostname or None,
        )

    async def _open_stream(self, lease: Lease, url: str, call: Call) -> Opened:
        spec = lease.endpoint
        conn = await self.wire.open(
            url,
            call.method,
            call.headers,
            call.body,
            server_hostname=spec.server_hostname,
            host_header=spec.host_header,
        )
        try:
            if conn.status != 200:
                body = await conn.whole()
                return self._judge(lease, conn.status, conn.headers, body, call)
            first = await conn.first()
        except BaseException:
            conn.close()
            raise
        if not first:
            conn.close()
            raise Retryable(
                Outcome.STREAM_TRUNCATED,
                UpstreamError("The model server closed the stream before sending anything"),
            )
        if first.startswith(b'data: {"error"'):  # nothing but an error: nothing sent yet
            conn.close()
            return self._error_first(lease, first)
        if call.kind is Kind.RESPONSES and (failed := responses.first_error(first)):
            conn.close()  # response.failed (or error) before any token
            return self._error_first(lease, b"data: " + failed)
        return Opened(
            lease, 200, conn.headers.get("Content-Type", "text/event-stream"), conn, first
        )

    @staticmethod
    def _error_first(lease: Lease, first: bytes) -> Opened:
        """A stream whose first event is an error: a 400 if the prompt is too long, else retried.

        The client has seen nothing yet, so it is treated like the same error
        answered with a 500 (held back, blamed on the request if it repeats).
        """
        event = first.split(b"\n\n", 1)[0].removeprefix(b"data: ")
        message = error_message(event) or ""
        if is_context_overflow(message):
            return Opened(lease, 400, "application/json", None, context_error(event))
        raise Retryable(Outcome.STREAM_ERROR_EVENT, upstream_error(500, event), status=500)

    async def _unary(self, lease: Lease, url: str, call: Call) -> Opened:
        response = await self._post(lease.endpoint, url, call, self._unary_timeout)
        return await self._finish_unary(lease, response, call)

    async def _finish_unary(
        self, lease: Lease, response: aiohttp.ClientResponse, call: Call
    ) -> Opened:
        async with response:
            body = await response.read()
        return self._judge(lease, response.status, response.headers, body, call)

    def _judge(
        self, lease: Lease, status: int, headers: Mapping[str, str], body: bytes, call: Call
    ) -> Opened:
        """A whole answer: an error to retry elsewhere (raised), or the client's."""
        call.upstream_ended = time.perf_counter()
        outcome = classify(status)
        if status >= 400 and is_context_overflow(error_message(body) or ""):
            status, body = 400, context_error(body)  # the client's, whatever the backend said
            return Opened(lease, status, "application/json", None, body)
        if outcome in (Outcome.SERVER_ERROR, Outcome.RATE_LIMITED):
            hint = retry_hint(headers) if status == 429 else None
            wait = None if hint is None else hint.seconds  # the pool avoids the endpoint
            raise Retryable(outcome, upstream_error(status, body, hint), wait, status)
        content_type = headers.get("Content-Type", "application/json")
        if outcome is Outcome.CLIENT_ERROR:
            body, content_type = sanitize_error(status, body), "application/json"
        return Opened(lease, status, content_type, None, body)
