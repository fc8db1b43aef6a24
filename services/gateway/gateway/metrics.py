"""The gateway's Prometheus metrics.

Named by Prometheus conventions (base units, ``_total`` counters, ``_seconds``
histograms). Buckets fit LLM traffic: a time to first token of tens of
milliseconds to seconds, requests that last up to minutes.

Per-backend state (EWMA cost, pending, breaker state) is not updated on the
hot path: :class:`BackendGauges` copies the pool's snapshot every second and
at each scrape.

With several uvicorn workers (``GATEWAY_WORKERS`` > 1) the metrics use
prometheus-client's multiprocess mode: every worker writes its values to files
in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics``, whichever worker answers,
aggregates them all: counters and histograms summed, the in-flight gauge
summed over live workers, per-backend gauges one series per worker ``pid``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
BREAKER_STATES = ("closed", "open", "half_open")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by route, model, status and cache outcome",
            ["route", "model", "status", "cache"],
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Request received to last byte sent",
            ["route", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Request received to first token sent",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token = Histogram(
            "gateway_inter_token_seconds",
            "Gap between consecutive stream chunks",
            buckets=GAP_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway added: total minus upstream time",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being served",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.upstream = Counter(
            "gateway_upstream_attempts",
            "Upstream attempts by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "gateway_retries",
            "Attempts retried on another endpoint, by reason",
            ["reason"],
            registry=registry,
        )
        self.retry_budget_exhausted = Counter(
            "gateway_retry_budget_exhausted",
            "Retries refused by the retry budget",
            registry=registry,
        )
        self.hedges = Counter(
            "gateway_hedges",
            "Streams hedged on a second endpoint (a late first token), by which attempt"
            " answered: first, hedge, or none (both failed)",
            ["winner"],
            registry=registry,
        )
        self.hedge_budget_exhausted = Counter(
            "gateway_hedge_budget_exhausted",
            "Hedges refused by the hedge budget",
            registry=registry,
        )
        self.panic_routings = Counter(
            "gateway_panic_routings",
            "Requests routed while every endpoint was ejected",
            ["model"],
            registry=registry,
        )
        self.stream_errors = Counter(
            "gateway_stream_errors",
            "Streams ended by an error after their first byte",
            ["reason"],
            registry=registry,
        )
        self.client_disconnects = Counter(
            "gateway_client_disconnects",
            "Clients that went away before their response ended",
            registry=registry,
        )
        self.rejected = Counter(
            "gateway_rejected_requests",
            "Requests refused at the door, by reason",
            ["reason"],
            registry=registry,
        )
        self.sidecar_errors = Counter(
            "gateway_sidecar_errors",
            "Failed or skipped calls to a sidecar, by gRPC code",
            ["sidecar", "code"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "gateway_cache_lookups", "Cache lookups by outcome", ["outcome"], registry=registry
        )
        self.cache_lookup_seconds = Histogram(
            "gateway_cache_lookup_seconds",
            "Whole cache lookup (exact, embed, semantic)",
            buckets=(*OVERHEAD_BUCKETS, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.cache_stores = Counter(
            "gateway_cache_stores",
            "Responses sent to the cache, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.cache_time_saved = Counter(
            "gateway_cache_time_saved_seconds",
            "Upstream time the hits did not spend",
            registry=registry,
        )
        self.cache_cancelled_upstream = Counter(
            "gateway_cache_cancelled_upstream",
            "Upstream attempts started alongside a cache lookup and cancelled by its hit",
            registry=registry,
        )
        self.cache_cancelled_upstream_seconds = Counter(
            "gateway_cache_cancelled_upstream_seconds",
            "Time the upstream attempts cancelled by a cache hit had run",
            registry=registry,
        )
        self.backends = BackendGauges(registry)
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens in and out (usage when sent, else counted chunks)",
            ["model", "direction"],
            registry=registry,
        )


class BackendGauges:
    """Per-endpoint routing state as gauges, refreshed from the pool's snapshot.

    Refreshed every second by each worker and at every scrape, so the values
    also aggregate in multiprocess mode (one series per worker pid there).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode="liveall")

        self.cost = gauge(
            "gateway_backend_ewma_cost_seconds", "Peak-EWMA latency cost per endpoint", ["endpoint"]
        )
        self.pending = gauge(
            "gateway_backend_pending_requests", "Requests in flight per endpoint", ["endpoint"]
        )
        self.state = gauge(
            "gateway_backend_breaker_state",
            "1 for the endpoint's current breaker state",
            ["endpoint", "state"],
        )
        self.ejections = gauge(
            "gateway_backend_ejections", "Times the breaker opened for the endpoint", ["endpoint"]
        )
        self._known: set[str] = set()

    def refresh(self, snapshot: Iterable[Any]) -> None:
        seen = set()
        for ep in snapshot:
            seen.add(ep.name)
            self.cost.labels(ep.name).set(float(ep.cost))
            self.pending.labels(ep.name).set(float(ep.pending))
            self.ejections.labels(ep.name).set(float(ep.ejections))
            for name in BREAKER_STATES:
                self.state.labels(ep.name, name).set(1.0 if str(ep.breaker) == name else 0.0)
        for gone in self._known - seen:
            for gauge in (self.cost, self.pending, self.ejections):
                gauge.remove(gone)
            for name in BREAKER_STATES:
                self.state.remove(gone, name)
        self._known = seen
