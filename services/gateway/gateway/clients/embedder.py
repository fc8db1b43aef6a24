"""Client of the embedder sidecar (``llmgw.embedder.v1``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from gateway.clients.sidecar import Sidecar
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: list[list[float]]
    truncated: list[bool]
    token_counts: list[int]
    model: str


class EmbedderClient:
    def __init__(self, sidecar: Sidecar) -> None:
        self.sidecar = sidecar
        self._stub = embedder_pb2_grpc.EmbedderServiceStub(sidecar.channel)
        self.model = ""  # the sidecar's model, once known (``learn_model``, every answer)

    async def learn_model(self, every_s: float = 2.0) -> None:
        """Ask the sidecar which model it serves until it answers (it may start later)."""
        while not self.model:
            try:
                # Not through the sidecar's breaker: a sidecar still starting is no failure.
                reply = await self._stub.Info(embedder_pb2.InfoRequest(), timeout=every_s)
                self.model = reply.model
            except grpc.aio.AioRpcError:  # not up yet: ask again
                await asyncio.sleep(every_s)

    async def embed(self, texts: list[str], *, deadline_s: float, request_id: str = "") -> Embedded:
        reply = await self.sidecar.call(
            self._stub.Embed,
            embedder_pb2.EmbedRequest(texts=texts),
            deadline_s=deadline_s,
            request_id=request_id,
        )
        self.model = reply.model
        return Embedded(
            vectors=[list(e.values) for e in reply.embeddings],
            truncated=[e.truncated for e in reply.embeddings],
            token_counts=[e.token_count for e in reply.embeddings],
            model=reply.model,
        )
