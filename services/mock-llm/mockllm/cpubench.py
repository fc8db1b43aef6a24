"""CPU cost of the mock per streamed request: ``python -m mockllm.cpubench``.

Starts a server on a free loopback port, drives it with a bounded aiohttp client
(``--concurrency`` streams at once, each read to ``[DONE]``) for ``--seconds``,
and reads the server process's CPU time with psutil. Two servers alternate, each
run in a fresh process:

- ``mock``: ``python -m mockllm`` with the given timings;
- ``floor``: a bare aiohttp/uvloop handler that streams the same number of
  pre-built chunks of the same size on the same schedule. It is the least any
  aiohttp server can spend on this traffic, so ``mock / floor`` says what the
  mock's own work (parsing, tokens, rendering, metrics) adds, whatever the noise
  of a shared machine does to both.

Prints one row per run, then medians and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp
import orjson
import psutil
import uvloop
from aiohttp import web

from mockllm.render import DONE, Renderer

MODEL = "mock-llama-3-8b"
PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Run:
    server: str
    requests: int
    seconds: float
    cpu_s: float
    system_s: float

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.cpu_s / max(self.requests, 1)

    def row(self, index: int) -> str:
        return (
            f"{index:>3} {self.server:>6} {self.requests:>8} {self.requests / self.seconds:>7.0f} "
            f"{100 * self.cpu_s / self.seconds:>7.1f} {self.cpu_ms_per_request:>12.3f} "
            f"{100 * self.system_s / max(self.cpu_s, 1e-9):>7.0f}%"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _worker(session: aiohttp.ClientSession, url: str, until: float, done: list[int]) -> None:
    body = orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "benchmark"}], "stream": True}
    )
    while time.monotonic() < until:
        async with session.post(url, data=body) as resp:
            tail = b""
            async for data in resp.content.iter_any():
                tail = data
            if resp.status != 200 or not tail.endswith(DONE):
                raise RuntimeError(f"bad stream: status {resp.status}")
        done[0] += 1


async def _measure(server: str, port: int, pid: int, args: argparse.Namespace) -> Run:
    url = f"http://127.0.0.1:{port}{PATH}"
    proc = psutil.Process(pid)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for seconds in (1.0, args.seconds):  # warm-up, then the measured run
            done = [0]
            before = proc.cpu_times()
            start = time.monotonic()
            until = start + seconds
            workers = (_worker(session, url, until, done) for _ in range(args.concurrency))
            await asyncio.gather(*workers)
            after = proc.cpu_times()
        cpu = (after.user + after.system) - (before.user + before.system)
        return Run(server, done[0], time.monotonic() - start, cpu, after.system - before.system)


def _start(server: str, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "MOCKLLM_PORT": str(port),
        "MOCKLLM_TTFT_MS": str(args.ttft_ms),
        "MOCKLLM_INTER_TOKEN_MS": str(args.inter_token_ms),
        "MOCKLLM_OUTPUT_TOKENS": str(args.tokens),
        "MOCKLLM_MAX_CONCURRENCY": str(args.concurrency),
        "MOCKLLM_LOG_LEVEL": "warning",
    }
    argv = [sys.executable, "-m", "mockllm"]
    if server == "floor":
        argv = [sys.executable, "-m", "mockllm.cpubench", "--serve-floor", str(port)]
        argv += ["--tokens", str(args.tokens), "--ttft-ms", str(args.ttft_ms)]
        argv += ["--inter-token-ms", str(args.inter_token_ms)]
    return subprocess.Popen(argv, env=env)


async def _wait_ready(port: int) -> None:
    async with aiohttp.ClientSession() as session, asyncio.timeout(20):
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)


async def _one_run(server: str, args: argparse.Namespace) -> Run:
    port = _free_port()
    proc = _start(server, port, args)
    try:
        await _wait_ready(port)
        return await _measure(server, port, proc.pid, args)
    finally:
        proc.terminate()
        proc.wait(10)


async def _main(args: argparse.Namespace) -> None:
    print(
        f"server CPU per streamed request: {args.concurrency} streams x {args.tokens} tokens, "
        f"TTFT {args.ttft_ms} ms, gaps {args.inter_token_ms} ms, {args.seconds:g} s per run"
    )
    print(
        f"{'run':>3} {'server':>6} {'requests':>8} {'req/s':>7} {'CPU %':>7} "
        f"{'CPU ms/req':>12} {'kernel':>8}"
    )
    runs: dict[str, list[Run]] = {"floor": [], "mock": []}
    for i in range(args.runs):
        for server in runs:
            run = await _one_run(server, args)
            runs[server].append(run)
            print(run.row(i + 1), flush=True)
    medians = {s: statistics.median(r.cpu_ms_per_request for r in rs) for s, rs in runs.items()}
    rate = statistics.median(r.requests / r.seconds for r in runs["mock"])
    print(
        f"median: mock {medians['mock']:.3f} CPU ms per streamed request at {rate:.0f} req/s; "
        f"floor {medians['floor']:.3f}; mock/floor {medians['mock'] / medians['floor']:.2f}"
    )


def _floor_app(args: argparse.Namespace) -> web.Application:
    """The bare streamer: same chunk count, size and schedule as the mock, nothing else."""
    chunk = Renderer("chat", MODEL).token_chunk(" word")
    first = Renderer("chat", MODEL).role_chunk() + chunk
    ttft, gap = args.ttft_ms / 1000, args.inter_token_ms / 1000

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(args.tokens):
            delay = start + ttft + i * gap - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            data = first if i == 0 else chunk
            await resp.write(data + DONE if i == args.tokens - 1 else data)
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_post(PATH, stream)
    app.router.add_get("/health", health)
    return app


async def _serve_floor(port: int, args: argparse.Namespace) -> None:
    runner = web.AppRunner(_floor_app(args), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="CPU ms per streamed request of the mock")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--ttft-ms", type=float, default=20)
    parser.add_argument("--inter-token-ms", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        uvloop.run(_serve_floor(args.serve_floor, args))
        return
    # A SIGTERM (e.g. from `timeout`) unwinds through `finally`, which stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
