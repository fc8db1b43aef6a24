"""deploy/k8s's NetworkPolicies, rendered offline: only the gateway reaches the
sidecars, only the cache and the gateway reach Redis, the model servers take
requests from the gateway only, and clients and Prometheus get in.
"""

from __future__ import annotations

from typing import Any

from tests.deploy.k8s_docs import (
    Docs,
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
    assert admitted(overlay, None, "embedder", 9101, src_ns="monitoring")
    assert admitted(overlay, None, "cache", 9102, src_ns="monitoring")
    assert not admitted(overlay, None, "cache", 9102, src_ns="default")
