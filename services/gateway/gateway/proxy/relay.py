"""The data plane's per-chunk path: an upstream stream's chunks to the client.

Each chunk the upstream connection reads (``proxy.wire``) is handled in the
read callback itself (:class:`Relay.piece`): the SSE watcher looks at the
bytes, the copy kept for the cache or a continuation takes them, and they
are written to the client. The task serving the request sleeps on one future
until the upstream ends (:meth:`Relay.run`): no future, task or timer per
chunk.

Behind uvicorn's httptools protocol (the gateway's server; ``ClientOut``),
chunks are written to the client's transport in HTTP/1.1 chunked framing, the
framing uvicorn itself would have written: its ``send`` per chunk (an ASGI
message dict, a flow-control await, a join) was a fifth of the gateway's CPU
at 64 streams. The response's start and end still go through ``send``, so
uvicorn's own state (keep-alive, the response complete) stays right. Flow
control is kept: when the client's transport asks the writer to pause,
reading the upstream pauses until it drains.

Behind any other ASGI server (httpx's ``ASGITransport`` in the tests, h11),
the chunks queue and the task sends each one with ``send``, as before.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from gateway.balance.outcome import ErrorKind
from gateway.protocol.sse import StreamWatch
from gateway.proxy.attempt import Opened
from gateway.proxy.call import Call
from gateway.proxy.continuation import Splicer
from gateway.proxy.wire import Conn
from gateway.tenancy.usage import hide_usage

Send = Callable[[dict[str, Any]], Any]
# Above this many chunks waiting for a slow ``send``, reading the upstream pauses.
_MAX_QUEUED = 64
_UVICORN = "uvicorn.protocols.http.httptools_impl"


class ClientOut:
    """The client's transport under uvicorn's httptools protocol, written directly."""

    __slots__ = ("_cycle", "_resuming", "_transport")

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self._transport = cycle.transport
        self._resuming: asyncio.Future[None] | None = None

    @staticmethod
    def of(send: Send) -> ClientOut | None:
        """The direct writer behind ``send``, when it is uvicorn's, the response has
        started and uvicorn frames its body as chunked (an HTTP/1.1 client)."""
        cycle = getattr(send, "__self__", None)
        if cycle is None or type(cycle).__module__ != _UVICORN:
            return None
        started = getattr(cycle, "response_started", False)
        if not started or cycle.response_complete or not cycle.chunked_encoding:
            return None
        return ClientOut(cycle)

    def write(self, chunk: bytes, conn: Conn) -> None:
        cycle = self._cycle
        if cycle.disconnected:
            return  # the disconnect watcher closes the upstream
        self._transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if cycle.flow.write_paused and self._resuming is None:
            conn.pause_reading()
            self._resuming = asyncio.ensure_future(self._resume(conn))

    async def _resume(self, conn: Conn) -> None:
        try:
            await self._cycle.flow.drain()
        finally:
            self._resuming = None
            conn.resume_reading()

    def close(self) -> None:
        if self._resuming is not None:
            self._resuming.cancel()


class Relay:
    """One upstream leg of a stream, relayed to the client (see the module docstring)."""

    def __init__(
        self,
        opened: Opened,
        call: Call,
        watch: StreamWatch,
        copy: list[bytes] | None,
        splicer: Splicer | None,
        observe_gap: Callable[[float], None] | None,
    ) -> None:
        assert opened.response is not None
        self._conn: Conn = opened.response
        self._opened = opened
        self._call = call
        self._watch = watch
        self._copy = copy
        self._splicer = splicer
        self._observe_gap = observe_gap
        self._gaps: list[float] = []
        self._last = time.perf_counter()
        self._out: ClientOut | None = None
        self._queued: list[bytes] = []
        self._wake: asyncio.Future[None] | None = None
        self._ended = False
        self._error: ErrorKind | None = None  # how it ended
        self._failure: BaseException | None = None

    def piece(self, chunk: bytes) -> None:
        """One upstream chunk, in the read callback."""
        try:
            if self._splicer is not None and not (chunk := self._splicer.feed(chunk)):
                return
            call = self._call
            if self._watch.feed(chunk):
                self._opened.lease.first_token()
                call.first_token_at = time.perf_counter()
            if self._copy is not None:
                self._copy.append(chunk)
            if call.hide_usage:  # asked for a token budget, not by the client
                chunk = hide_usage(chunk)
            if self._observe_gap is not None:
                now = time.perf_counter()
                self._gaps.append(now - self._last)
                self._last = now
            if self._out is not None:
                self._out.write(chunk, self._conn)
                return
            self._queued.append(chunk)
            if len(self._queued) >= _MAX_QUEUED:
                self._conn.pause_reading()
            self._poke()
        except Exception as exc:  # noqa: BLE001 - raised again by run(), in the task
            self._failure = exc
            self._conn.close()

    def end(self, error: ErrorKind | None) -> None:
        """How the upstream body ended (told once by the connection)."""
        self._ended, self._error = True, error
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def run(self, send: Send, gone: Callable[[], bool]) -> ErrorKind | None:
        """Relay until the upstream ends; what broke it, if anything."""
        self._out = ClientOut.of(send)
        try:
            self.piece(self._opened.first_chunk)
            self._conn.attach(self.piece, self.end)
            while True:
                if self._queued:
                    await self._flush(send)
                    if gone():
                        return ErrorKind.CLIENT_DISCONNECT
                    continue
                if self._ended or self._failure is not None:
                    break
                self._wake = asyncio.get_running_loop().create_future()
                await self._wake
        finally:
            if self._out is not None:
                self._out.close()
            self._observe_gaps()
        if self._failure is not None:
            raise self._failure
        return self._error

    async def _flush(self, send: Send) -> None:
        chunks, self._queued = self._queued, []
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._conn.resume_reading()

    def _observe_gaps(self) -> None:
        """The inter-token histogram, filled once per leg rather than once per chunk."""
        if self._observe_gap is not None:
            observe_many(self._observe_gap, self._gaps[1:])  # (the first is no token gap)


def observe_many(observe: Callable[[float], None], values: list[float]) -> None:
    """``observe(v)`` for each value, in one pass when ``observe`` is a
    prometheus-client histogram's: each bucket and the sum incremented once
    with the counts (bisect in C) instead of a Python loop over the buckets and
    a lock per value (profiled: 2 % of the gateway at 64 streams when per chunk).
    It reads the histogram's storage as prometheus-client 0.2x keeps it (one
    non-cumulative counter per bucket); test_relay checks it against ``observe``."""
    histogram = getattr(observe, "__self__", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if histogram is None or bounds is None or getattr(observe, "__name__", "") != "observe":
        for value in values:
            observe(value)
        return
    if not values:
        return
    counts: dict[int, int] = {}
    for value in values:
        at = bisect_left(bounds, value)
        counts[at] = counts.get(at, 0) + 1
    histogram._sum.inc(sum(values))
    for at, n in counts.items():
        histogram._buckets[at].inc(n)
