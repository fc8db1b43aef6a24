"""Cache service benchmark: real replicas over a real Redis, one big namespace.

    python -m bench.cache_service [--entries N] [--queries Q]

1. starts a throwaway redis-server and loads N entries into it through the
   service's own Redis store (pipelined Lua calls), one namespace;
2. starts replica A (``python -m semcache``) and times it from start to SERVING:
   the scan of Redis and the index build (IVF above CACHE_IVF_MIN_VECTORS);
3. times exact and semantic lookups over gRPC, one at a time, and the semantic
   lookups' recall@1 against exact (brute-force) search;
4. starts replica B and times how long an entry stored through A takes to be
   found through B.

Data: synthetic clustered unit vectors (384 floats): N/250 random centres, each
vector a centre plus Gaussian noise, normalised (cosine to its centre ~0.7,
like sentences on one topic). A query is a stored vector moved to cosine ~0.97
from it, a close paraphrase above the verifier's similarity floor; every entry
and query has the same prompt text, so the verifier passes whatever the index
returns and recall is the index's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import grpc
import numpy as np
import psutil

from bench.runner import cpu_model
from bench.stats import summary
from deploy.local.procs import Proc, free_port, grpc_serving, redis_proc, redis_ready
from llmgw.cache.v1 import cache_pb2 as pb
from llmgw.cache.v1 import cache_pb2_grpc
from semcache.model import Entry
from semcache.redis_store import RedisStore

DIM = 384
NAMESPACE = "bench"
PROMPT = "What is the best way to learn a new programming language quickly?"
RESPONSE = b'{"choices":[{"message":{"role":"assistant","content":"' + b"x" * 200 + b'"}}]}'
CHUNK = 100_000


@dataclass
class Row:
    what: str
    value: str


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 250), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        noise = rng.standard_normal((m, DIM), dtype=np.float32) / np.sqrt(DIM)
        out[start : start + m] = centres[rng.integers(0, len(centres), m)] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def paraphrases(x: np.ndarray, count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(x), size=count, replace=False)
    noise = rng.standard_normal((count, DIM), dtype=np.float32) * (0.25 / np.sqrt(DIM))
    q = x[picked] + noise
    return q / np.linalg.norm(q, axis=1, keepdims=True), picked


async def load(url: str, x: np.ndarray, batch: int = 2000) -> float:
    store = RedisStore(url, max_entries=2 * len(x), socket_timeout_s=30.0)
    started, now = time.monotonic(), time.time()
    try:
        for start in range(0, len(x), batch):
            entries = [
                Entry(f"b{i:08d}", NAMESPACE, f"k{i}", PROMPT, x[i].tobytes(), RESPONSE,
                      now, now + 86_400, 0.8)
                for i in range(start, min(start + batch, len(x)))
            ]  # fmt: skip
            await store.put_many(entries)
            if start and start % 200_000 == 0:
                print(f"  loaded {start} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    finally:
        await store.close()
    return time.monotonic() - started


def replica(name: str, url: str, entries: int, log_dir: Path) -> tuple[Proc, int, float]:
    port = free_port()
    env = {
        "CACHE_REDIS_URL": url, "CACHE_PORT": str(port), "CACHE_METRICS_PORT": "0",
        "CACHE_MAX_ENTRIES": str(2 * entries + 1000), "CACHE_LOG_LEVEL": "info",
    }  # fmt: skip
    started = time.monotonic()
    proc = Proc(name, [sys.executable, "-m", "semcache"], env=env, log_dir=log_dir).start()
    proc.wait_until(lambda: grpc_serving(port), timeout=900)
    return proc, port, time.monotonic() - started


def percentiles(samples: list[float]) -> str:
    ms = summary(np.array(samples) * 1000, (50, 99), method="linear")
    return f"p50 {ms['p50']:.2f} ms, p99 {ms['p99']:.2f} ms"


def exact_lookups(stub: cache_pb2_grpc.CacheServiceStub, n: int, count: int) -> list[float]:
    rng = np.random.default_rng(2)
    times = []
    for i in rng.integers(0, n, count):
        request = pb.LookupRequest(namespace=NAMESPACE, exact_key=f"k{i}")
        started = time.perf_counter()
        reply = stub.Lookup(request, timeout=5)
        times.append(time.perf_counter() - started)
        assert reply.kind == pb.HIT_KIND_EXACT, reply
    return times


def semantic_lookups(
    stub: cache_pb2_grpc.CacheServiceStub, queries: np.ndarray, truth: np.ndarray
) -> tuple[list[float], float]:
    times, hits, misses = [], 0, 0
    for q, expected in zip(queries, truth, strict=True):
        request = pb.LookupRequest(namespace=NAMESPACE, vector=q.tolist(), prompt_text=PROMPT)
        started = time.perf_counter()
        reply = stub.Lookup(request, timeout=5)
        times.append(time.perf_counter() - started)
        hits += reply.kind == pb.HIT_KIND_SEMANTIC and reply.entry_id == f"b{expected:08d}"
        misses += reply.kind != pb.HIT_KIND_SEMANTIC
    if misses:
        print(f"  {misses} of {len(queries)} semantic lookups missed", file=sys.stderr)
    return times, hits / len(queries)


def propagation(a: pb.CacheServiceStub, b: pb.CacheServiceStub, trials: int) -> list[float]:
    rng = np.random.default_rng(3)
    delays = []
    for _ in range(trials):
        v = rng.standard_normal(DIM).astype(np.float32)
        v /= np.linalg.norm(v)
        stored = a.Store(
            pb.StoreRequest(namespace=NAMESPACE, prompt_text=PROMPT, vector=v.tolist(),
                            response=RESPONSE), timeout=5,
        )  # fmt: skip
        started = time.perf_counter()
        lookup = pb.LookupRequest(namespace=NAMESPACE, vector=v.tolist(), prompt_text=PROMPT)
        while b.Lookup(lookup, timeout=5).entry_id != stored.entry_id:
            if time.perf_counter() - started > 10:
                raise RuntimeError("entry not seen by the second replica after 10 s")
        delays.append(time.perf_counter() - started)
    return delays


def stats_row(stub: cache_pb2_grpc.CacheServiceStub, proc: Proc) -> str:
    s = stub.Stats(pb.StatsRequest(), timeout=30)
    rss = psutil.Process(proc.pid).memory_info().rss / 2**30
    return f"{s.index_type}, {s.index_size} vectors, RSS {rss:.2f} GiB"


def run(entries: int, queries: int, trials: int, log_dir: Path) -> list[Row]:
    rows: list[Row] = []
    print(f"generating {entries} clustered vectors", file=sys.stderr)
    x = clustered(entries)
    q, _ = paraphrases(x, queries)
    _, truth = faiss.knn(q, x, 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = truth[:, 0]
    port = free_port()
    redis = redis_proc(port, log_dir=log_dir).start()
    procs: list[Proc] = [redis]
    try:
        redis.wait_until(redis_ready(port), timeout=10)
        url = f"redis://127.0.0.1:{port}/0"
        print("loading Redis", file=sys.stderr)
        seconds = asyncio.run(load(url, x))
        rows.append(Row("load into Redis (pipelined)", f"{seconds:.1f} s"))
        del x
        print("starting replica A (scan + index build)", file=sys.stderr)
        a_proc, a_port, a_ready = replica("cache-a", url, entries, log_dir)
        procs.append(a_proc)
        rows.append(Row("replica start to SERVING (rebuild from Redis)", f"{a_ready:.1f} s"))
        with grpc.insecure_channel(f"127.0.0.1:{a_port}") as channel:
            a = cache_pb2_grpc.CacheServiceStub(channel)
            rows.append(Row("replica A index", stats_row(a, a_proc)))
            exact_lookups(a, entries, 200)  # warm-up
            rows.append(Row("exact lookup over gRPC", percentiles(exact_lookups(a, entries, 2000))))
            semantic_lookups(a, q[:50], truth[:50])  # warm-up
            times, recall = semantic_lookups(a, q, truth)
            rows.append(Row("semantic lookup over gRPC", percentiles(times)))
            rows.append(
                Row("semantic recall@1 vs exact search", f"{recall:.3f} ({queries} queries)")
            )
            print("starting replica B", file=sys.stderr)
            b_proc, b_port, b_ready = replica("cache-b", url, entries, log_dir)
            procs.append(b_proc)
            rows.append(Row("second replica start to SERVING", f"{b_ready:.1f} s"))
            with grpc.insecure_channel(f"127.0.0.1:{b_port}") as b_channel:
                b = cache_pb2_grpc.CacheServiceStub(b_channel)
                delays = propagation(a, b, trials)
                rows.append(Row(
                    "stored via A, found via B",
                    f"p50 {np.median(delays) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms"
                    f" ({trials} entries)",
                ))  # fmt: skip
    finally:
        for proc in reversed(procs):
            proc.stop()
    return rows


def compare_namespaces(total: int, shares: tuple[float, ...] = (0.005, 0.05)) -> list[Row]:
    """One IVF over every namespace with a filter, vs an index per namespace (in-process)."""
    from semcache.namespace_index import IndexParams, NamespaceIndex

    x = clustered(total, seed=7)
    params = IndexParams(dim=DIM)
    glob = NamespaceIndex.from_arrays(
        params, [str(i) for i in range(total)], x, np.full(total, 2e9)
    )
    ivf = glob._gen.index  # the same IVF the service would build for one namespace
    rows: list[Row] = []
    for share in shares:
        rng = np.random.default_rng(int(share * 1000))
        members = np.sort(rng.choice(total, size=int(total * share), replace=False))
        bits = np.zeros((total + 7) // 8, dtype=np.uint8)
        np.bitwise_or.at(bits, members >> 3, (1 << (members & 7)).astype(np.uint8))
        sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        params_f = faiss.SearchParametersIVF()
        params_f.sel, params_f.nprobe = sel, params.ivf_nprobe
        own = NamespaceIndex.from_arrays(
            params, [str(i) for i in members], x[members], np.full(len(members), 2e9)
        )
        for label, distance in (("paraphrase", 0.45), ("unrelated", 1.0)):
            q = x[members[:300]] + rng.standard_normal((300, DIM), dtype=np.float32) * (
                distance / np.sqrt(DIM)
            )
            q /= np.linalg.norm(q, axis=1, keepdims=True)
            if label == "unrelated":
                q = clustered(300, seed=11)
            _, truth = faiss.knn(q, x[members], 1, metric=faiss.METRIC_INNER_PRODUCT)
            truth_ids = members[truth[:, 0]]
            f_times, o_times, f_hits, o_hits = [], [], 0, 0
            for qi, expected in zip(q, truth_ids, strict=True):
                started = time.perf_counter()
                _, found = ivf.search(qi.reshape(1, -1), 1, params=params_f)
                f_times.append(time.perf_counter() - started)
                f_hits += found[0, 0] == expected
                started = time.perf_counter()
                mine = own.search(qi, 1, -1.0, 0.0)
                o_times.append(time.perf_counter() - started)
                o_hits += bool(mine) and int(mine[0].entry_id) == expected
            what = f"{len(members)} of {total} ({label} queries)"
            rows.append(Row(f"filtered global IVF, {what}",
                            f"recall@1 {f_hits / 300:.3f}, {percentiles(f_times)}"))  # fmt: skip
            rows.append(Row(f"own index ({own.stats().kind}), {what}",
                            f"recall@1 {o_hits / 300:.3f}, {percentiles(o_times)}"))  # fmt: skip
    return rows


def print_table(title: str, rows: list[Row]) -> None:
    width = max(len(r.what) for r in rows)
    print(f"\n{title}\n")
    print(f"| {'measure':<{width}} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for row in rows:
        print(f"| {row.what:<{width}} | {row.value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument(
        "--compare-namespaces", type=int, metavar="TOTAL", default=0,
        help="instead: filtered search in one IVF vs an index per namespace, TOTAL vectors",
    )  # fmt: skip
    args = parser.parse_args()
    cpu = cpu_model()
    memory = psutil.virtual_memory().total / 2**30
    machine = f"{time.strftime('%Y-%m-%d')}, {cpu}, {psutil.cpu_count()} cores, {memory:.0f} GiB"
    if args.compare_namespaces:
        faiss.omp_set_num_threads(1)
        rows = compare_namespaces(args.compare_namespaces)
        print_table(f"namespaces: filter vs own index, one thread, {machine}", rows)
        return
    faiss.omp_set_num_threads(2)  # ground truth only; the replicas set their own
    log_dir = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    rows = run(args.entries, args.queries, args.trials, log_dir)
    title = f"cache service, {args.entries} entries in one namespace, dim {DIM}, {machine}"
    print_table(f"{title} (logs: {log_dir})", rows)


if __name__ == "__main__":
    main()
