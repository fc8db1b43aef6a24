"""What a request leaves behind once it has ended: nothing.

The soak's leak (issue 18; docs/hardening.md, "The gateway's leak"): aiohttp
3.14 ends the body stream of every response it closes with one module-level
exception instance (``client_reqrep._CONNECTION_CLOSED_EXCEPTION``). A read
pending when the proxy closed the upstream response, because its client had
left, raised that same instance, and every raise prepends the reader's frames
to its ``__traceback__``, which nothing clears: each such stream's frames (the
call, its body, the copy of the stream, the response) lived as long as the
process. Streams have since moved off aiohttp (``proxy.wire``), and these
tests keep any shared exception, or anything else, from holding a request.

They run the gateway under real uvicorn (a disconnect is an ASGI event only a
real server sends), count the gateway's own objects after a full collection,
and need no timing: they wait for the in-flight gauge to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import uvicorn

from gateway.app import create_app
from gateway.proxy.call import Call
from gateway.proxy.stream import StreamResponse
from gateway.settings import GatewaySettings
from gwkit import MakeBackend, backend, chat, metric


@contextlib.asynccontextmanager
async def serve(**settings: Any) -> AsyncIterator[str]:
    app = create_app(GatewaySettings(**settings))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http="httptools", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the gateway did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


def alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


async def drained(session: aiohttp.ClientSession, gw: str) -> None:
    for _ in range(500):
        async with session.get(f"{gw}/metrics") as reply:
            if metric(await reply.text(), "gateway_in_flight_requests") == 0:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("requests still in flight")


async def test_streams_their_clients_leave_mid_way_leave_nothing_behind(
    make_backend: MakeBackend,
) -> None:
    # Long answers: every client leaves while the upstream is still sending.
    upstream = await make_backend(output_tokens=400, inter_token_ms=2)
    async with serve(backends=[backend(upstream)], stream_continuations=0) as gw:
        async with aiohttp.ClientSession() as session:

            async def leave(n: int) -> None:
                body = chat(f"story {n}", stream=True, temperature=0.7)
                async with session.post(f"{gw}/v1/chat/completions", json=body) as reply:
                    assert reply.status == 200
                    await reply.content.readany()
                    reply.close()  # the client goes, mid-stream

            for start in range(0, 120, 12):
                await asyncio.gather(*(leave(start + k) for k in range(12)))
            await drained(session, gw)
            left = metric(
                await (await session.get(f"{gw}/metrics")).text(),
                "gateway_requests_total",
                status="499",
            )
            assert left >= 60, "the clients left before their streams ended"
        assert alive(Call) == 0 and alive(StreamResponse) == 0


async def test_whole_answers_whose_clients_leave_leave_nothing_behind(
    make_backend: MakeBackend,
) -> None:
    # A non-streamed answer is still read with aiohttp: a client that leaves while it
    # is read closes that response (the path the shared exception took for streams).
    upstream = await make_backend(output_tokens=200, inter_token_ms=2)
    async with serve(backends=[backend(upstream)]) as gw:
        timeout = aiohttp.ClientTimeout(total=0.1)
        async with aiohttp.ClientSession() as session:

            async def leave(n: int) -> None:
                body = chat(f"essay {n}", temperature=0.7)
                with contextlib.suppress(TimeoutError):
                    async with session.post(
                        f"{gw}/v1/chat/completions", json=body, timeout=timeout
                    ) as reply:
                        await reply.read()

            await asyncio.gather(*(leave(n) for n in range(40)))
            await drained(session, gw)
        assert alive(Call) == 0
