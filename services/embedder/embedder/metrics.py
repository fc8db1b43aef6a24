"""Prometheus metrics, prefix ``embedder_``, base units, served on their own port.

Built per server on a registry passed in (the default one in production, a
fresh one per test), so nothing is registered at import time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2, 4)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "embedder_requests_total",
            "Embed calls by outcome (ok, invalid, overloaded, expired, cancelled, "
            "unavailable, error)",
            ["outcome"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "embedder_request_duration_seconds",
            "Embed calls from arrival to answer, successful ones",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "embedder_requests_in_flight", "Embed calls being served", registry=registry
        )
        self.texts = Counter(
            "embedder_texts_total", "Texts embedded and returned", registry=registry
        )
        self.truncated = Counter(
            "embedder_truncated_texts_total",
            "Texts cut to the model's token window",
            registry=registry,
        )
        self.tokens = Counter(
            "embedder_tokens_total", "Word pieces the model ran on", registry=registry
        )
        self.batch_size = Histogram(
            "embedder_batch_size",
            "Texts per model run",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "embedder_queue_depth",
            "Texts admitted and waiting for a batch",
            registry=registry,
        )
        self.inference_duration = Histogram(
            "embedder_inference_duration_seconds",
            "One model run (one batch)",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.dropped = Counter(
            "embedder_dropped_texts_total",
            "Texts dropped before inference because their call expired or was cancelled",
            ["reason"],
            registry=registry,
        )
        self.errors = Counter(
            "embedder_errors_total",
            "Failures inside the service, by kind",
            ["kind"],
            registry=registry,
        )
