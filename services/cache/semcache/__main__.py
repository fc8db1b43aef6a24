"""``python -m semcache``: the cache service on port 50052, metrics on 9102.

With no ``CACHE_REDIS_URL`` it runs on the embedded in-process store.
"""

from __future__ import annotations

import asyncio
import os
import sys

from llmgw_common.grpc_server import start_metrics_server
from llmgw_common.logs import configure_logging, get_logger
from semcache.server import create_server
from semcache.settings import CacheSettings


async def serve(settings: CacheSettings) -> None:
    server = create_server(settings)  # inside the loop: grpc.aio binds to it
    await server.serve()


def main() -> None:
    settings = CacheSettings()
    configure_logging("cache", settings.log_level)
    log = get_logger("semcache")
    start_metrics_server(settings.metrics_port)
    log.info(
        "cache_starting",
        port=settings.port,
        metrics_port=settings.metrics_port,
        store="redis" if settings.redis_url else "memory",
        embedding_backend=settings.embedding_backend,
        dim=settings.dim,
    )
    asyncio.run(serve(settings))
    # Drained, stopped and (embedded store) snapshotted. A FAISS build still running
    # in a worker thread cannot be interrupted, and Python would wait for it at exit
    # (a minute at 1M vectors): leave now instead.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
