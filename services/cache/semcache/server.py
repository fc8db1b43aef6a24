"""Builds the cache service from its settings and runs it.

``create_server(settings)`` wires the parts: the store (Redis when
``redis_url`` is set, else the embedded one), the FAISS index, the verifier of
the configured embedding backend, the stream follower and the maintenance
loop (expiry sweep, rebuilds, gauges), behind the shared gRPC shell (health
NOT_SERVING until the index is built, reflection, drain on SIGTERM). Tests pass
their own store, index or verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

from llmgw.cache.v1 import cache_pb2, cache_pb2_grpc
from llmgw_common.grpc_server import GrpcServer
from llmgw_common.logs import get_logger
from semcache.cache import Limits, ReplicaState, SemanticCache, Verifier
from semcache.errors import CacheError
from semcache.follower import Follower
from semcache.index import FaissIndex, VectorIndex
from semcache.memory_store import MemoryStore
from semcache.metrics import CacheMetrics
from semcache.namespace_index import IndexParams
from semcache.pair_verify import PairVerifier, operating_point
from semcache.redis_store import RedisStore
from semcache.service import CacheServicer
from semcache.settings import CacheSettings
from semcache.store import EntryStore

log = get_logger(__name__)

SERVICE_NAME = cache_pb2.DESCRIPTOR.services_by_name["CacheService"].full_name


class CacheServer:
    """The running service: gRPC server, follower and maintenance tasks."""

    def __init__(
        self,
        settings: CacheSettings,
        *,
        grpc_server: GrpcServer,
        cache: SemanticCache,
        follower: Follower,
    ) -> None:
        self.settings = settings
        self.grpc = grpc_server
        self.cache = cache
        self.follower = follower
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def port(self) -> int:
        return self.grpc.port

    async def start(self) -> None:
        await self.cache.store.open()
        await self.grpc.start()
        self._tasks = [
            asyncio.create_task(self.follower.run(), name="cache-follower"),
            asyncio.create_task(self._maintain(), name="cache-maintenance"),
        ]

    async def _maintain(self) -> None:
        """Expiry sweep, rebuilds and gauges, every ``sweep_interval_s``."""
        cache, metrics = self.cache, self.cache.metrics
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            if not cache.state.ready:
                continue
            now = time.time()
            await cache.index.sweep(now)
            await cache.index.maintain(now)
            metrics.observe_index(cache.index.stats())
            with contextlib.suppress(CacheError):  # Redis down: counted by the store
                metrics.entries.set(await cache.store.count(now))

    async def serve(self) -> None:
        """Run until SIGTERM/SIGINT, then drain and stop (``python -m semcache``)."""
        await self.start()
        self.grpc.install_signal_handlers()
        await self.grpc.wait_and_drain()
        await self.close()

    async def stop(self) -> None:
        self.grpc.request_stop()
        await self.grpc.wait_and_drain()
        await self.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self.cache.index.close()
        if self.cache.pair is not None:
            self.cache.pair.close()
        await self.cache.store.close()
        log.info("cache_stopped")


def _store(settings: CacheSettings, metrics: CacheMetrics) -> EntryStore:
    if not settings.redis_url:
        return MemoryStore(max_entries=settings.max_entries, snapshot_path=settings.snapshot_path)
    return RedisStore(
        settings.redis_url,
        prefix=settings.redis_prefix,
        max_entries=settings.max_entries,
        stream_maxlen=settings.stream_maxlen,
        stream_max_age_s=settings.stream_max_age_s,
        block_ms=settings.stream_block_ms,
        socket_timeout_s=settings.redis_socket_timeout_s,
        connect_timeout_s=settings.redis_connect_timeout_s,
        on_error=metrics.redis_error,
    )


def _index(settings: CacheSettings, metrics: CacheMetrics) -> FaissIndex:
    params = IndexParams(
        dim=settings.dim,
        ivf_min_vectors=settings.ivf_min_vectors,
        ivf_nlist=settings.ivf_nlist,
        ivf_nprobe=settings.ivf_nprobe,
        compact_ratio=settings.compact_ratio,
    )
    return FaissIndex(
        params,
        search_threads=settings.search_threads,
        faiss_threads=settings.faiss_threads,
        load_threads=settings.load_threads,
        on_rebuild=metrics.observe_rebuild,
    )


def _verifier(settings: CacheSettings) -> tuple[Verifier, float]:
    from semcache.calibration import calibration_for
    from semcache.verify import Verifier as CalibratedVerifier

    calibration = calibration_for(settings.embedding_backend)
    return CalibratedVerifier(calibration), calibration.min_similarity


def _pair_verifier(settings: CacheSettings) -> PairVerifier | None:
    """The shipped cross-encoder at its calibrated threshold; None when disabled.

    A model that cannot be loaded is logged and leaves no pair verifier: the
    cache then falls back to the vector score, it never fails to start.
    """
    if not settings.verifier_enabled:
        return None
    from semcache.pair_model import MODEL_DIR, PairModel

    directory = Path(settings.verifier_model_dir) if settings.verifier_model_dir else MODEL_DIR
    try:
        point = operating_point(
            directory / "calibration.json",
            settings.embedding_backend,
            settings.verifier_target_precision,
            settings.verifier_threshold,
            settings.verifier_veto_threshold,
        )
        model = PairModel(
            directory / "model.onnx",
            directory / "tokenizer.json",
            threads=settings.verifier_threads,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        log.error("pair_verifier_unavailable", directory=str(directory), error=repr(exc))
        return None
    log.info(
        "pair_verifier_loaded", threshold=point.threshold,
        target_precision=point.target_precision, backend=point.backend,
    )  # fmt: skip
    return PairVerifier(
        model, point, timeout_s=settings.verifier_timeout_s,
        max_pending=settings.verifier_max_pending, threads=settings.verifier_threads,
    )  # fmt: skip


def create_server(
    settings: CacheSettings,
    *,
    store: EntryStore | None = None,
    index: VectorIndex | None = None,
    verifier: Verifier | None = None,
    min_similarity: float | None = None,
    registry: CollectorRegistry = REGISTRY,
    pair: PairVerifier | None = None,
) -> CacheServer:
    metrics = CacheMetrics(registry)
    if verifier is None:
        verifier, calibrated = _verifier(settings)
        min_similarity = calibrated if min_similarity is None else min_similarity
        pair = pair or _pair_verifier(settings)
        if pair is not None and min_similarity is not None:
            # the search must return what the pair verifier's lower floor admits
            min_similarity = min(min_similarity, pair.point.min_similarity)
    state = ReplicaState()
    cache = SemanticCache(
        limits=Limits(
            dim=settings.dim,
            default_ttl_s=settings.default_ttl_s,
            max_response_bytes=settings.max_response_bytes,
            max_prompt_bytes=settings.max_prompt_bytes,
            max_key_bytes=settings.max_key_bytes,
            candidates=settings.candidates,
            pair_candidates=settings.verifier_candidates,
        ),
        store=store or _store(settings, metrics),
        index=index or _index(settings, metrics),
        verifier=verifier,
        min_similarity=min_similarity or 0.0,
        pair=pair,
        metrics=metrics,
        state=state,
    )
    grpc_server = GrpcServer(
        host=settings.host,
        port=settings.port,
        service_names=[SERVICE_NAME],
        grace_s=settings.drain_grace_s,
    )
    grpc_server.add(cache_pb2_grpc.add_CacheServiceServicer_to_server, CacheServicer(cache))

    async def ready() -> None:
        await grpc_server.set_serving(True)

    follower = Follower(
        store=cache.store, index=cache.index, state=state, metrics=metrics, on_ready=ready
    )
    return CacheServer(settings, grpc_server=grpc_server, cache=cache, follower=follower)
