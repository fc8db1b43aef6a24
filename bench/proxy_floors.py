"""The floor of a Python streaming proxy on each server stack (issue 20's evaluation).

Before building a data plane, what does each maintained stack cost for the
bare job: take ``POST /v1/chat/completions``, send it to the model server,
and relay the SSE stream chunk by chunk, nothing else (no routing, metrics,
logs, validation)? ``python -m bench.proxy --floors`` runs each of these
beside nginx and the gateway in the same run:

- ``uvicorn``: an ASGI app on uvicorn with httptools and uvloop (the gateway's
  server today), aiohttp as the upstream client (the gateway's client today);
- ``granian``: the same ASGI app on granian (Rust HTTP server, uvloop); granian
  is no dependency of the project (it lost, see docs/benchmarks.md):
  ``.venv/bin/pip install granian==2.8.7`` to measure it again;
- ``aiohttp``: aiohttp's own server (``web.StreamResponse``) with its client;
- ``protocol``: two asyncio ``Protocol`` classes on uvloop with httptools'
  parsers, an upstream chunk written to the client transport from the read
  callback (no future or task per chunk), keep-alive on both sides.

    python -m bench.proxy_floors KIND PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import aiohttp
import httptools
import uvloop

ROUTE = "/v1/chat/completions"
UPSTREAM_ENV = "FLOOR_UPSTREAM"
START = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


class AsgiRelay:
    """The ASGI floor: one aiohttp session, each upstream chunk one ``send``."""

    def __init__(self) -> None:
        self.upstream = ""  # read at the first request: the module is imported before main sets it
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.session is None:
            self.upstream = os.environ[UPSTREAM_ENV] + ROUTE
            self.session = aiohttp.ClientSession(auto_decompress=False)
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.upstream, data=body, headers=headers) as response:
            start = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": response.status, "headers": start})
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


asgi_app = AsgiRelay()


def serve_aiohttp(port: int, upstream: str) -> None:
    from aiohttp import web

    async def relay(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with session.post(upstream + ROUTE, data=body, headers=headers) as response:
            out = web.StreamResponse(status=response.status)
            out.content_type = "text/event-stream"
            await out.prepare(request)
            async for chunk in response.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    async def session_ctx(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(auto_decompress=False)
        yield
        await app["session"].close()

    app = web.Application()
    app.router.add_post(ROUTE, relay)
    app.cleanup_ctx.append(session_ctx)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the model server; relays to its current client."""

    def __init__(self, idle: list[Upstream]) -> None:
        self.idle = idle
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, client: Client, request: bytes) -> None:
        self.client = client
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        if self.client is not None:
            self.client.write(START)

    def on_body(self, body: bytes) -> None:
        if self.client is not None:
            self.client.write(b"%x\r\n%b\r\n" % (len(body), body))

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.parser = httptools.HttpResponseParser(self)
        self.idle.append(self)
        if client is not None:
            client.write(b"0\r\n\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.idle:
            self.idle.remove(self)
        if self.client is not None:
            self.client.close()


class Client(asyncio.Protocol):
    """One client connection: parses its requests and has each relayed."""

    def __init__(self, host: str, port: int, idle: list[Upstream]) -> None:
        self.host, self.port, self.idle = host, port, idle
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.connecting: asyncio.Future[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        head = b"POST %b HTTP/1.1\r\nHost: %b:%d\r\nContent-Type: application/json\r\n" % (
            ROUTE.encode(),
            self.host.encode(),
            self.port,
        )
        request = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        if self.idle:
            self.idle.pop().send(self, request)
        else:
            self.connecting = asyncio.ensure_future(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(
            lambda: Upstream(self.idle), self.host, self.port
        )
        upstream.send(self, request)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve_protocol(port: int, upstream: str) -> None:
    host, _, up_port = upstream.removeprefix("http://").partition(":")
    idle: list[Upstream] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Client(host, int(up_port), idle), "127.0.0.1", port
        )
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def main(argv: list[str]) -> None:
    kind, port, upstream = argv[0], int(argv[1]), argv[2]
    os.environ[UPSTREAM_ENV] = upstream
    if kind == "uvicorn":
        import uvicorn

        uvicorn.run(
            "bench.proxy_floors:asgi_app",
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_config=None,
        )
    elif kind == "granian":
        from granian import Granian  # type: ignore[import-not-found,unused-ignore]
        from granian.constants import Interfaces, Loops  # type: ignore[import-not-found,unused-ignore]

        Granian(
            "bench.proxy_floors:asgi_app",
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            loop=Loops.uvloop,
            log_enabled=False,
        ).serve()
    elif kind == "aiohttp":
        serve_aiohttp(port, upstream)
    elif kind == "protocol":
        serve_protocol(port, upstream)
    else:
        raise SystemExit(f"unknown kind {kind!r}: uvicorn, granian, aiohttp, protocol")


if __name__ == "__main__":
    main(sys.argv[1:])
