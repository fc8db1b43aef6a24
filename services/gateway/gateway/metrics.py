"""The gateway's Prometheus metrics.

Named by Prometheus conventions (base units, ``_total`` counters, ``_seconds``
histograms). Buckets fit LLM traffic: a time to first token of tens of
milliseconds to seconds, requests that last up to minutes; the last buckets
reach the timeouts (a first token up to ``GATEWAY_TTFT_TIMEOUT_S``, a request
up to ``GATEWAY_TOTAL_TIMEOUT_S``), so a slow answer is never only "+Inf".

Label values are bounded: a ``model`` label is a model this gateway serves
(the pool's, or the embedder's) or ``unknown``, whatever name a client sends
(:class:`ModelLabels`); reasons, routes and outcomes are fixed sets.

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

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.protocol.headers import CacheOutcome

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
)  # fmt: skip
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
BREAKER_STATES = ("closed", "open", "half_open")
UNKNOWN_MODEL = "unknown"
# Why a request was refused before it was served (gateway_rejected_requests_total{reason}).
REJECTION_REASONS = (
    "invalid_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "payload_too_large",
    "headers_too_large",
    "model_not_found",
    "rate_limited",
    "overloaded",
    "token_budget",  # a tenant's tokens per minute (tenancy.tokens)
)
CACHE_HITS = frozenset({CacheOutcome.HIT_EXACT, CacheOutcome.HIT_SEMANTIC})


def reaching(buckets: tuple[float, ...], limit: float) -> tuple[float, ...]:
    """``buckets``, with ``limit`` added when they stop short of it."""
    return buckets if limit <= buckets[-1] else (*buckets, limit)


class ModelLabels:
    """The ``model`` label value of a request: the name when this gateway serves
    it, else ``unknown``, so client-chosen names (a typo, a scan) add no series.

    ``serves`` is the pool's ``has_model`` (a dict lookup), set by the app once
    the pool exists; :meth:`add` names models served apart from the pool (the
    embedder's). A model the pool stops serving keeps its existing series.
    """

    def __init__(self) -> None:
        self._serves: Callable[[str], bool] = lambda _model: False
        self._extra: set[str] = set()

    def watch(self, serves: Callable[[str], bool]) -> None:
        self._serves = serves

    def add(self, model: str) -> None:
        self._extra.add(model)

    def __call__(self, model: str) -> str:
        return model if model in self._extra or self._serves(model) else UNKNOWN_MODEL


class ModelLabelled:
    """A metric whose ``model`` label (at ``index``) goes through :class:`ModelLabels`.

    Callers use it as the metric itself (``.labels(...)``, positional or by name).
    """

    def __init__(self, metric: Any, index: int, models: ModelLabels) -> None:
        self.metric = metric
        self._index = index
        self._models = models

    def labels(self, *values: str, **named: str) -> Any:
        if "model" in named:
            named["model"] = self._models(named["model"])
        elif values:
            values = (
                *values[: self._index],
                self._models(values[self._index]),
                *values[self._index + 1 :],
            )
        return self.metric.labels(*values, **named)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


class GatewayMetrics:
    """Every metric of the gateway, on ``registry``.

    ``ttft_limit_s`` and ``duration_limit_s`` (the TTFT and total timeouts)
    extend the buckets when the defaults stop short of them.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        ttft_limit_s: float = TTFT_BUCKETS[-1],
        duration_limit_s: float = LATENCY_BUCKETS[-1],
    ) -> None:
        self.registry = registry
        self.models = ModelLabels()
        ttft_buckets = reaching(TTFT_BUCKETS, ttft_limit_s)
        self.requests = ModelLabelled(
            Counter(
                "gateway_requests",
                "Requests answered, by route, model (or unknown), status and cache outcome",
                ["route", "model", "status", "cache"],
                registry=registry,
            ),
            1,
            self.models,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Request received to last byte sent",
            ["route", "stream"],
            buckets=reaching(LATENCY_BUCKETS, duration_limit_s),
            registry=registry,
        )
        self.ttft = ModelLabelled(
            Histogram(
                "gateway_time_to_first_token_seconds",
                "Request received to first token sent, cache hits included"
                " (without them: gateway_upstream_time_to_first_token_seconds)",
                ["model"],
                buckets=ttft_buckets,
                registry=registry,
            ),
            0,
            self.models,
        )
        self.upstream_ttft = ModelLabelled(
            Histogram(
                "gateway_upstream_time_to_first_token_seconds",
                "Request received to first token sent, answers from a model server only",
                ["model"],
                buckets=ttft_buckets,
                registry=registry,
            ),
            0,
            self.models,
        )
        self.cache_hit_ttft = ModelLabelled(
            Histogram(
                "gateway_cache_hit_time_to_first_token_seconds",
                "Request received to first token sent, answers replayed from the cache",
                ["model"],
                buckets=ttft_buckets,
                registry=registry,
            ),
            0,
            self.models,
        )
        self.embedding_inputs = ModelLabelled(
            Counter(
                "gateway_embedding_inputs",
                "Texts embedded by /v1/embeddings (one request may carry many)",
                ["model"],
                registry=registry,
            ),
            0,
            self.models,
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
        self.continuations = Counter(
            "gateway_stream_continuations",
            "Streams whose upstream broke after the first byte, by what became of them:"
            " continued on another replica, failed (no replica could), not_continuable",
            ["result"],
            registry=registry,
        )
        self.hedge_budget_exhausted = Counter(
            "gateway_hedge_budget_exhausted",
            "Hedges refused by the hedge budget",
            registry=registry,
        )
        self.panic_routings = ModelLabelled(
            Counter(
                "gateway_panic_routings",
                "Requests routed while every endpoint was ejected",
                ["model"],
                registry=registry,
            ),
            0,
            self.models,
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
            "Requests refused before they were served, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REJECTION_REASONS:  # every reason's series from the start, at 0
            self.rejected.labels(reason)
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
        self.tokens = ModelLabelled(
            Counter(
                "gateway_tokens",
                "Tokens in and out (usage when sent, else counted chunks)",
                ["model", "direction"],
                registry=registry,
            ),
            0,
            self.models,
        )

    def first_token(self, model: str, cache: str, seconds: float) -> None:
        """A first token sent ``seconds`` after the request came: into
        ``gateway_time_to_first_token_seconds`` as ever, and into the upstream or
        the cache-hit histogram by how the request was answered (``cache``: its
        ``X-Cache`` value)."""
        self.ttft.labels(model).observe(seconds)
        apart = self.cache_hit_ttft if cache in CACHE_HITS else self.upstream_ttft
        apart.labels(model).observe(seconds)


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
