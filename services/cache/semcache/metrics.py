"""The cache service's Prometheus metrics (prefix ``cache_``).

One object per server, registered in the registry it is given (the process's
default one in production, a fresh one per test).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from semcache.index import IndexStats

LOOKUP_OUTCOMES = ("exact_hit", "semantic_hit", "rejected_by_verification", "miss")
_FAST = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SLOW = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.lookups = Counter("cache_lookups", "Lookups by outcome.", ["outcome"], registry=r)
        for outcome in LOOKUP_OUTCOMES:
            self.lookups.labels(outcome)
        self.lookup_seconds = Histogram(
            "cache_lookup_duration_seconds", "Lookup time inside the service.", ["path"],
            buckets=_FAST, registry=r,
        )  # fmt: skip
        self.pair_verifications = Counter(
            "cache_pair_verifications",
            "Pair-model decisions: accepted, below_threshold, refused (text it cannot judge), "
            "unavailable (busy, late or failing: a miss).",
            ["outcome"], registry=r,
        )  # fmt: skip
        for outcome in ("accepted", "below_threshold", "refused", "unavailable"):
            self.pair_verifications.labels(outcome)
        self.pair_verify_seconds = Histogram(
            "cache_pair_verify_duration_seconds", "One lookup's pair-model call, waited for.",
            buckets=_FAST, registry=r,
        )  # fmt: skip
        self.stores = Counter("cache_stores", "Entries stored.", registry=r)
        self.evictions = Counter(
            "cache_evictions", "Entries evicted to stay under the maximum count.", registry=r
        )
        self.invalidated = Counter(
            "cache_invalidated_entries", "Entries removed by Invalidate.", ["target"], registry=r
        )
        self.entries = Gauge("cache_entries", "Live entries in the store.", registry=r)
        self.index_vectors = Gauge(
            "cache_index_vectors", "Live vectors in this replica's index.", ["type"], registry=r
        )
        self.index_namespaces = Gauge(
            "cache_index_namespaces", "Namespaces with vectors in the index.", registry=r
        )
        self.index_tombstones = Gauge(
            "cache_index_tombstones", "Deleted or expired vectors not compacted yet.", registry=r
        )
        self.rebuild_seconds = Histogram(
            "cache_index_rebuild_duration_seconds",
            "Index builds: load (start, resync), grow (flat to IVF), compact, shrink.",
            ["reason"], buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.stream_lag = Gauge(
            "cache_stream_lag_seconds", "Age of the newest change applied from the stream.",
            registry=r,
        )  # fmt: skip
        self.resyncs = Counter(
            "cache_resyncs", "Full rescans of the store after the stream lost track.",
            registry=r,
        )  # fmt: skip
        self.redis_errors = Counter(
            "cache_redis_errors", "Redis calls that failed.", ["op"], registry=r
        )

    def observe_index(self, stats: IndexStats) -> None:
        for kind in ("flat", "ivf"):
            self.index_vectors.labels(kind).set(stats.vectors.get(kind, 0))
        self.index_namespaces.set(stats.namespaces)
        self.index_tombstones.set(stats.tombstones)

    def observe_rebuild(self, reason: str, seconds: float) -> None:
        self.rebuild_seconds.labels(reason).observe(seconds)

    def redis_error(self, op: str) -> None:
        self.redis_errors.labels(op).inc()
