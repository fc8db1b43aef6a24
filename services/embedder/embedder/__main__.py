"""``python -m embedder`` serves; ``python -m embedder export-model`` builds the model, exits.

Settings are read once, here, from ``EMBEDDER_*`` variables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvloop

from embedder.errors import EmbedderError, StartupFailed
from embedder.export import ensure_onnx_int8
from embedder.model import model_dir
from embedder.server import create_server
from embedder.settings import EmbedderSettings
from llmgw_common.grpc_server import start_metrics_server
from llmgw_common.logs import configure_logging, get_logger

log = get_logger(__name__)


async def serve(settings: EmbedderSettings) -> None:
    server = create_server(settings)
    try:
        start_metrics_server(settings.metrics_port, settings.host)
    except OSError as exc:
        raise StartupFailed(f"cannot serve metrics on port {settings.metrics_port}: {exc}") from exc
    await server.run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m embedder")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "export-model"],
        help="serve (default), or build the int8 ONNX model into EMBEDDER_CACHE_DIR and exit",
    )
    parser.add_argument(
        "--cache-dir", type=Path, help="export-model: build here instead of EMBEDDER_CACHE_DIR"
    )
    args = parser.parse_args()
    settings = EmbedderSettings()
    configure_logging("embedder", settings.log_level)
    if args.command == "export-model":
        try:
            ensure_onnx_int8(model_dir(), args.cache_dir or settings.cache_dir)
        except EmbedderError as exc:
            log.error("onnx_model_export_failed", error=exc.message)
            raise SystemExit(1) from exc
        return
    try:
        # uvloop: about 15% less event-loop CPU per call than asyncio's loop.
        uvloop.run(serve(settings))
    except EmbedderError as exc:
        log.error("embedder_failed", error=exc.message)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
