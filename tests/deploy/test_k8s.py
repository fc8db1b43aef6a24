"""deploy/k8s rendered by ``kubectl kustomize`` and checked offline: the schema, the
pods, scaling and disruption.

Every object of every overlay validates against the Kubernetes schema
(kubernetes-validate, strict: a misspelt field fails); our pods run non-root
on a read-only root, probes use gRPC health for the sidecars; the gateway and
embedder autoscale and disruption budgets cover the replicated services. The
configuration is checked in ``test_k8s_config.py``, the NetworkPolicies in
``test_k8s_network.py`` (the helpers they share are in ``k8s_docs.py``, the
``overlay`` fixture in ``conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from tests.deploy.k8s_docs import (
    SETTINGS,
    Docs,
    container_env,
    of_kind,
    pod_spec,
    selects,
    workloads,
)

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (REPO / "deploy/k8s/overlays").iterdir() if p.is_dir())
# The oldest Kubernetes the manifests claim (preStop sleep, gRPC probes) and the newest schema.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


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
