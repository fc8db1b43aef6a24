"""deploy/k8s rendered by ``kubectl kustomize`` and checked offline.

Every object of every overlay validates against the Kubernetes schema
(kubernetes-validate, strict: a misspelt field fails). Then what matters to
someone running it: our pods run non-root on a read-only root, probes use
gRPC health for the sidecars, the ConfigMaps hold only variables the services
read, the gateway's targets name headless Services on the right ports, and
the NetworkPolicies let only the gateway reach the sidecars and only the
cache and the gateway reach Redis, and the gateway's keys come from a Secret
mounted read-only, with the same example keys as compose in dev only.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from embedder.settings import EmbedderSettings
from gateway.settings import GatewaySettings
from gateway.tenancy.keys import TenantsFileError, parse_tenants
from mockllm.settings import Settings as MockSettings
from semcache.settings import CacheSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
OVERLAYS = sorted(p.name for p in (REPO / "deploy/k8s/overlays").iterdir() if p.is_dir())
# The oldest Kubernetes the manifests claim (preStop sleep, gRPC probes) and the newest schema.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

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


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, rendered: dict[str, Docs]) -> Docs:
    return rendered[request.param]


# --- schema ------------------------------------------------------------------------


def test_there_is_a_dev_overlay_and_a_prod_like_one() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_kubernetes(overlay: Docs, version: str) -> None:
    for doc in overlay:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )


def test_the_validator_rejects_a_misspelt_field(rendered: dict[str, Docs]) -> None:
    deployment = dict(of_kind(rendered["dev"], "Deployment")["gateway"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_everything_lands_in_the_overlays_namespace(overlay: Docs) -> None:
    (namespace,) = of_kind(overlay, "Namespace")
    for doc in overlay:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


# --- pods --------------------------------------------------------------------------


def test_our_pods_run_non_root_on_a_read_only_root(overlay: Docs) -> None:
    ours = {n: w for n, w in workloads(overlay).items() if n in SETTINGS or n == "redis"}
    assert {"gateway", "embedder", "cache"} <= set(ours)
    for name, workload in ours.items():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            writable = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert writable, f"{name} has nowhere to write"


def test_every_container_has_resources_and_three_probes(overlay: Docs) -> None:
    for name, workload in workloads(overlay).items():
        for container in pod_spec(workload)["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{name} has no {probe}"


@pytest.mark.parametrize("sidecar", ["embedder", "cache"])
def test_sidecars_are_probed_through_grpc_health(overlay: Docs, sidecar: str) -> None:
    (container,) = pod_spec(workloads(overlay)[sidecar])["containers"]
    port = int(container_env(overlay, sidecar)[f"{sidecar.upper()}_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == port, f"{sidecar} {probe}"


def test_gateway_readiness_is_readyz_and_liveness_healthz(overlay: Docs) -> None:
    (container,) = pod_spec(workloads(overlay)["gateway"])["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_redis_is_a_stateful_set_with_a_volume_unless_managed(
    rendered: dict[str, Docs],
) -> None:
    for name, docs in rendered.items():
        sets = of_kind(docs, "StatefulSet")
        if name.endswith("managed-redis"):
            assert "redis" not in sets and "redis" not in of_kind(docs, "Service")
            continue
        redis = sets["redis"]
        (claim,) = redis["spec"]["volumeClaimTemplates"]
        (container,) = pod_spec(redis)["containers"]
        assert {m["name"] for m in container["volumeMounts"]} == {claim["metadata"]["name"]}


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
        "gateway": ("port",),
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


# --- scaling and disruption ----------------------------------------------------------


def test_gateway_and_embedder_autoscale(overlay: Docs) -> None:
    hpas = of_kind(overlay, "HorizontalPodAutoscaler")
    deployments = of_kind(overlay, "Deployment")
    assert set(hpas) == {"gateway", "embedder"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert "replicas" not in deployments[name]["spec"], f"{name}: the HPA owns replicas"
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_disruption_budgets_cover_the_replicated_services(overlay: Docs) -> None:
    budgets = of_kind(overlay, "PodDisruptionBudget")
    for name in ("gateway", "embedder", "cache"):
        budget = budgets[name]
        labels = workloads(overlay)[name]["spec"]["template"]["metadata"]["labels"]
        assert selects(budget["spec"]["selector"]["matchLabels"], labels)
        assert budget["spec"].get("maxUnavailable") == 1, "one replica may always be drained"


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
