"""``python -m mockllm``: serve until SIGTERM or SIGINT, then drain briefly and stop."""

from __future__ import annotations

import asyncio
import signal

import uvloop
from aiohttp import web

from llmgw_common.logs import configure_logging, get_logger
from mockllm.app import create_app
from mockllm.settings import Settings


async def serve(settings: Settings) -> None:
    log = get_logger("mockllm")
    runner = web.AppRunner(
        create_app(settings),
        handler_cancellation=True,  # a client that goes away stops its generation
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "mockllm_started",
        host=settings.host,
        port=settings.port,
        models=list(settings.models),
        queue_style=settings.queue_style,
        fault=settings.fault or None,
    )
    await stop.wait()
    log.info("mockllm_stopping", shutdown_timeout_s=settings.shutdown_timeout_s)
    await runner.cleanup()
    log.info("mockllm_stopped")


def main() -> None:
    settings = Settings()
    configure_logging("mock-llm", settings.log_level)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    main()
