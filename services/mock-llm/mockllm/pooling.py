"""vLLM's routes beside generation: ``/tokenize``, ``/detokenize``, ``/v1/embeddings``,
``/v1/rerank`` (also ``/rerank``, ``/v2/rerank``) and ``/v1/score`` (also ``/score``).

The answers have vLLM's shapes and are deterministic, which is all a gateway
test needs: the mock's tokenizer is UTF-8 bytes (one token per byte, so
``/detokenize`` inverts ``/tokenize``); an embedding is a unit vector drawn from
a hash of (model, text); a relevance score is the share of the query's words
found in the document. Every model the mock serves answers every route (a
real fleet runs embedding and reranking models on servers of their own).
``/v1/audio/transcriptions`` and ``/v1/audio/translations`` are in
:mod:`mockllm.audio`. The faults apply here as on generation: ``status``
answers that status, ``slow`` waits first, ``hang`` never answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from mockllm.audio import transcribe
from mockllm.errors import BadRequest, InjectedStatus, MockError, ModelNotFound
from mockllm.faults import Fault, FaultKind
from mockllm.metrics import Metrics
from mockllm.plan import resolve_fault

Handler = Callable[[web.Request], Awaitable[web.Response]]

DIMENSION = 16
MAX_MODEL_LEN = 8192


class Pooling:
    """The routes, for the models in ``models``; each request counted in
    ``mockllm_requests_total`` by path and status, as generation requests are."""

    def __init__(
        self, models: tuple[str, ...], metrics: Metrics, fault: Fault | None = None
    ) -> None:
        self._models = models
        self._metrics = metrics
        self._fault = fault

    def add_routes(self, app: web.Application) -> None:
        routes: dict[str, Handler] = {
            "/tokenize": self.tokenize,
            "/detokenize": self.detokenize,
            "/v1/embeddings": self.embeddings,
            **dict.fromkeys(("/v1/rerank", "/rerank", "/v2/rerank"), self.rerank),
            **dict.fromkeys(("/v1/score", "/score"), self.score),
            **dict.fromkeys(("/v1/audio/transcriptions", "/v1/audio/translations"), self.audio),
        }
        for path, handler in routes.items():
            app.router.add_post(path, self._counted(handler))

    def _counted(self, handler: Handler) -> Handler:
        async def counted(request: web.Request) -> web.Response:
            status = 500
            try:
                await self._injected(request)
                response = await handler(request)
                status = response.status
                return response
            except MockError as exc:
                status = exc.http_status
                raise
            finally:
                self._metrics.requests.labels(request.path, str(status)).inc()

        return counted

    async def _injected(self, request: web.Request) -> None:
        fault = resolve_fault(request.headers, self._fault)
        if fault is None:
            return
        if fault.kind is FaultKind.STATUS:
            raise InjectedStatus(fault.arg)
        if fault.kind is FaultKind.SLOW:
            await asyncio.sleep(fault.arg / 1000)
        elif fault.kind in (FaultKind.HANG, FaultKind.HANG_AFTER_HEADERS):
            await asyncio.Event().wait()  # until the client goes away

    async def audio(self, request: web.Request) -> web.Response:
        """Transcription and translation (multipart form: ``file``, ``model``...)."""
        return await transcribe(request, self._models)

    async def _read(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise BadRequest("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        model = body.get("model")
        if model is not None and model not in self._models:
            raise ModelNotFound(str(model))
        body["model"] = model or self._models[0]
        return body

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body.get("prompt"), str):
            text = body["prompt"]
        elif isinstance(body.get("messages"), list):
            text = "\n".join(str(m.get("content") or "") for m in body["messages"])
        else:
            raise BadRequest("prompt or messages: Field required")
        tokens = list(text.encode())
        return _json({"count": len(tokens), "max_model_len": MAX_MODEL_LEN, "tokens": tokens})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise BadRequest("tokens: Field required (a list of token ids)")
        try:
            text = bytes(tokens).decode(errors="replace")
        except ValueError:
            raise BadRequest("tokens: every id must be in 0..255 for this tokenizer") from None
        return _json({"prompt": text})

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        given = body.get("input")
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest("input: a string or a list of strings")
        model = body["model"]
        tokens = sum(len(t.encode()) for t in texts)
        return _json(
            {
                "object": "list",
                "id": "embd-" + uuid.uuid4().hex,
                "created": int(time.time()),
                "model": model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": embed(model, text)}
                    for i, text in enumerate(texts)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
            }
        )

    async def rerank(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(documents, list):
            raise BadRequest("query and documents: Field required")
        texts = [d if isinstance(d, str) else str((d or {}).get("text", "")) for d in documents]
        scores = [relevance(query, t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -scores[i])
        ranked = [
            {"index": i, "document": {"text": texts[i]}, "relevance_score": scores[i]}
            for i in order
        ]
        top = body.get("top_n")
        if isinstance(top, int) and top > 0:
            ranked = ranked[:top]
        tokens = len(query.encode()) * len(texts) + sum(len(t.encode()) for t in texts)
        return _json(
            {
                "id": "rerank-" + uuid.uuid4().hex,
                "model": body["model"],
                "usage": {"total_tokens": tokens},
                "results": ranked,
            }
        )

    async def score(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        first, second = body.get("text_1"), body.get("text_2")
        lefts = [first] if isinstance(first, str) else first
        rights = [second] if isinstance(second, str) else second
        if not isinstance(lefts, list) or not isinstance(rights, list) or not rights:
            raise BadRequest("text_1 and text_2: Field required")
        if len(lefts) == 1:
            lefts = lefts * len(rights)
        if len(lefts) != len(rights):
            raise BadRequest("text_1 and text_2 must have the same length (or text_1 one text)")
        pairs = list(zip(lefts, rights, strict=True))
        tokens = sum(len(str(a).encode()) + len(str(b).encode()) for a, b in pairs)
        return _json(
            {
                "id": "score-" + uuid.uuid4().hex,
                "object": "list",
                "created": int(time.time()),
                "model": body["model"],
                "data": [
                    {"index": i, "object": "score", "score": relevance(str(a), str(b))}
                    for i, (a, b) in enumerate(pairs)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def embed(model: str, text: str) -> list[float]:
    """A unit vector that depends only on (model, text)."""
    digest = hashlib.blake2b(f"{model}\x00{text}".encode(), digest_size=DIMENSION * 4).digest()
    values = [v / 2**31 - 1.0 for v in struct.unpack(f">{DIMENSION}I", digest)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def relevance(query: str, document: str) -> float:
    """The share of the query's words found in the document (0..1)."""
    words = set(query.lower().split())
    if not words:
        return 0.0
    return len(words & set(document.lower().split())) / len(words)


def _json(payload: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")
