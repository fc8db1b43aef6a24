"""Send an opened upstream stream to the client, byte for byte, as it arrives.

:class:`StreamResponse` is a raw ASGI response (cheaper than Starlette's
``StreamingResponse``, which starts a task group per request). It forwards
each upstream chunk as soon as it is read and lets :class:`StreamWatch` look
at it on the way. A task waits on ``receive()`` for the client's disconnect
and closes the upstream connection at once, so the model server stops
generating for nobody.

After the first byte nothing is retried: a failure (connection broken, idle
timeout, total timeout, a stream that ends without ``[DONE]``) becomes one
final SSE error event in the OpenAI error shape, and the stream ends. An error
event the backend sent itself is passed through as it is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from starlette.responses import Response

from gateway.balance.outcome import ErrorKind, Outcome, classify
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.protocol.sse import StreamWatch
from gateway.proxy.call import Call
from gateway.proxy.upstream import Opened

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
# How the stream ended, what the watcher saw, and the copy of its bytes (if kept);
# it releases the lease.
OnDone = Callable[[Outcome, StreamWatch, list[bytes] | None], None]

STREAM_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class StreamResponse(Response):
    """ASGI response that proxies one upstream SSE stream."""

    def __init__(
        self,
        opened: Opened,
        call: Call,
        on_done: OnDone,
        *,
        extra_headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
        keep_copy: bool = False,
        observe_gap: Callable[[float], None] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self._opened = opened
        self._call = call
        self._on_done = on_done
        self.raw_headers = [
            (b"content-type", opened.content_type.encode("latin-1")),
            *STREAM_HEADERS,
            (b"x-request-id", call.request_id.encode("latin-1")),
            *extra_headers,
        ]
        self._copy: list[bytes] | None = [] if keep_copy else None
        self._observe_gap = observe_gap
        self._client_gone = False
        self._watch = StreamWatch()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        """Serve the stream; whatever ends it (success, upstream failure, the
        task cancelled, an exception while sending), ``on_done`` runs exactly
        once, so the log line, the metrics and the in-flight gauge always see
        the request end and the lease is released. An ending that is not a
        return is CANCELLED."""
        outcome = Outcome.CANCELLED
        try:
            outcome = await self._serve(receive, send)
        finally:
            self._on_done(outcome, self._watch, self._copy)

    async def _serve(self, receive: Receive, send: Send) -> Outcome:
        call, opened = self._call, self._opened
        assert opened.response is not None
        watch = self._watch
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, opened.response))
        failure: ErrorKind | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            failure = await self._pump(send, watch)
        finally:
            watcher.cancel()
            opened.response.release()
            call.upstream_ended = time.perf_counter()
        if self._client_gone:
            failure = ErrorKind.CLIENT_DISCONNECT
        outcome = classify(
            200, terminal_seen=watch.done, error_event=watch.error is not None, error=failure
        )
        if outcome.is_failure and watch.error is None:
            await send(
                {
                    "type": "http.response.body",
                    "body": _error_event(outcome).sse_event(),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome

    async def _pump(self, send: Send, watch: StreamWatch) -> ErrorKind | None:
        """Forward chunks until the upstream ends; return what broke it, if anything."""
        call, opened, copy = self._call, self._opened, self._copy
        assert opened.response is not None
        observe_gap = self._observe_gap
        chunk = opened.first_chunk
        last = time.perf_counter()
        reader = opened.response.content
        try:
            while chunk:
                if watch.feed(chunk):
                    opened.lease.first_token()
                    call.first_token_at = time.perf_counter()
                if copy is not None:
                    copy.append(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if self._client_gone:
                    return ErrorKind.CLIENT_DISCONNECT
                chunk = await reader.readany()
                if observe_gap is not None:
                    now = time.perf_counter()
                    observe_gap(now - last)
                    last = now
        except TimeoutError:
            return ErrorKind.TIMEOUT
        except aiohttp.ClientError:
            return ErrorKind.READ
        return None

    async def _watch_disconnect(self, receive: Receive, response: aiohttp.ClientResponse) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_gone = True
                response.close()  # stops the upstream generating for nobody
                return


def _error_event(outcome: Outcome) -> GatewayError:
    if outcome is Outcome.TIMEOUT:
        return UpstreamTimeout("The model server stopped sending tokens (timeout)")
    if outcome is Outcome.STREAM_TRUNCATED:
        return UpstreamError("The model server ended the stream before it was complete")
    return UpstreamError("The model server failed during the stream")
