"""Flow control's Prometheus metrics (on the gateway's registry, beside ``gateway.metrics``).

Labels are bounded: ``model`` is a model the pool serves (a request for any
other never reaches flow control), ``priority`` one of ``PRIORITIES``,
``tenant`` a configured tenant, ``reason`` a fixed set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Why a request was sent away without being served (gateway_flow_shed_total{reason}).
SHED_REASONS = (
    "tenant_queue_full",  # 429: the tenant already has queue_per_tenant waiting
    "queue_full",  # 503: the pool's queue holds queue_max requests
    "deadline_over_share",  # 429: its deadline passed while its tenant had its share or more
    "deadline_fleet_full",  # 503: its deadline passed while its tenant was under its share
    "token_budget",  # 429: the tenant's tokens per minute are spent
)


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.saturated = Gauge(
            "gateway_flow_saturated",
            "1 while the model pool is saturated (requests queue at the gateway)",
            ["model"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            "gateway_flow_admitted_in_flight",
            "Requests admitted by flow control and not yet ended, per pool",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.depth = Gauge(
            "gateway_flow_queue_depth",
            "Requests waiting in the gateway's queue",
            ["model", "priority", "tenant"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.wait = Histogram(
            "gateway_flow_queue_wait_seconds",
            "Time a request waited in the queue (sent, shed or gone)",
            ["model", "priority", "tenant"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.admitted = Counter(
            "gateway_flow_admitted_total",
            "Requests admitted to a pool, at once (direct) or from the queue (queued)",
            ["model", "priority", "tenant", "path"],
            registry=registry,
        )
        self.admitted_tokens = Counter(
            "gateway_flow_admitted_tokens_total",
            "Estimated tokens (prompt + max_tokens) admitted: the shares served",
            ["model", "priority", "tenant"],
            registry=registry,
        )
        self.shed = Counter(
            "gateway_flow_shed_total",
            "Requests sent away by flow control, by reason",
            ["model", "priority", "tenant", "reason"],
            registry=registry,
        )
        self.left = Counter(
            "gateway_flow_abandoned_total",
            "Requests whose client left (or whose cache lookup hit) while they waited",
            ["model", "priority", "tenant"],
            registry=registry,
        )
