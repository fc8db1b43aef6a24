"""``python -m gateway``: read settings once, configure logs, serve with uvicorn.

With ``GATEWAY_WORKERS`` > 1, uvicorn runs that many worker processes on the
same port; each builds its own app (routing state is per process by design,
as it is per replica) and metrics go through prometheus-client's multiprocess
mode (see ``gateway.metrics``).

With ``GATEWAY_METRICS_PORT`` set, ``/metrics`` and ``/admin/*`` are served on
that port by a second uvicorn server in the same process and event loop
(:func:`ops_server`), started by the app's lifespan once the gateway is up and
stopped after the API server has drained, so metrics stay readable through a
drain. The main server owns the signals. With several workers every worker
binds the port with ``SO_REUSEPORT`` and the kernel spreads connections over
them: whichever worker answers, ``/metrics`` aggregates all of them
(multiprocess mode), and ``/admin/*`` acts on the shared cache service. With
one worker the port is bound without it, so a port already in use fails the
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn

from gateway.app import Companion, HotPaths, create_app
from gateway.settings import GatewaySettings
from llmgw_common.logs import configure_logging


def build_app() -> HotPaths:
    """The app of one worker process."""
    # Requests allocate many short-lived objects and few cycles: collect the
    # young generation less often (profiling showed ~9% of CPU in the GC).
    gc.set_threshold(10_000, 20, 20)
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    return create_app(settings, companion=ops_server(settings) if settings.metrics_port else None)


class _Companion(uvicorn.Server):
    """A uvicorn server that leaves the signals to the main one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, *, share: bool) -> socket.socket:
    """A TCP socket bound to ``host:port``; ``share``: SO_REUSEPORT (one per worker)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def ops_server(settings: GatewaySettings) -> Companion:
    """Serve the operations app on ``GATEWAY_METRICS_PORT`` while the lifespan runs."""

    @contextlib.asynccontextmanager
    async def serve(ops: HotPaths) -> AsyncIterator[object]:
        sock = bind(settings.host, settings.metrics_port, share=settings.workers > 1)
        config = uvicorn.Config(
            ops,
            host=settings.host,
            port=settings.metrics_port,
            lifespan="off",  # the API server's lifespan runs the gateway
            http="httptools",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=2,
        )
        server = _Companion(config)
        sock.listen(config.backlog)  # connections queue from now on, served once it runs
        task = asyncio.create_task(server.serve(sockets=[sock]), name="ops-server")
        try:
            yield server
        finally:
            server.should_exit = True
            await task
            sock.close()

    return serve


def main() -> None:
    settings = GatewaySettings()
    options = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "access_log": False,  # one structured line per request comes from the proxy
        "log_config": None,
        "timeout_graceful_shutdown": settings.drain_s,
        # Longer than clients keep idle connections (aiohttp 15 s, browsers ~60 s), so a
        # client never sends on a connection the gateway has just closed.
        "timeout_keep_alive": settings.keepalive_s,
    }
    if settings.workers == 1:
        uvicorn.run(build_app(), **options)  # type: ignore[arg-type]
        return
    # prometheus-client reads this variable itself, in every worker it spawns.
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)
    configure_logging("gateway", settings.log_level)
    uvicorn.run("gateway.__main__:build_app", factory=True, workers=settings.workers, **options)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
