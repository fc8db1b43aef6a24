"""Small in-process stand-ins for the embedder and the cache service (gRPC, port 0).

They honour the protos' contracts closely enough to drive the gateway's cache
path: namespaces are walls, exact keys match exactly, vectors match by cosine.
The embedder is a bag of words, so reordered or repeated words are "paraphrases".
Both can be slowed down or made to fail to test fail-open behaviour, or held
(every call waits for an event the test sets) to order a lookup against the
upstream without relying on time.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from dataclasses import dataclass, field

import grpc

from llmgw.cache.v1 import cache_pb2, cache_pb2_grpc
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc

DIM = 64


@dataclass
class Faults:
    delay_s: float = 0.0
    fail: bool = False
    calls: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    hold: asyncio.Event | None = None  # when given, every call waits until it is set
    entered: asyncio.Event = field(default_factory=asyncio.Event)  # set by every call

    async def apply(self, context: grpc.aio.ServicerContext) -> None:
        self.calls += 1
        self.metadata = {k: str(v) for k, v in context.invocation_metadata() or ()}
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")


def bag_of_words(text: str) -> list[float]:
    vector = [0.0] * DIM
    for word in text.lower().replace("?", " ").split():
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class FakeEmbedder(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, max_chars: int = 1000) -> None:
        self.faults = Faults()
        self.max_chars = max_chars

    async def Embed(self, request, context):  # type: ignore[no-untyped-def]
        await self.faults.apply(context)
        return embedder_pb2.EmbedResponse(
            embeddings=[
                embedder_pb2.Embedding(values=bag_of_words(t), truncated=len(t) > self.max_chars)
                for t in request.texts
            ],
            model="all-MiniLM-L6-v2",
            dimension=DIM,
        )

    async def Info(self, request, context):  # type: ignore[no-untyped-def]
        return embedder_pb2.InfoResponse(model="all-MiniLM-L6-v2", dimension=DIM, max_tokens=256)


@dataclass
class Entry:
    id: str
    exact_key: str
    vector: list[float]
    response: bytes
    created: float = field(default_factory=time.time)


class FakeCache(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, threshold: float = 0.95) -> None:
        self.faults = Faults()
        self.entries: dict[str, list[Entry]] = {}
        self.threshold = threshold
        self.stored = asyncio.Event()

    async def Lookup(self, request, context):  # type: ignore[no-untyped-def]
        await self.faults.apply(context)
        entries = self.entries.get(request.namespace, [])
        for e in entries:
            if request.exact_key and e.exact_key == request.exact_key:
                return cache_pb2.LookupResponse(
                    kind=cache_pb2.HIT_KIND_EXACT,
                    entry_id=e.id,
                    similarity=1.0,
                    response=e.response,
                )
        if request.vector:
            scored = [
                (sum(a * b for a, b in zip(request.vector, e.vector, strict=False)), e)
                for e in entries
                if e.vector
            ]
            best = max(scored, default=(0.0, None), key=lambda s: s[0])
            if best[1] is not None and best[0] >= self.threshold:
                return cache_pb2.LookupResponse(
                    kind=cache_pb2.HIT_KIND_SEMANTIC,
                    entry_id=best[1].id,
                    similarity=best[0],
                    response=best[1].response,
                )
        return cache_pb2.LookupResponse(kind=cache_pb2.HIT_KIND_MISS)

    async def Store(self, request, context):  # type: ignore[no-untyped-def]
        await self.faults.apply(context)
        entry = Entry(uuid.uuid4().hex, request.exact_key, list(request.vector), request.response)
        self.entries.setdefault(request.namespace, []).append(entry)
        self.stored.set()
        return cache_pb2.StoreResponse(entry_id=entry.id)

    async def Invalidate(self, request, context):  # type: ignore[no-untyped-def]
        if request.all:
            removed = sum(len(v) for v in self.entries.values())
            self.entries.clear()
        else:
            removed = len(self.entries.pop(request.namespace, []))
        return cache_pb2.InvalidateResponse(removed=removed)

    async def Stats(self, request, context):  # type: ignore[no-untyped-def]
        n = sum(len(v) for v in self.entries.values())
        return cache_pb2.StatsResponse(entries=n, namespaces=len(self.entries), store="fake")

    def count(self) -> int:
        return sum(len(v) for v in self.entries.values())


class FakeSidecars:
    def __init__(self) -> None:
        self.embedder = FakeEmbedder()
        self.cache = FakeCache()
        self.server = grpc.aio.server()
        embedder_pb2_grpc.add_EmbedderServiceServicer_to_server(self.embedder, self.server)
        cache_pb2_grpc.add_CacheServiceServicer_to_server(self.cache, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    async def wait_stores(self, count: int, within_s: float = 5.0) -> None:
        deadline = time.monotonic() + within_s
        while self.cache.count() < count and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
