"""The data plane's two ends: the upstream connection (``proxy.wire``) and the
direct writer behind uvicorn (``proxy.relay.ClientOut``).

The gateway's component tests run it through httpx's ``ASGITransport``, which
takes the queued path; these drive the callback path against a real socket,
and the direct writer inside a real uvicorn server, whose private state it
relies on (a uvicorn upgrade that changes it fails here, not in production).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import uvicorn
from prometheus_client import CollectorRegistry, Histogram

from gateway.balance.outcome import ErrorKind
from gateway.proxy.relay import ClientOut, observe_many
from gateway.proxy.wire import Wire

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def frame(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """A raw TCP server on a free port that plays ``script`` on each connection."""
    servers: list[asyncio.Server] = []

    async def serve(script: Script) -> str:
        server = await asyncio.start_server(script, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/chat/completions"

    yield serve
    for server in servers:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


def wire(idle_s: float = 5.0) -> Wire:
    return Wire(keepalive_s=4.0, connect_s=1.0, idle_s=idle_s, total_s=30.0)


async def test_chunks_after_the_first_reach_the_relay_and_the_connection_is_reused(
    upstream: Callable[[Script], Awaitable[str]],
) -> None:
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(2):  # two requests on one kept-alive connection
            request = await read_request(reader)
            assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            writer.write(HEAD + frame(b"data: 1\n\n"))
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(frame(b"data: 2\n\n") + frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
        await reader.read()

    url = await upstream(script)
    pool = wire()
    for _ in range(2):
        conn = await pool.open(url, "POST", {"content-type": "application/json"}, b"{}")
        assert conn.status == 200 and conn.headers["Content-Type"] == "text/event-stream"
        assert await conn.first() == b"data: 1\n\n"
        pieces: list[bytes] = []
        ended: asyncio.Future[ErrorKind | None] = asyncio.get_running_loop().create_future()
        conn.attach(pieces.append, ended.set_result)
        assert await asyncio.wait_for(ended, 2) is None
        assert b"".join(pieces) == b"data: 2\n\ndata: [DONE]\n\n"
        conn.release()
    assert connections == 1
    pool.close()


async def test_a_stream_that_stalls_ends_in_a_timeout_and_its_connection_is_dropped(
    upstream: Callable[[Script], Awaitable[str]],
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + frame(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()  # then nothing, until the gateway hangs up

    pool = wire(idle_s=0.2)
    conn = await pool.open(await upstream(script), "POST", {}, b"{}")
    assert await conn.first() == b"data: 1\n\n"
    ended: asyncio.Future[ErrorKind | None] = asyncio.get_running_loop().create_future()
    conn.attach(lambda _: None, ended.set_result)
    assert await asyncio.wait_for(ended, 2) is ErrorKind.TIMEOUT
    conn.release()
    assert conn.transport is None or conn.transport.is_closing()


async def test_a_connection_cut_mid_stream_is_a_read_error(
    upstream: Callable[[Script], Awaitable[str]],
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(HEAD + frame(b"data: 1\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    pool = wire()
    conn = await pool.open(await upstream(script), "POST", {}, b"{}")
    await conn.first()
    ended: asyncio.Future[ErrorKind | None] = asyncio.get_running_loop().create_future()
    conn.attach(lambda _: None, ended.set_result)
    assert await asyncio.wait_for(ended, 2) is ErrorKind.READ


async def test_a_refused_connection_is_an_oserror() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(OSError):
        await wire().open(f"http://127.0.0.1:{port}/v1/chat/completions", "POST", {}, b"{}")


async def test_the_direct_writer_frames_chunks_inside_uvicorn() -> None:
    """Behind uvicorn's httptools protocol the chunks bypass ``send`` and still arrive
    framed, followed by the end ``send`` writes; elsewhere there is no direct writer."""
    found: list[bool] = []

    class Conn:  # what the writer pauses when the client is slow (not here)
        def pause_reading(self) -> None:
            raise AssertionError("not paused for three chunks")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        out = ClientOut.of(send)
        found.append(out is not None)
        if out is not None:
            for text in (b"one ", b"two ", b"three"):
                out.write(text, Conn())  # type: ignore[arg-type]
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http="httptools", lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # uvicorn says it started by a flag only
            if server.started:
                break
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the same kept-alive connection serves the next request
                async with session.get(f"http://127.0.0.1:{port}/") as reply:
                    assert reply.headers["Transfer-Encoding"] == "chunked"
                    assert await reply.read() == b"one two three"
    finally:
        server.should_exit = True
        await task
    assert found == [True, True]

    async def generic(message: dict[str, Any]) -> None:
        return None

    assert ClientOut.of(generic) is None


def test_gaps_observed_at_once_fill_the_histogram_as_one_by_one() -> None:
    values = [0.0, 0.001, 0.005, 0.005, 0.0051, 0.2, 3.0, 1e9]
    samples = []
    for batched in (False, True):
        registry = CollectorRegistry()
        histogram = Histogram("gap_seconds", "gaps", registry=registry, buckets=(0.005, 0.1, 1.0))
        if batched:
            observe_many(histogram.observe, values)
        else:
            for value in values:
                histogram.observe(value)
        collected = [s for m in registry.collect() for s in m.samples]
        samples.append([(s.name, s.labels, s.value) for s in collected if "created" not in s.name])
    assert samples[0] == samples[1]
    assert ("gap_seconds_bucket", {"le": "0.005"}, 4.0) in samples[1]


async def test_an_attempt_cancelled_before_the_answer_closes_its_connection(
    upstream: Callable[[Script], Awaitable[str]],
) -> None:
    """A hedge that lost, a client that left: the model server must see the close."""
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # no answer; returns when the gateway hangs up
        closed.set()

    opening = asyncio.ensure_future(wire().open(await upstream(script), "POST", {}, b"{}"))
    await asyncio.sleep(0.05)
    opening.cancel()
    await asyncio.wait_for(closed.wait(), 2)
