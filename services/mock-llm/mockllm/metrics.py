"""Prometheus metrics with vLLM's names, in a registry owned by one app.

The gauges are read from the admission state when scraped, so serving a request
costs no metric updates beyond two counter increments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from mockllm.admission import Admission

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


KvUsage = Callable[[], float | None]
PrefixCounts = Callable[[], tuple[int, int] | None]


class _EngineCollector(Collector):
    def __init__(
        self, admission: Admission, model_name: str, kv_usage: KvUsage, prefix: PrefixCounts
    ) -> None:
        self._admission = admission
        self._model_name = model_name
        self._kv_usage = kv_usage
        self._prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        adm = self._admission
        kv = self._kv_usage()
        for name, doc, value in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                adm.running,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                adm.waiting,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                adm.running / adm.limit if kv is None else kv,
            ),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric([self._model_name], float(value))
            yield family
        counts = self._prefix()
        if counts is not None:
            for name, doc, count in (
                ("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.", counts[0]),
                ("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.", counts[1]),
            ):
                counter = CounterMetricFamily(name, doc, labels=["model_name"])
                counter.add_metric([self._model_name], float(count))
                yield counter


class Metrics:
    def __init__(
        self,
        admission: Admission,
        model_name: str,
        kv_usage: KvUsage = lambda: None,
        prefix: PrefixCounts = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(admission, model_name, kv_usage, prefix))
        self.requests = Counter(
            "mockllm_requests",
            "Generation requests by endpoint and HTTP status (499: client went away).",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
