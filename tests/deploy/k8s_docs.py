"""deploy/k8s's rendered objects, read the way the checks need them: workloads
and their pod specs, the environment a container gets from its ConfigMaps and
Secrets, the Service behind a host name and the pods behind a Service."""

from __future__ import annotations

from typing import Any

from pydantic_settings import BaseSettings

from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from mockllm.settings import Settings as MockSettings
from semcache.settings import CacheSettings

# Our workloads by name, and the settings class each one's environment must parse as.
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "embedder": EmbedderSettings,
    "cache": CacheSettings,
    "mock-llm": MockSettings,
}
Docs = list[dict[str, Any]]


def of_kind(docs: Docs, kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: Docs) -> dict[str, dict[str, Any]]:
    return {**of_kind(docs, "Deployment"), **of_kind(docs, "StatefulSet")}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container_env(docs: Docs, name: str) -> dict[str, str]:
    """The variables a workload's container gets from its ConfigMaps."""
    maps = of_kind(docs, "ConfigMap")
    (container,) = pod_spec(workloads(docs)[name])["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def secret_env(docs: Docs, name: str) -> dict[str, dict[str, Any]]:
    """The variables a workload's container takes from Secret keys (``secretKeyRef``)."""
    (container,) = pod_spec(workloads(docs)[name])["containers"]
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def secret_named(docs: Docs, name: str) -> dict[str, Any] | None:
    """A Secret the overlay creates under ``name`` (a generated one has a hash suffix)."""
    secrets = of_kind(docs, "Secret").items()
    found = [s for n, s in secrets if name in (n, n.rsplit("-", 1)[0])]
    assert len(found) <= 1
    return found[0] if found else None


def service_for(docs: Docs, host: str, port: int) -> dict[str, Any]:
    services = of_kind(docs, "Service")
    assert host in services, f"no Service {host!r}"
    service = services[host]
    assert port in {p["port"] for p in service["spec"]["ports"]}, f"{host} has no port {port}"
    return service


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods_behind(docs: Docs, service: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        w
        for w in workloads(docs).values()
        if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
    ]
