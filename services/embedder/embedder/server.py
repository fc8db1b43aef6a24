"""Build the embedder: gRPC shell + servicer now, model and batcher once loaded.

The gRPC server starts first, with health NOT_SERVING, so probes and grpcurl
answer while the model loads (and, on a first start, is exported). The model
is loaded and warmed up in a thread; only then does health turn SERVING.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import REGISTRY, CollectorRegistry

from embedder.batcher import Batcher, BatchLimits
from embedder.errors import StartupFailed
from embedder.metrics import Metrics
from embedder.model import EmbeddingModel, load_model, warm_up
from embedder.servicer import EmbedderServicer, RequestLimits
from embedder.settings import EmbedderSettings
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from llmgw_common.grpc_server import GrpcServer
from llmgw_common.logs import get_logger

log = get_logger(__name__)

SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["EmbedderService"].full_name

ModelLoader = Callable[[], EmbeddingModel]


class EmbedderServer:
    def __init__(
        self, settings: EmbedderSettings, load: ModelLoader, registry: CollectorRegistry
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(registry)
        try:
            self.grpc = GrpcServer(
                host=settings.host,
                port=settings.port,
                service_names=[SERVICE_NAME],
                grace_s=settings.grace_s,
            )
        except RuntimeError as exc:  # grpc cannot bind the port
            raise StartupFailed(f"cannot serve gRPC on port {settings.port}: {exc}") from exc
        self.servicer = EmbedderServicer(
            RequestLimits(settings.max_texts_per_request, settings.max_chars_per_request),
            self.metrics,
        )
        self.grpc.add(embedder_pb2_grpc.add_EmbedderServiceServicer_to_server, self.servicer)
        self._load = load
        self.batcher: Batcher | None = None

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        """Serve NOT_SERVING at once; load and warm the model; then SERVING."""
        await self.grpc.start()
        started = time.perf_counter()
        model = await asyncio.to_thread(self._load_and_warm)
        limits = BatchLimits(
            max_batch_size=self.settings.max_batch_size,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_queue_texts=self.settings.max_queue_texts,
            workers=self.settings.workers,
        )
        self.batcher = Batcher(model, limits, self.metrics)
        self.batcher.start()
        self.servicer.attach(self.batcher)
        log.info(
            "model_ready",
            model=model.info.name,
            backend=model.info.backend,
            dimension=model.info.dimension,
            seconds=round(time.perf_counter() - started, 2),
        )
        await self.grpc.set_serving(True)

    def _load_and_warm(self) -> EmbeddingModel:
        model = self._load()
        warm_up(model)
        return model

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then drain: in-flight calls finish
        within ``grace_s`` while new ones are refused."""
        # Handlers first: a SIGTERM while the model loads still ends in a clean drain.
        self.grpc.install_signal_handlers()
        try:
            await self.start()
            await self.grpc.wait_and_drain()
        finally:
            await self.close()

    async def close(self) -> None:
        await self.grpc.server.stop(0)
        if self.batcher is not None:
            await self.batcher.close()


def create_server(
    settings: EmbedderSettings,
    *,
    load: ModelLoader | None = None,
    registry: CollectorRegistry | None = None,
) -> EmbedderServer:
    """The embedder for ``settings``; ``load`` swaps the model (tests pass a fake)."""
    return EmbedderServer(
        settings,
        load if load is not None else (lambda: load_model(settings)),
        registry if registry is not None else REGISTRY,
    )
