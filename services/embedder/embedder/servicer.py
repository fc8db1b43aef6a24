"""``llmgw.embedder.v1.EmbedderService``: validate, batch, answer; errors become statuses."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass

import grpc
import numpy as np

from embedder.batcher import Batcher, Embedded
from embedder.errors import EmbedderError, InvalidInput, NotReady
from embedder.metrics import Metrics
from embedder.model import ModelInfo
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc
from llmgw_common.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    max_texts: int
    max_chars: int


def validate(texts: list[str], limits: RequestLimits) -> None:
    """Refuse what the model cannot usefully embed, with a message that says why."""
    if not texts:
        raise InvalidInput("texts is empty: send at least one text to embed")
    if len(texts) > limits.max_texts:
        raise InvalidInput(
            f"too many texts: {len(texts)} in one request, at most {limits.max_texts}"
        )
    for index, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"texts[{index}] is empty or only whitespace")
    chars = sum(len(text) for text in texts)
    if chars > limits.max_chars:
        raise InvalidInput(
            f"too much text: {chars} characters in one request, at most {limits.max_chars}"
        )


def to_response(embedded: Embedded, batcher: Batcher) -> embedder_pb2.EmbedResponse:
    """The reply, built from its wire form: the floats go in as one block of bytes.

    ``Embedding(values=vector.tolist())`` makes 384 Python floats and converts
    them back one by one (about 20 us a vector); a packed float field is the
    little-endian float32 array itself, so this writes it with ``tobytes`` and
    parses the whole reply once (about 2 us).
    """
    vectors = np.ascontiguousarray(embedded.vectors, dtype="<f4")
    parts = []
    for vector, item in zip(vectors, embedded.tokens, strict=True):
        values = vector.tobytes()
        body = b"".join(
            (
                b"\x0a",  # field 1 (values), packed
                _varint(len(values)),
                values,
                b"\x10\x01" if item.truncated else b"",  # field 2 (truncated)
                b"\x18",  # field 3 (token_count)
                _varint(len(item.ids)),
            )
        )
        parts.append(b"\x0a" + _varint(len(body)) + body)  # EmbedResponse field 1
    parts.append(_response_tail(batcher.info))
    return embedder_pb2.EmbedResponse.FromString(b"".join(parts))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def _response_tail(info: ModelInfo) -> bytes:
    """EmbedResponse's ``model`` and ``dimension`` fields, the same in every reply."""
    return embedder_pb2.EmbedResponse(model=info.name, dimension=info.dimension).SerializeToString()


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    """Answers UNAVAILABLE until :meth:`attach` hands it a running batcher."""

    def __init__(self, limits: RequestLimits, metrics: Metrics) -> None:
        self._limits = limits
        self._metrics = metrics
        self._ok = metrics.requests.labels("ok")  # looked up once, not per call
        self._batcher: Batcher | None = None

    def attach(self, batcher: Batcher) -> None:
        self._batcher = batcher

    def _ready(self) -> Batcher:
        if self._batcher is None:
            raise NotReady("the embedding model is still loading; retry shortly")
        return self._batcher

    async def Embed(
        self, request: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.EmbedResponse:
        started = time.perf_counter()
        texts = list(request.texts)
        self._metrics.in_flight.inc()
        try:
            validate(texts, self._limits)
            batcher = self._ready()
            embedded = await batcher.embed(texts, deadline=_deadline(context))
            response = to_response(embedded, batcher)
        except EmbedderError as exc:
            self._metrics.requests.labels(exc.outcome).inc()
            if exc.outcome == "error":
                log.error("embed_failed", error=exc.message, texts=len(texts))
            await context.abort(exc.code, exc.message)
        except asyncio.CancelledError:
            self._metrics.requests.labels("cancelled").inc()
            raise
        finally:
            self._metrics.in_flight.dec()
        self._ok.inc()
        self._metrics.request_duration.observe(time.perf_counter() - started)
        self._metrics.texts.inc(len(texts))
        self._metrics.truncated.inc(sum(item.truncated for item in embedded.tokens))
        return response

    async def Info(
        self, request: embedder_pb2.InfoRequest, context: grpc.aio.ServicerContext
    ) -> embedder_pb2.InfoResponse:
        try:
            info = self._ready().info
        except NotReady as exc:
            await context.abort(exc.code, exc.message)
        return embedder_pb2.InfoResponse(
            model=info.name,
            dimension=info.dimension,
            max_tokens=info.max_tokens,
            backend=info.backend,
        )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The caller's deadline on the event loop's clock, if it sent one."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining
