"""deploy/k8s's NetworkPolicies, rendered offline: only the gateway reaches the
sidecars, only the cache and the gateway reach Redis, the model servers take
requests from the gateway only, and clients and Prometheus get in: clients to
the gateway's API port only, Prometheus to its metrics port (/metrics, /admin/*).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from tests.deploy.compose_file import DEPLOY
from tests.deploy.k8s_docs import (
    Docs,
    container_env,
    of_kind,
    pod_spec,
    selects,
    workloads,
)

# --- network policies --------------------------------------------------------------------


def admitted(docs: Docs, src: str | None, dst: str, port: int, src_ns: str = "") -> bool:
    """Does ingress allow a pod of workload ``src`` (or, with src None, any pod
    of namespace ``src_ns``) to reach workload ``dst`` on ``port``?"""
    namespace = docs[0]["metadata"]["name"] if docs[0]["kind"] == "Namespace" else ""
    pods = workloads(docs)
    dst_labels = pods[dst]["spec"]["template"]["metadata"]["labels"]
    src_labels = pods[src]["spec"]["template"]["metadata"]["labels"] if src else {}
    src_ns = src_ns or namespace
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy").values()
        if "Ingress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"].get("matchLabels", {}), dst_labels)
    ]
    if not policies:
        return True

    def peer_ok(peer: dict[str, Any]) -> bool:
        if "namespaceSelector" in peer:
            wanted = peer["namespaceSelector"]["matchLabels"]
            return wanted == {"kubernetes.io/metadata.name": src_ns}
        return (
            src is not None
            and src_ns == namespace
            and selects(peer["podSelector"].get("matchLabels", {}), src_labels)
        )

    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            if "from" not in rule or any(peer_ok(peer) for peer in rule["from"]):
                return True
    return False


def test_only_the_gateway_reaches_the_sidecars(overlay: Docs) -> None:
    others = [n for n in workloads(overlay) if n not in {"gateway", "embedder"}]
    assert admitted(overlay, "gateway", "embedder", 50051)
    assert admitted(overlay, "gateway", "cache", 50052)
    for src in others:
        assert not admitted(overlay, src, "embedder", 50051), src
    for src in [n for n in workloads(overlay) if n not in {"gateway", "cache"}]:
        assert not admitted(overlay, src, "cache", 50052), src
    assert not admitted(overlay, None, "embedder", 50051, src_ns="default")


def test_only_the_cache_and_the_gateway_reach_redis(overlay: Docs) -> None:
    if "redis" not in workloads(overlay):  # managed Redis, outside the cluster
        assert "redis-ingress" not in of_kind(overlay, "NetworkPolicy")
        return
    assert admitted(overlay, "cache", "redis", 6379)
    assert admitted(overlay, "gateway", "redis", 6379)
    for src in [n for n in workloads(overlay) if n not in {"cache", "gateway", "redis"}]:
        assert not admitted(overlay, src, "redis", 6379), src
    assert not admitted(overlay, None, "redis", 6379, src_ns="default")
    assert not admitted(overlay, None, "redis", 6379, src_ns="monitoring")


def test_model_servers_take_requests_from_the_gateway_only(overlay: Docs) -> None:
    servers = [
        n
        for n, w in workloads(overlay).items()
        if w["metadata"]["labels"].get("app.kubernetes.io/component") == "model-server"
    ]
    assert servers
    for server in servers:
        (container,) = pod_spec(workloads(overlay)[server])["containers"]
        (port,) = {p["containerPort"] for p in container["ports"]}
        assert admitted(overlay, "gateway", server, port)
        assert not admitted(overlay, "cache", server, port)
        assert not admitted(overlay, None, server, port, src_ns="default")


def test_clients_and_prometheus_get_in(overlay: Docs) -> None:
    assert admitted(overlay, None, "gateway", 8000, src_ns="default")
    assert admitted(overlay, None, "gateway", 9100, src_ns="monitoring")
    assert admitted(overlay, None, "embedder", 9101, src_ns="monitoring")
    assert admitted(overlay, None, "cache", 9102, src_ns="monitoring")
    assert not admitted(overlay, None, "cache", 9102, src_ns="default")


def test_gateway_metrics_and_admin_are_for_monitoring_only(
    overlay: Docs, settings_from_env: Callable[..., BaseSettings]
) -> None:
    """/metrics and /admin/* are on the gateway's metrics port, which only the
    monitoring namespace reaches; clients reach the API port alone."""
    settings = settings_from_env(GatewaySettings, container_env(overlay, "gateway"))
    api, ops = settings.port, settings.metrics_port  # type: ignore[attr-defined]
    assert ops and ops != api
    assert not admitted(overlay, None, "gateway", ops, src_ns="default")
    for src in [n for n in workloads(overlay) if n != "gateway"]:
        assert not admitted(overlay, src, "gateway", ops), src
    assert admitted(overlay, None, "gateway", ops, src_ns="monitoring")
    assert not admitted(overlay, None, "gateway", 9999, src_ns="default"), "no other port"
    (container,) = pod_spec(workloads(overlay)["gateway"])["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": api,
        "metrics": ops,
    }
    annotations = workloads(overlay)["gateway"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ops
    scraped = of_kind(overlay, "Service")["gateway-headless"]["spec"]["ports"]
    assert [p["port"] for p in scraped] == [ops], "Prometheus's targets are the metrics port"
    public = of_kind(overlay, "Service")["gateway"]["spec"]["ports"]
    assert [p["port"] for p in public] == [api], "the Service clients use has the API only"
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus-k8s.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gateway"]
    assert {sd["port"] for sd in job["dns_sd_configs"]} == {ops}
