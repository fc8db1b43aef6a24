"""The real embedder process (gRPC server, health, default Prometheus registry,
metrics HTTP server) with a stand-in model, so its /metrics can be scraped in a
second without the ONNX model. Mirrors ``embedder.__main__.serve``.

    python tests/deploy/embedder_with_fake_model.py GRPC_PORT METRICS_PORT
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import numpy as np

from embedder.model import ModelInfo, TokenizedText, Vectors
from embedder.server import create_server
from embedder.settings import EmbedderSettings
from llmgw_common.grpc_server import start_metrics_server


class WordModel:
    info = ModelInfo("fake", 8, 32, "fake")

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        return [TokenizedText(t, list(range(len(t.split()))), False) for t in texts]

    def embed(self, batch: Sequence[TokenizedText]) -> Vectors:
        vectors = np.ones((len(batch), self.info.dimension), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def serve(settings: EmbedderSettings) -> None:
    server = create_server(settings, load=WordModel)
    start_metrics_server(settings.metrics_port, settings.host)
    await server.run()


if __name__ == "__main__":
    grpc_port, metrics_port = int(sys.argv[1]), int(sys.argv[2])
    asyncio.run(
        serve(EmbedderSettings(host="127.0.0.1", port=grpc_port, metrics_port=metrics_port))
    )
