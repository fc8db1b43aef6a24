"""The data plane's upstream side: a streamed request on a raw HTTP/1.1 connection.

Profiling the gateway at 64 streams (docs/benchmarks.md) put a fifth of its
CPU in aiohttp's per-chunk machinery: every chunk fed a ``StreamReader``,
woke a future, resumed the task that awaited ``readany()`` and rescheduled
the read timeout's timer. A streamed answer needs none of that: once its
first chunk is out, each chunk only has to be looked at and written to the
client. :class:`Conn` is an ``asyncio.Protocol`` with httptools' C parser
that, once a relay is attached (:meth:`Conn.attach`), hands every body piece
to it from the read callback: no future, task or timer per chunk. Idle and
total timeouts are one timer per stream that re-arms itself from the time of
the last read (:meth:`Conn._tick`), not a timer rescheduled per chunk.

Up to the first chunk the attempt awaits (:meth:`Conn.head`,
:meth:`Conn.first`, :meth:`Conn.whole`), so failover, hedging and the
time-to-first-token timeout (``proxy.attempt``) work as they did. Non-streamed
calls stay on aiohttp: they are read whole, once, and are not the hot path.

Connections are kept alive per endpoint (:class:`Wire`) for less time than
model servers keep them (``GATEWAY_UPSTREAM_KEEPALIVE_S``), as aiohttp's
connector was. Failures surface as ``OSError`` (a refused or broken
connection: :class:`Broken`) or ``TimeoutError``, which ``proxy.attempt``
turns into a retryable attempt before the first byte.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

from gateway.balance.outcome import ErrorKind

# Told each body piece as it arrives (after attach), and once how the body ended:
# None (complete), ErrorKind.TIMEOUT or ErrorKind.READ.
OnPiece = Callable[[bytes], None]
OnEnd = Callable[[ErrorKind | None], None]
Key = tuple[str, int, bool, str]


class Broken(ConnectionError):
    """The connection closed before the answer was complete."""


class Conn(asyncio.Protocol):
    """One connection to one endpoint, serving one request at a time."""

    def __init__(self, wire: Wire, key: Key) -> None:
        self._wire = wire
        self._key = key
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._paused = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self._field = ""
        self._pieces: list[bytes] = []  # body pieces no one has taken yet
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False  # the whole answer was read
        self._keep_alive = False  # and the server keeps the connection open
        self._until_eof = False  # a body ended by the connection's close
        self._failure: BaseException | None = None
        self._on_piece: OnPiece | None = None
        self._on_end: OnEnd | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0  # the loop's time of the last read
        self._deadline = 0.0  # the request's total timeout, from when it was sent

    # Sending.

    def send(
        self, method: str, target: str, host: str, headers: dict[str, str], body: bytes
    ) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        assert self.transport is not None
        self._deadline = self._loop.time() + self._wire.total_s
        self.transport.write(head + body)

    # Awaiting, up to the first chunk.

    async def head(self) -> None:
        """Until the status and headers have arrived."""
        while not self.status:
            await self._wait()

    async def first(self) -> bytes:
        """The first body bytes (everything read so far); b"" if the body is empty."""
        while not self._pieces and not self._complete:
            await self._wait()
        pieces, self._pieces = self._pieces, []
        return b"".join(pieces)

    async def whole(self) -> bytes:
        """The rest of the body, read to its end."""
        while not self._complete:
            await self._wait()
        pieces, self._pieces = self._pieces, []
        return b"".join(pieces)

    async def _wait(self) -> None:
        if self._failure is not None:
            raise self._failure
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._failure is not None and not self._complete:
            raise self._failure

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # Relaying, after the first chunk.

    def attach(self, on_piece: OnPiece, on_end: OnEnd) -> None:
        """From now on each body piece goes to ``on_piece`` as it is read; ``on_end`` is
        told once how the body ended (the idle and total timeouts run from here)."""
        self._on_piece, self._on_end = on_piece, on_end
        self._last = self._loop.time()
        pieces, self._pieces = self._pieces, []
        for piece in pieces:
            on_piece(piece)
        if self._complete:
            self._end(None)
        elif self._failure is not None:
            self._end(ErrorKind.READ)
        else:
            self._tick()

    def _tick(self) -> None:
        """The stream's one timer: fires at the idle or total deadline, whichever is first,
        and re-arms from the last read when data came meanwhile."""
        now, idle = self._loop.time(), self._wire.idle_s
        if now >= self._deadline or now - self._last >= idle:
            self._end(ErrorKind.TIMEOUT)
            self.close()
            return
        when = min(self._deadline, self._last + idle)
        self._timer = self._loop.call_at(when, self._tick)

    def _end(self, error: ErrorKind | None) -> None:
        on_end, self._on_end = self._on_end, None
        self._on_piece = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if on_end is not None:
            on_end(error)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()

    # Ending.

    def release(self) -> None:
        """The request is over: the connection goes back to the pool if it can be reused."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.resume_reading()  # (paused for a slow client: the next request must read)
        reusable = (
            self._complete
            and not self._until_eof
            and self._keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )
        if not reusable:
            self.close()
            return
        self._parser = httptools.HttpResponseParser(self)
        self._reset()
        self._wire.put(self._key, self)

    def close(self) -> None:
        """Drop the connection (the model server stops generating for nobody)."""
        if self.transport is not None:
            self.transport.close()
        if not self._complete:
            self._fail(Broken("the upstream connection was closed"))

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()
        if self._on_end is not None:
            self._end(ErrorKind.TIMEOUT if isinstance(exc, TimeoutError) else ErrorKind.READ)

    # asyncio.Protocol and httptools' callbacks.

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"the upstream answer is not valid HTTP: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._wire.forget(self._key, self)
        self.transport = None
        if self._until_eof and self.status and not self._complete:
            self.on_message_complete()  # the close is the body's end
            return
        if not self._complete:
            self._fail(Broken("the model server closed the connection"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._until_eof = "content-length" not in self.headers and "chunked" not in (
            self.headers.get("transfer-encoding", "").lower()
        )
        self._wake()

    def on_body(self, body: bytes) -> None:
        on_piece = self._on_piece
        if on_piece is not None:
            on_piece(body)
        else:
            self._pieces.append(body)
            self._wake()

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()  # (reset once the message ends)
        self._complete = True
        self._wake()
        if self._on_end is not None:
            self._end(None)


class Wire:
    """Connections to the model servers, kept alive per endpoint for ``keepalive_s``;
    a connection is made within ``connect_s``, a stream times out when nothing came
    for ``idle_s`` or ``total_s`` after it was sent."""

    def __init__(self, *, keepalive_s: float, connect_s: float, idle_s: float, total_s: float):
        self._keepalive_s = keepalive_s
        self._connect_s = connect_s
        self.idle_s = idle_s
        self.total_s = total_s
        self._idle: dict[Key, list[tuple[float, Conn]]] = {}
        self._tls: ssl.SSLContext | None = None

    async def open(
        self,
        url: str,
        method: str,
        headers: dict[str, str],
        body: bytes,
        *,
        server_hostname: str = "",
        host_header: str = "",
    ) -> Conn:
        """Send one request on a kept-alive connection or a new one; return it once the
        status and headers are in (the body follows: :meth:`Conn.first`)."""
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        key = (host, port, tls, server_hostname)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn = self._take(key)
        if conn is None:
            conn = await self._connect(key)
        conn.send(method, target or "/", host_header or parts.netloc, headers, body)
        try:
            await conn.head()
        except BaseException:  # cancelled (a hedge won, the client left) or broken
            conn.close()  # the model server stops generating for nobody
            raise
        return conn

    def _take(self, key: Key) -> Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            since, conn = idle.pop()
            alive = conn.transport is not None and not conn.transport.is_closing()
            if alive and now - since < self._keepalive_s:
                return conn
            conn.close()
        return None

    async def _connect(self, key: Key) -> Conn:
        host, port, tls, server_hostname = key
        loop = asyncio.get_running_loop()
        context = None
        if tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            context = self._tls
        async with asyncio.timeout(self._connect_s):
            _, conn = await loop.create_connection(
                lambda: Conn(self, key),
                host,
                port,
                ssl=context,
                server_hostname=(server_hostname or host) if tls else None,
            )
        return conn

    def put(self, key: Key, conn: Conn) -> None:
        self._idle.setdefault(key, []).append((time.monotonic(), conn))

    def forget(self, key: Key, conn: Conn) -> None:
        idle = self._idle.get(key)
        if idle:
            self._idle[key] = [(t, c) for t, c in idle if c is not conn]

    def close(self) -> None:
        for idle in self._idle.values():
            for _, conn in idle:
                conn.close()
        self._idle.clear()
