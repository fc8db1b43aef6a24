"""Send an opened upstream stream to the client, byte for byte, as it arrives.

:class:`StreamResponse` is a raw ASGI response (cheaper than Starlette's
``StreamingResponse``, which starts a task group per request). It forwards
each upstream chunk as soon as it is read and lets :class:`StreamWatch` look
at it on the way. A task waits on ``receive()`` for the client's disconnect
and closes the upstream connection at once, so the model server stops
generating for nobody.

After the first byte nothing is retried: a failure (connection broken, idle
timeout, total timeout, a stream that ends without ``[DONE]``) is continued on
another replica when the proxy gives a ``resume`` (``proxy.continuation``),
else becomes one final SSE error event in the OpenAI error shape, and the
stream ends. An error event the backend sent itself is passed through as it
is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import Response

from gateway.balance.lease import Lease
from gateway.balance.outcome import ErrorKind, Outcome, classify
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.protocol.calls import Kind
from gateway.protocol.responses import ResponsesWatch
from gateway.protocol.responses import error_event as responses_error_event
from gateway.protocol.sse import StreamWatch
from gateway.proxy.attempt import Opened
from gateway.proxy.call import Call
from gateway.proxy.continuation import Splicer
from gateway.proxy.relay import Relay

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
# How the stream ended, what the watcher saw, the copy of its bytes (if kept) and
# the lease of the upstream that served its end; it releases that lease.
OnDone = Callable[[Outcome, StreamWatch, list[bytes] | None, Lease], None]
# Asked to continue a stream whose upstream broke (how, the broken upstream's lease,
# the bytes sent so far): a new upstream and how to splice it, the bytes that end
# the stream, or None (it cannot be continued).
Resumed = tuple[Opened, Splicer] | bytes | None
Resume = Callable[[Outcome, Lease, bytes], Awaitable[Resumed]]

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
        resume: Resume | None = None,
        max_continuations: int = 1,
    ) -> None:
        self._resume = resume
        self._max_legs = max_continuations
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
        self._copy: list[bytes] | None = [] if keep_copy or resume is not None else None
        self._observe_gap = observe_gap
        self._client_gone = False
        self._watch = ResponsesWatch() if call.kind is Kind.RESPONSES else StreamWatch()

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
            self._on_done(outcome, self._watch, self._copy, self._opened.lease)

    async def _serve(self, receive: Receive, send: Send) -> Outcome:
        watch = self._watch
        watcher = asyncio.ensure_future(self._watch_disconnect(receive))
        failure: ErrorKind | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            failure = await self._leg(send, None)
            legs = 0
            while self._resume is not None and legs < self._max_legs and self._continuable(failure):
                broken = classify(200, terminal_seen=watch.done, error=failure)
                copy = b"".join(self._copy or ())
                resumed = await self._resume(broken, self._opened.lease, copy)
                if isinstance(resumed, bytes):  # only the end was missing
                    watch.feed(resumed)
                    await send({"type": "http.response.body", "body": resumed, "more_body": True})
                    failure = None
                    break
                if resumed is None:
                    break
                legs += 1
                self._opened, splicer = resumed
                failure = await self._leg(send, splicer)
        finally:
            watcher.cancel()
        if self._client_gone:
            failure = ErrorKind.CLIENT_DISCONNECT
        outcome = classify(
            200, terminal_seen=watch.done, error_event=watch.error is not None, error=failure
        )
        if outcome.is_failure and watch.error is None:
            await send(
                {
                    "type": "http.response.body",
                    "body": self._final_event(_error_event(outcome)),
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return outcome

    async def _leg(self, send: Send, splicer: Splicer | None) -> ErrorKind | None:
        """One upstream's part of the stream (the first, or a continuation)."""
        opened = self._opened
        assert opened.response is not None
        try:
            return await self._pump(send, self._watch, splicer)
        finally:
            opened.response.release()
            self._call.upstream_ended = time.perf_counter()

    def _continuable(self, failure: ErrorKind | None) -> bool:
        """The upstream broke (not the client, not an error event it sent, not done)."""
        watch = self._watch
        if self._client_gone or watch.error is not None or watch.done:
            return False
        return failure in (None, ErrorKind.TIMEOUT, ErrorKind.READ)

    async def _pump(
        self, send: Send, watch: StreamWatch, splicer: Splicer | None
    ) -> ErrorKind | None:
        """Forward chunks until the upstream ends; return what broke it, if anything.
        A continuation's chunks are rewritten by ``splicer`` first (``proxy.relay``:
        each chunk handled in the upstream's read callback)."""
        relay = Relay(self._opened, self._call, watch, self._copy, splicer, self._observe_gap)
        return await relay.run(send, lambda: self._client_gone)

    def _final_event(self, error: GatewayError) -> bytes:
        """The gateway's own last event, in the stream's shape (chat, or Responses)."""
        if isinstance(self._watch, ResponsesWatch):
            return responses_error_event(orjson.loads(error.body())["error"], self._watch.sequence)
        return error.sse_event()

    async def _watch_disconnect(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._client_gone = True
                response = self._opened.response
                if response is not None:
                    response.close()  # stops the upstream generating for nobody
                return


def _error_event(outcome: Outcome) -> GatewayError:
    if outcome is Outcome.TIMEOUT:
        return UpstreamTimeout("The model server stopped sending tokens (timeout)")
    if outcome is Outcome.STREAM_TRUNCATED:
        return UpstreamError("The model server ended the stream before it was complete")
    return UpstreamError("The model server failed during the stream")
