"""The embedder as a real process with the real int8 ONNX model, driven over gRPC.

The model is exported into the repository's cache on the first start (about
fifteen seconds, once); later starts are ready in about a second.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from deploy.local.harness import Stack
from deploy.local.procs import PYTHON, Proc, free_port
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc

LONG_TEXT = "the quick brown fox jumps over the lazy dog " * 40  # > 256 word pieces


class Embedder:
    def __init__(self, proc: Proc, port: int, metrics_port: int) -> None:
        self.proc, self.port, self.metrics_port = proc, port, metrics_port
        self.target = f"127.0.0.1:{port}"

    def metric(self, name: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)


def start_embedder(stack: Stack, **env: str) -> Embedder:
    """The real embedder (a first start exports the ONNX model), with its metrics served."""
    port, metrics_port = free_port(), free_port()
    proc, _ = stack.embedder(
        port=port, host="127.0.0.1", metrics_port=metrics_port, backend="onnx-int8", **env
    )
    return Embedder(proc, port, metrics_port)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    with Stack(tmp_path_factory.mktemp("logs")) as stack:
        yield start_embedder(stack)


async def embed(
    target: str, texts: list[str], deadline_s: float = 30.0
) -> embedder_pb2.EmbedResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        return await stub.Embed(embedder_pb2.EmbedRequest(texts=texts), timeout=deadline_s)


def grpcurl(*args: str) -> str:
    binary = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    done = subprocess.run([binary, "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_grpcurl_lists_the_services_and_calls_embed(embedder: Embedder) -> None:
    services = grpcurl(embedder.target, "list").split()
    assert "llmgw.embedder.v1.EmbedderService" in services
    assert "grpc.health.v1.Health" in services
    body = json.dumps({"texts": ["hello from grpcurl"]})
    reply = json.loads(
        grpcurl("-d", body, embedder.target, "llmgw.embedder.v1.EmbedderService/Embed")
    )
    assert reply["model"] == "all-MiniLM-L6-v2"
    assert len(reply["embeddings"][0]["values"]) == 384


async def test_unit_vectors_that_rank_a_paraphrase_above_an_unrelated_sentence(
    embedder: Embedder,
) -> None:
    texts = [
        "How do I reset my password?",
        "I forgot my password and need to change it.",
        "The weather in Lisbon is sunny today.",
    ]
    reply = await embed(embedder.target, texts)
    assert reply.dimension == 384
    vectors = np.array([list(e.values) for e in reply.embeddings])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


async def test_long_texts_are_truncated_and_flagged(embedder: Embedder) -> None:
    reply = await embed(embedder.target, [LONG_TEXT, "short"])
    assert [e.truncated for e in reply.embeddings] == [True, False]
    assert reply.embeddings[0].token_count == 256


@pytest.mark.parametrize(
    ("texts", "message"), [([], "texts is empty"), (["ok", ""], "texts[1] is empty")]
)
async def test_bad_input_is_invalid_argument(
    embedder: Embedder, texts: list[str], message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embed(embedder.target, texts)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


async def test_a_tiny_queue_overflows_into_resource_exhausted(stack: Stack) -> None:
    server = start_embedder(
        stack, max_queue_texts="4", max_texts_per_request="4", max_batch_size="1"
    )
    try:
        calls = [embed(server.target, [LONG_TEXT] * 4) for _ in range(16)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        server.proc.stop()
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    served = [r for r in results if isinstance(r, embedder_pb2.EmbedResponse)]
    assert served, "at least the first call is served"
    assert codes, "a full queue refuses calls"
    assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_sigterm_lets_the_in_flight_call_finish(stack: Stack) -> None:
    # One text per model run: 48 long texts keep the call busy for a while.
    server = start_embedder(stack, max_batch_size="1", grace_s="30")
    call = asyncio.ensure_future(embed(server.target, [LONG_TEXT] * 48, deadline_s=60))
    for _ in range(500):
        if server.metric("embedder_requests_in_flight") >= 1:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the call never reached the server")
    server.proc.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await embed(server.target, ["a new call during the drain"], deadline_s=5)
    reply = await call
    assert len(reply.embeddings) == 48
    assert server.proc.popen is not None
    assert await asyncio.to_thread(server.proc.popen.wait, 30) == 0
    assert "drain_finished" in server.proc.log_path.read_text()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_taken_port_exits_1_with_a_clear_log_line(log_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"EMBEDDER_HOST": "127.0.0.1", "EMBEDDER_PORT": str(port)}
        env["EMBEDDER_METRICS_PORT"] = "0"
        proc = Proc("embedder-taken", [PYTHON, "-m", "embedder"], env=env, log_dir=log_dir)
        assert proc.start().popen is not None
        assert proc.popen.wait(60) == 1
    assert f"cannot serve gRPC on port {port}" in proc.log_path.read_text()


def test_a_failed_model_build_exits_1_and_says_why(log_dir: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache directory should be")
    env = {"EMBEDDER_PORT": "0", "EMBEDDER_METRICS_PORT": "0", "EMBEDDER_CACHE_DIR": str(not_a_dir)}
    proc = Proc("embedder-nobuild", [PYTHON, "-m", "embedder"], env=env, log_dir=log_dir)
    assert proc.start().popen is not None
    assert proc.popen.wait(120) == 1
    log = proc.log_path.read_text()
    assert "onnx_model_export_failed" in log
    assert "embedder_failed" in log
