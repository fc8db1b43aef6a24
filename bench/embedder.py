"""Embedder latency and throughput through gRPC, batching on and off, per backend.

``python -m bench.embedder`` starts the real server (``python -m embedder``) on
free loopback ports for each configuration, then measures, with short
sentences (about a dozen words, a distinct one per request):

- one caller, one sentence per request, one request at a time: latency
  percentiles (what a cache lookup pays);
- 32 concurrent callers, one sentence per request, closed loop for a fixed
  window: sentences per second and latency, with batching on (the default
  ``EMBEDDER_MAX_BATCH_SIZE``) and off (``EMBEDDER_MAX_BATCH_SIZE=1``), plus
  the mean batch size the server reports, and the server's CPU time per
  sentence (warm-up included), which other jobs on the machine do not skew.

The client runs on the same machine as the server and takes CPU from it, as a
gateway next to the sidecar would. Everything is bounded: a few seconds per
configuration, about a minute for the whole table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil

from deploy.local.procs import PYTHON, Proc, free_port, grpc_serving
from llmgw.embedder.v1 import embedder_pb2, embedder_pb2_grpc

_SUBJECTS = ["The customer", "My manager", "A new user", "The weather service", "Our team"]
_VERBS = ["asked about", "could not find", "wants to cancel", "reported a problem with"]
_OBJECTS = ["the monthly invoice", "a password reset", "the delivery date", "the API limits"]


def sentence(n: int) -> str:
    """A distinct short sentence for request ``n``."""
    return (
        f"{_SUBJECTS[n % 5]} {_VERBS[n // 5 % 4]} {_OBJECTS[n // 20 % 4]} "
        f"on ticket number {n} this morning."
    )


@dataclass(frozen=True, slots=True)
class Result:
    backend: str
    batching: bool
    single_p50_ms: float
    single_p99_ms: float
    throughput: float
    loaded_p50_ms: float
    loaded_p99_ms: float
    mean_batch: float
    cpu_ms: float  # server CPU per sentence under load: immune to other jobs on the machine


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def scrape(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def single(stub: embedder_pb2_grpc.EmbedderServiceStub, count: int) -> list[float]:
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        await stub.Embed(embedder_pb2.EmbedRequest(texts=[sentence(n)]))
        latencies.append(time.perf_counter() - started)
    return latencies


async def loaded(
    stub: embedder_pb2_grpc.EmbedderServiceStub, callers: int, warmup_s: float, window_s: float
) -> tuple[int, list[float]]:
    """Closed loop; counts calls that end inside the window (after the warm-up)."""
    begin = time.perf_counter() + warmup_s
    end = begin + window_s
    latencies: list[float] = []
    counter = iter(range(10**9))

    async def caller() -> None:
        while (now := time.perf_counter()) < end:
            await stub.Embed(embedder_pb2.EmbedRequest(texts=[sentence(next(counter))]))
            done = time.perf_counter()
            if begin <= done < end:
                latencies.append(done - now)

    await asyncio.gather(*(caller() for _ in range(callers)))
    return len(latencies), latencies


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure(
    port: int, metrics_port: int, server: psutil.Process, args: argparse.Namespace
) -> tuple[float, ...]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        await single(stub, 20)  # connection and first calls
        one = await single(stub, args.single)
        batches = scrape(metrics_port, "embedder_batch_size_count")
        texts = scrape(metrics_port, "embedder_batch_size_sum")
        cpu = cpu_seconds(server)
        count, many = await loaded(stub, args.callers, args.warmup, args.duration)
        cpu = cpu_seconds(server) - cpu
        batches = scrape(metrics_port, "embedder_batch_size_count") - batches
        texts = scrape(metrics_port, "embedder_batch_size_sum") - texts
    return (
        statistics.median(one) * 1e3,
        percentile(one, 0.99) * 1e3,
        count / args.duration,
        statistics.median(many) * 1e3,
        percentile(many, 0.99) * 1e3,
        texts / batches if batches else 0.0,
        cpu / texts * 1e3 if texts else 0.0,
    )


def run_one(backend: str, batching: bool, args: argparse.Namespace, log_dir: Path) -> Result:
    port, metrics_port = free_port(), free_port()
    env = {
        "EMBEDDER_HOST": "127.0.0.1",
        "EMBEDDER_PORT": str(port),
        "EMBEDDER_METRICS_PORT": str(metrics_port),
        "EMBEDDER_BACKEND": backend,
        "EMBEDDER_MAX_BATCH_SIZE": str(args.max_batch_size if batching else 1),
        "EMBEDDER_WORKERS": str(args.workers),
        "EMBEDDER_INTRA_OP_THREADS": str(args.threads),
    }
    proc = Proc(
        f"embedder-{backend}-{batching}", [PYTHON, "-m", "embedder"], env=env, log_dir=log_dir
    )
    try:
        proc.start().wait_until(lambda: grpc_serving(port), timeout=180)
        numbers = asyncio.run(measure(port, metrics_port, psutil.Process(proc.pid), args))
    finally:
        proc.stop()
    return Result(backend, batching, *numbers)


def table(results: list[Result], callers: int) -> str:
    head = (
        f"| backend   | batching | 1 caller p50 ms | 1 caller p99 ms | {callers} callers sent/s "
        f"| p50 ms | p99 ms | mean batch | server CPU ms/sentence |"
    )
    lines = [head, "|" + "|".join("-" * (len(cell)) for cell in head.split("|")[1:-1]) + "|"]
    for r in results:
        lines.append(
            f"| {r.backend:<9} | {'on' if r.batching else 'off':<8} | {r.single_p50_ms:15.2f} "
            f"| {r.single_p99_ms:15.2f} | {r.throughput:{len(str(callers)) + 16}.0f} "
            f"| {r.loaded_p50_ms:6.1f} | {r.loaded_p99_ms:6.1f} | {r.mean_batch:10.1f} "
            f"| {r.cpu_ms:22.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="onnx-int8,torch")
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--single", type=int, default=300, help="sequential calls for p50")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument("--duration", type=float, default=5.0, help="measured window, seconds")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="EMBEDDER_WORKERS")
    parser.add_argument("--threads", type=int, default=1, help="EMBEDDER_INTRA_OP_THREADS")
    args = parser.parse_args()

    log_dir = Path(tempfile.mkdtemp(prefix="bench-embedder-"))
    results = []
    for backend in args.backends.split(","):
        for batching in (True, False):
            result = run_one(backend, batching, args, log_dir)
            print(f"  {backend} batching={'on' if batching else 'off'}: done", flush=True)
            results.append(result)
    print()
    print(table(results, args.callers))
    for backend in args.backends.split(","):
        on, off = (
            next(r for r in results if r.backend == backend and r.batching == b)
            for b in (True, False)
        )
        print(
            f"{backend}: batching gives {on.throughput / off.throughput:.1f}x the throughput "
            f"of one request at a time with {args.callers} callers"
        )
    print(f"(workers {args.workers}, intra-op threads {args.threads}; server logs: {log_dir})")


if __name__ == "__main__":
    main()
