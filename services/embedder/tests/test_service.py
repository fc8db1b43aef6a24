"""The gRPC service in-process on port 0, a fake model behind it: what a caller sees."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from embedder.batcher import Embedded
from embedder.model import ModelInfo, TokenizedText
from embedder.server import EmbedderServer, create_server
from embedder.servicer import to_response
from embedder.settings import EmbedderSettings
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc

Until = Callable[..., Awaitable[None]]


def settings(**overrides: object) -> EmbedderSettings:
    base: dict[str, object] = {"port": 0, "metrics_port": 0, "grace_s": 5.0}
    return EmbedderSettings(**(base | overrides))  # type: ignore[arg-type]


async def started(fake_model, registry: CollectorRegistry, **overrides: object) -> EmbedderServer:
    server = create_server(settings(**overrides), load=lambda: fake_model, registry=registry)
    await server.start()
    fake_model.batches.clear()  # forget the warm-up runs
    return server


@pytest.fixture
async def server(fake_model, registry: CollectorRegistry) -> AsyncIterator[EmbedderServer]:
    server = await started(fake_model, registry)
    yield server
    fake_model.release()
    await server.close()


@pytest.fixture
async def stub(server: EmbedderServer) -> AsyncIterator[embedder_pb2_grpc.EmbedderServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield embedder_pb2_grpc.EmbedderServiceStub(channel)


async def embed_error(stub, texts: list[str], **kwargs: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(embedder_pb2.EmbedRequest(texts=texts), **kwargs)
    return caught.value


async def test_embed_returns_one_unit_vector_per_text_in_order(stub, fake_model) -> None:
    texts = ["the first text", "second", "a third one here"]
    reply = await stub.Embed(embedder_pb2.EmbedRequest(texts=texts))
    assert reply.model == "fake-minilm"
    assert reply.dimension == 8
    vectors = np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)
    np.testing.assert_allclose(vectors, [fake_model.vector_for(t) for t in texts], rtol=1e-6)
    assert [e.token_count for e in reply.embeddings] == [3, 1, 4]


async def test_long_texts_are_truncated_and_flagged(stub) -> None:
    long_text = " ".join(f"w{i}" for i in range(40))  # the fake model keeps 16 words
    reply = await stub.Embed(embedder_pb2.EmbedRequest(texts=[long_text, "short"]))
    assert [e.truncated for e in reply.embeddings] == [True, False]
    assert reply.embeddings[0].token_count == 16


async def test_info_describes_the_model(stub) -> None:
    reply = await stub.Info(embedder_pb2.InfoRequest())
    assert (reply.model, reply.dimension, reply.max_tokens, reply.backend) == (
        "fake-minilm",
        8,
        16,
        "fake",
    )


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "texts is empty"),
        (["fine", ""], "texts[1] is empty"),
        (["   \n"], "texts[0] is empty or only whitespace"),
        (["x"] * 257, "too many texts: 257"),
        (["y" * 100_001, "z" * 100_000], "too much text: 200001 characters"),
    ],
)
async def test_bad_input_is_invalid_argument_with_a_clear_message(
    stub, fake_model, texts: list[str], message: str
) -> None:
    error = await embed_error(stub, texts)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (error.details() or "")
    assert fake_model.seen == []


async def test_a_full_queue_answers_resource_exhausted(
    fake_model, registry: CollectorRegistry, until: Until
) -> None:
    server = await started(fake_model, registry, max_queue_texts=2, max_texts_per_request=2)
    fake_model.hold()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        busy = asyncio.ensure_future(stub.Embed(embedder_pb2.EmbedRequest(texts=["busy"])))
        await until(fake_model.running.is_set)
        queued = asyncio.ensure_future(stub.Embed(embedder_pb2.EmbedRequest(texts=["a", "b"])))
        await until(lambda: registry.get_sample_value("embedder_queue_depth") == 2)
        error = await embed_error(stub, ["refused"])
        fake_model.release()
        await asyncio.gather(busy, queued)
    await server.close()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (error.details() or "")
    outcome = {"outcome": "overloaded"}
    assert registry.get_sample_value("embedder_requests_total", outcome) == 1


async def test_a_call_whose_deadline_passes_in_the_queue_never_reaches_the_model(
    stub, fake_model, until: Until, registry: CollectorRegistry
) -> None:
    fake_model.hold()
    busy = asyncio.ensure_future(stub.Embed(embedder_pb2.EmbedRequest(texts=["busy"])))
    await until(fake_model.running.is_set)
    error = await embed_error(stub, ["in a hurry"], timeout=0.1)
    # The server's deadline runs from when the call reached it, a little after
    # the client's on a loaded host: the model is freed once the server, too,
    # has given the call up (expired or cancelled), not when the client has.
    ended = ("expired", "cancelled")
    await until(
        lambda: any(
            registry.get_sample_value("embedder_requests_total", {"outcome": o}) for o in ended
        )
    )
    fake_model.release()
    await busy
    await stub.Embed(embedder_pb2.EmbedRequest(texts=["after"]))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert fake_model.seen == ["busy", "after"]


async def test_a_call_the_client_cancels_never_reaches_the_model(
    stub, fake_model, until: Until, registry: CollectorRegistry
) -> None:
    fake_model.hold()
    busy = asyncio.ensure_future(stub.Embed(embedder_pb2.EmbedRequest(texts=["busy"])))
    await until(fake_model.running.is_set)
    gone = stub.Embed(embedder_pb2.EmbedRequest(texts=["never mind"]))
    await until(lambda: registry.get_sample_value("embedder_queue_depth") == 1)
    gone.cancel()
    await until(
        lambda: registry.get_sample_value("embedder_requests_total", {"outcome": "cancelled"}) == 1
    )
    fake_model.release()
    await busy
    await stub.Embed(embedder_pb2.EmbedRequest(texts=["after"]))
    assert fake_model.seen == ["busy", "after"]


async def test_outcomes_texts_and_batches_are_counted(stub, registry: CollectorRegistry) -> None:
    await stub.Embed(embedder_pb2.EmbedRequest(texts=["one", "two"]))
    await embed_error(stub, [])
    sample = registry.get_sample_value
    assert sample("embedder_requests_total", {"outcome": "ok"}) == 1
    assert sample("embedder_requests_total", {"outcome": "invalid"}) == 1
    assert sample("embedder_texts_total") == 2
    assert sample("embedder_batch_size_sum") == 2
    assert sample("embedder_inference_duration_seconds_count") == 1


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        return int(reply.status)


async def test_not_serving_and_unavailable_until_the_model_is_loaded(
    fake_model, registry: CollectorRegistry
) -> None:
    loaded = threading.Event()

    def slow_load():
        assert loaded.wait(10)
        return fake_model

    server = create_server(settings(), load=slow_load, registry=registry)
    starting = asyncio.create_task(server.start())
    await asyncio.sleep(0.05)
    assert await _health(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        error = await embed_error(embedder_pb2_grpc.EmbedderServiceStub(channel), ["early"])
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert fake_model.batches == []
    loaded.set()
    await starting
    assert fake_model.batches, "the model is warmed up before SERVING"
    assert await _health(server.port) == health_pb2.HealthCheckResponse.SERVING
    await server.close()


async def test_drain_lets_an_in_flight_call_finish_and_refuses_new_ones(
    fake_model, registry: CollectorRegistry, until: Until
) -> None:
    server = await started(fake_model, registry)
    fake_model.hold()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        in_flight = asyncio.ensure_future(stub.Embed(embedder_pb2.EmbedRequest(texts=["mid"])))
        await until(fake_model.running.is_set)
        server.grpc.request_stop()
        draining = asyncio.create_task(server.grpc.wait_and_drain())
        await asyncio.sleep(0.05)
        assert not draining.done()
        fake_model.release()
        reply = await in_flight
        await draining
    await server.close()
    assert len(reply.embeddings) == 1


def test_the_reply_built_from_bytes_is_the_reply_built_field_by_field() -> None:
    vectors = np.random.default_rng(0).normal(size=(3, 384)).astype(np.float32)
    tokens = [
        TokenizedText("a", [7] * 18, truncated=False),
        TokenizedText("b", [7] * 256, truncated=True),  # a two-byte varint
        TokenizedText("c", [7], truncated=False),
    ]
    batcher = SimpleNamespace(info=ModelInfo("all-MiniLM-L6-v2", 384, 256, "onnx-int8"))
    reply = to_response(Embedded(vectors, tokens), batcher)  # type: ignore[arg-type]
    expected = embedder_pb2.EmbedResponse(
        embeddings=[
            embedder_pb2.Embedding(
                values=vector.tolist(), truncated=item.truncated, token_count=len(item.ids)
            )
            for vector, item in zip(vectors, tokens, strict=True)
        ],
        model="all-MiniLM-L6-v2",
        dimension=384,
    )
    assert reply == expected
    assert list(reply.embeddings[1].values) == vectors[1].tolist()
