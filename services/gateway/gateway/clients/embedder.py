"""Client of the embedder sidecar (``llmgw.embedder.v1``)."""

from __future__ import annotations

from dataclasses import dataclass

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

    async def embed(self, texts: list[str], *, deadline_s: float, request_id: str = "") -> Embedded:
        reply = await self.sidecar.call(
            self._stub.Embed,
            embedder_pb2.EmbedRequest(texts=texts),
            deadline_s=deadline_s,
            request_id=request_id,
        )
        return Embedded(
            vectors=[list(e.values) for e in reply.embeddings],
            truncated=[e.truncated for e in reply.embeddings],
            token_counts=[e.token_count for e in reply.embeddings],
            model=reply.model,
        )
