"""Embedder latency and throughput through gRPC, batching on and off, per backend.

``python -m bench.embedder`` starts the real server (``python -m embedder``) on
free loopback ports for each configuration, then measures, with short
sentences (about a dozen words, a distinct one per request):

- one caller, one sentence per request, one request at a time: latency
  percentiles (what a cache lookup pays);
- 32 concurrent callers, one sentence per request, closed loop for a fixed
  window: sentences per second and latency, with batching on (the default
  ``EMBEDDER_MAX_BATCH_SIZE``) and off (``EMBEDDER_MAX_BATCH_SIZE=1``: the
  same server and code path, one text per model run), plus the mean batch
  size the server reports, and CPU time per sentence under load, which other
  jobs on the machine skew much less than wall-clock numbers: the whole
  server, its event-loop thread alone (gRPC, protobuf, tokenizing, hand-offs:
  the per-call overhead) and the benchmark's client.

The client runs on the same machine as the server and takes CPU from it, as a
gateway next to the sidecar would. On a shared machine, ``--runs 3`` repeats
every configuration (interleaved) and reports medians, and ``--quiet-load``
waits (bounded) for the load average to drop before each run; the load
average at the start of each run is printed. Everything is bounded: about a
minute per round of the table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import grpc
import psutil

from bench.stats import percentile
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
    load: float  # 1-minute load average when the run started
    single_p50_ms: float
    single_p99_ms: float
    throughput: float
    loaded_p50_ms: float
    loaded_p99_ms: float
    mean_batch: float
    cpu_ms: float  # server CPU per sentence under load
    loop_cpu_ms: float  # of which the event-loop thread
    client_cpu_ms: float  # the benchmark's client, per sentence


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


def loop_cpu_seconds(process: psutil.Process) -> float:
    """CPU of the server's main thread, which runs the event loop."""
    main = next(t for t in process.threads() if t.id == process.pid)
    return float(main.user_time + main.system_time)


async def measure(
    port: int, metrics_port: int, server: psutil.Process, args: argparse.Namespace
) -> tuple[float, ...]:
    me = psutil.Process()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        await single(stub, 20)  # connection and first calls
        one = await single(stub, args.single)
        batches = scrape(metrics_port, "embedder_batch_size_count")
        texts = scrape(metrics_port, "embedder_batch_size_sum")
        cpu, loop, client = cpu_seconds(server), loop_cpu_seconds(server), cpu_seconds(me)
        count, many = await loaded(stub, args.callers, args.warmup, args.duration)
        cpu = cpu_seconds(server) - cpu
        loop = loop_cpu_seconds(server) - loop
        client = cpu_seconds(me) - client
        batches = scrape(metrics_port, "embedder_batch_size_count") - batches
        texts = scrape(metrics_port, "embedder_batch_size_sum") - texts
    per_text = 1e3 / texts if texts else 0.0
    return (
        statistics.median(one) * 1e3,
        percentile(one, 99, "higher") * 1e3,
        count / args.duration,
        statistics.median(many) * 1e3,
        percentile(many, 99, "higher") * 1e3,
        texts / batches if batches else 0.0,
        cpu * per_text,
        loop * per_text,
        client * per_text,
    )


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Wait (bounded) until the 1-minute load average is under ``max_load``; return it."""
    deadline = time.monotonic() + max_wait_s
    while (load := os.getloadavg()[0]) >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return load


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
        "EMBEDDER_BATCH_INTRA_OP_THREADS": str(args.batch_threads),
    }
    proc = Proc(
        f"embedder-{backend}-{batching}", [PYTHON, "-m", "embedder"], env=env, log_dir=log_dir
    )
    try:
        proc.start().wait_until(lambda: grpc_serving(port), timeout=180)
        load = wait_for_quiet(args.quiet_load, args.quiet_wait) if args.quiet_load else 0.0
        load = load or os.getloadavg()[0]
        numbers = asyncio.run(measure(port, metrics_port, psutil.Process(proc.pid), args))
    finally:
        proc.stop()
    return Result(backend, batching, load, *numbers)


def median_result(runs: list[Result]) -> Result:
    """Each number the median over the runs of one configuration."""
    first = runs[0]
    values = {
        f.name: statistics.median(getattr(r, f.name) for r in runs)
        for f in fields(Result)
        if f.name not in ("backend", "batching")
    }
    return Result(first.backend, first.batching, **values)


def table(results: list[Result], callers: int) -> str:
    head = (
        f"| backend   | batching | load | 1 caller p50 ms | 1 caller p99 ms "
        f"| {callers} callers sent/s | p50 ms | p99 ms | mean batch "
        f"| server CPU ms/sentence | of which event loop | client CPU ms/sentence |"
    )
    lines = [head, "|" + "|".join("-" * (len(cell)) for cell in head.split("|")[1:-1]) + "|"]
    for r in results:
        lines.append(
            f"| {r.backend:<9} | {'on' if r.batching else 'off':<8} | {r.load:4.1f} "
            f"| {r.single_p50_ms:15.2f} | {r.single_p99_ms:15.2f} "
            f"| {r.throughput:{len(str(callers)) + 16}.0f} "
            f"| {r.loaded_p50_ms:6.1f} | {r.loaded_p99_ms:6.1f} | {r.mean_batch:10.1f} "
            f"| {r.cpu_ms:22.2f} | {r.loop_cpu_ms:19.2f} | {r.client_cpu_ms:22.2f} |"
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
    parser.add_argument(
        "--batch-threads", type=int, default=2, help="EMBEDDER_BATCH_INTRA_OP_THREADS"
    )
    parser.add_argument("--runs", type=int, default=1, help="rounds; the table shows medians")
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=0.0,
        help="before each run, wait until the load average is under this (0: do not wait)",
    )
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="longest wait, seconds")
    args = parser.parse_args()

    log_dir = Path(tempfile.mkdtemp(prefix="bench-embedder-"))
    configs = [(b, batching) for b in args.backends.split(",") for batching in (True, False)]
    runs: dict[tuple[str, bool], list[Result]] = {config: [] for config in configs}
    for round_ in range(args.runs):
        for backend, batching in configs:
            result = run_one(backend, batching, args, log_dir)
            runs[backend, batching].append(result)
            print(
                f"  run {round_ + 1}/{args.runs} {backend} batching={'on' if batching else 'off'}"
                f" (load {result.load:.1f}): p50 {result.single_p50_ms:.2f} ms, "
                f"{result.throughput:.0f}/s",
                flush=True,
            )
    results = [median_result(runs[config]) for config in configs]
    print()
    print(table(results, args.callers))
    for backend in args.backends.split(","):
        on, off = (runs[backend, b] for b in (True, False))
        ratios = sorted(a.throughput / b.throughput for a, b in zip(on, off, strict=True))
        print(
            f"{backend}: batching gives {statistics.median(ratios):.1f}x the throughput of one "
            f"request at a time with {args.callers} callers (per round: "
            + ", ".join(f"{ratio:.2f}" for ratio in ratios)
            + ")"
        )
    print(
        f"(medians of {args.runs} run(s); workers {args.workers}, intra-op threads "
        f"{args.threads}, {args.batch_threads} for large batches; server logs: {log_dir})"
    )


if __name__ == "__main__":
    main()
