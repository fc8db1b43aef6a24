"""``python -m gateway``: read settings once, configure logs, serve with uvicorn."""

from __future__ import annotations

import gc

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from llmgw_common.logs import configure_logging


def main() -> None:
    # Requests allocate many short-lived objects and few cycles: collect the
    # young generation less often (profiling showed ~9% of CPU in the GC).
    gc.set_threshold(10_000, 20, 20)
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,  # one structured line per request comes from the proxy
        log_config=None,
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
