"""deploy/k8s's configuration, rendered offline: the ConfigMaps hold only variables
the services read, the gateway's targets name headless Services on the right
ports, the gateway's keys come from a Secret mounted read-only, with the same
example keys as compose in dev only.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from gateway.settings import GatewaySettings
from gateway.tenancy.keys import TenantsFileError, parse_tenants
from semcache.settings import CacheSettings
from tests.deploy.k8s_docs import (
    SETTINGS,
    Docs,
    container_env,
    of_kind,
    pod_spec,
    pods_behind,
    secret_env,
    secret_named,
    service_for,
    workloads,
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"


# --- configuration -----------------------------------------------------------------


def test_configmaps_hold_only_settings_the_services_read(
    overlay: Docs, settings_from_env: Callable[..., BaseSettings]
) -> None:
    for name in workloads(overlay):
        if name not in SETTINGS:
            continue
        cls = SETTINGS[name]
        prefix = str(cls.model_config["env_prefix"])
        fields = {prefix + f.upper() for f in cls.model_fields}
        env = container_env(overlay, name)
        assert env, f"{name} gets no configuration"
        unknown = set(env) - fields
        assert not unknown, f"{name}: {sorted(unknown)} are not fields of {cls.__name__}"
        settings = settings_from_env(cls, env)
        assert settings.host == "0.0.0.0", name  # type: ignore[attr-defined]


def test_gateway_requires_keys_from_a_secret_never_a_configmap(
    overlay: Docs, settings_from_env: Callable[..., BaseSettings]
) -> None:
    gateway = settings_from_env(GatewaySettings, container_env(overlay, "gateway"))
    assert gateway.auth_enabled is True  # type: ignore[attr-defined]
    (container,) = pod_spec(workloads(overlay)["gateway"])["containers"]
    optional = [s["secretRef"] for s in container["envFrom"] if "secretRef" in s]
    assert optional == [{"name": "gateway-secrets", "optional": True}]

    # The tenants file: a key of the Secret, in a read-only mount, not optional.
    keys_file = Path(gateway.api_keys_file)  # type: ignore[attr-defined]
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == keys_file.parent]
    assert mount["readOnly"] is True
    volumes = {v["name"]: v for v in pod_spec(workloads(overlay)["gateway"])["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert not secret.get("optional"), "no tenants: the pod waits rather than serving"
    assert secret["secretName"].startswith("gateway-auth")
    assert {i["path"]: i["key"] for i in secret["items"]} == {keys_file.name: "tenants.yaml"}
    assert secret["defaultMode"] & 0o007 == 0, "not readable by others"

    # The admin key: its digest, from the same Secret.
    admin = secret_env(overlay, "gateway")["GATEWAY_ADMIN_KEY_SHA256"]
    assert admin["name"] == secret["secretName"] and admin["key"] == "admin-key-sha256"

    secret_vars = {"GATEWAY_ADMIN_KEY", "GATEWAY_ADMIN_KEY_SHA256"}
    for config in of_kind(overlay, "ConfigMap").values():
        assert not secret_vars & set(config.get("data", {})), config["metadata"]["name"]


def test_only_dev_carries_the_example_keys_and_they_are_composes(
    rendered: dict[str, Docs], compose: dict[str, Any]
) -> None:
    """dev: the Secret is generated from a copy of compose's example tenants and
    admin digest. prod: no Secret at all, so applying never overwrites yours."""
    secret = secret_named(rendered["dev"], "gateway-auth")
    assert secret is not None
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    example = (REPO / "deploy/tenants.example.yaml").read_text()
    assert data["tenants.yaml"] == example
    assert (K8S / "overlays/dev/tenants.example.yaml").read_text() == example
    admin = compose["services"]["gateway"]["environment"]["GATEWAY_ADMIN_KEY_SHA256"]
    assert data["admin-key-sha256"] == admin
    parse_tenants(yaml.safe_load(data["tenants.yaml"]))  # the gateway would start
    for name, docs in rendered.items():
        if name != "dev":
            assert secret_named(docs, "gateway-auth") is None, name


def test_the_prod_template_stops_the_gateway_until_filled_in() -> None:
    template = yaml.safe_load((K8S / "overlays/prod/tenants.template.yaml").read_text())
    assert template["tenants"]
    with pytest.raises(TenantsFileError, match="digests"):
        parse_tenants(template)


def test_configmaps_use_the_variable_names_compose_uses(
    rendered: dict[str, Docs], compose: dict[str, Any]
) -> None:
    pairs = {
        "gateway": "gateway",
        "embedder": "embedder",
        "cache": "cache",
        "mock-llm": "mock-llm-1",
    }
    docs = rendered["dev"]
    for k8s_name, compose_name in pairs.items():
        compose_vars = set(compose["services"][compose_name]["environment"])
        k8s_vars = set(container_env(docs, k8s_name)) | set(secret_env(docs, k8s_name))
        assert compose_vars <= k8s_vars, k8s_name


def test_ports_match_the_settings(
    overlay: Docs, settings_from_env: Callable[..., BaseSettings]
) -> None:
    port_fields = {
        "gateway": ("port", "metrics_port"),
        "embedder": ("port", "metrics_port"),
        "cache": ("port", "metrics_port"),
        "mock-llm": ("port",),
    }
    for name, workload in workloads(overlay).items():
        if name not in SETTINGS:
            continue
        settings = settings_from_env(SETTINGS[name], container_env(overlay, name))
        (container,) = pod_spec(workload)["containers"]
        declared = {p["containerPort"] for p in container["ports"]}
        assert declared == {getattr(settings, f) for f in port_fields[name]}, name
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == getattr(settings, port_fields[name][-1])


def test_gateway_sees_every_model_server_pod_through_a_headless_service(
    overlay: Docs, settings_from_env: Callable[..., BaseSettings]
) -> None:
    gateway = settings_from_env(GatewaySettings, container_env(overlay, "gateway"))
    backends = gateway.all_backends()  # type: ignore[attr-defined]
    assert backends
    for backend in backends:
        url = urlsplit(backend.url)
        assert url.scheme == "dns+http", f"{backend.url}: one endpoint per pod needs dns+http"
        service = service_for(overlay, url.hostname or "", url.port or 80)
        assert service["spec"]["clusterIP"] == "None", f"{url.hostname} is not headless"
        pods = pods_behind(overlay, service)
        assert pods, f"{url.hostname} selects no pods"
        for pod in pods:
            (port,) = {p["containerPort"] for p in pod_spec(pod)["containers"][0]["ports"]}
            assert port == url.port


@pytest.mark.parametrize("sidecar", ["embedder", "cache"])
def test_gateway_balances_over_sidecar_pods_with_dns_targets(
    overlay: Docs, sidecar: str, settings_from_env: Callable[..., BaseSettings]
) -> None:
    gateway = settings_from_env(GatewaySettings, container_env(overlay, "gateway"))
    target = getattr(gateway, f"{sidecar}_target")
    assert target.startswith("dns:///"), target
    host, port = target.removeprefix("dns:///").rsplit(":", 1)
    service = service_for(overlay, host, int(port))
    assert service["spec"]["clusterIP"] == "None", f"{host}: behind a ClusterIP one pod gets all"
    assert [w["metadata"]["name"] for w in pods_behind(overlay, service)] == [sidecar]
    sidecar_settings = settings_from_env(SETTINGS[sidecar], container_env(overlay, sidecar))
    assert int(port) == sidecar_settings.port  # type: ignore[attr-defined]


def test_cache_and_gateway_share_one_redis(
    overlay: Docs, settings_from_env: Callable[..., BaseSettings]
) -> None:
    cache = settings_from_env(CacheSettings, container_env(overlay, "cache"))
    gateway = settings_from_env(GatewaySettings, container_env(overlay, "gateway"))
    prefixes = (cache.redis_prefix, gateway.redis_prefix)  # type: ignore[attr-defined]
    assert not prefixes[0].startswith(prefixes[1]) and not prefixes[1].startswith(prefixes[0])
    if "redis" not in workloads(overlay):
        (container,) = pod_spec(workloads(overlay)["cache"])["containers"]
        secrets = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert secrets == ["cache-redis"], "a managed Redis URL comes from a Secret"
        ref = secret_env(overlay, "gateway")["GATEWAY_REDIS_URL"]
        assert ref == {"name": "cache-redis", "key": "CACHE_REDIS_URL"}, "the same URL, required"
        return
    assert "GATEWAY_REDIS_URL" not in secret_env(overlay, "gateway")
    urls = [urlsplit(s.redis_url) for s in (cache, gateway)]  # type: ignore[attr-defined]
    assert len({(u.scheme, u.hostname, u.port or 6379, u.path) for u in urls}) == 1
    service = service_for(overlay, urls[0].hostname or "", urls[0].port or 6379)
    assert [w["metadata"]["name"] for w in pods_behind(overlay, service)] == ["redis"]


def test_gateway_expects_the_hpas_minimum_of_replicas(
    overlay: Docs, settings_from_env: Callable[..., BaseSettings]
) -> None:
    """Without Redis each pod enforces 1/expected of every tenant's limits."""
    gateway = settings_from_env(GatewaySettings, container_env(overlay, "gateway"))
    hpa = of_kind(overlay, "HorizontalPodAutoscaler")["gateway"]
    assert gateway.expected_replicas == hpa["spec"]["minReplicas"]  # type: ignore[attr-defined]
