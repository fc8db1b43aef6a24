"""deploy/compose.yml, checked without a Docker engine: its structure and settings.

The file's structure (services, ports, start order by health), that every
variable it sets is a setting the service really reads (and parses), and that
the addresses it wires together match the ports those settings open. Its
healthchecks and the gateway's keys, against real servers, are in
``test_compose_serving.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.compose_file import DEPLOY, PUBLISHED, SETTINGS, env_of

REPO = Path(__file__).resolve().parents[2]
PREFIXES = ("GATEWAY_", "EMBEDDER_", "CACHE_", "MOCKLLM_")


def ports_of(compose: dict[str, Any], service: str) -> set[int]:
    published = set()
    for spec in compose["services"][service].get("ports", []):
        host, container = str(spec).rsplit(":", 1)[-2:] if ":" in str(spec) else (spec, spec)
        assert host.split(":")[-1] == container, f"{service}: {spec} maps a port to another"
        published.add(int(container))
    return published


# --- structure -----------------------------------------------------------------


def test_the_stack_has_every_service_on_its_port(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*PUBLISHED, "redis"}
    for service, ports in PUBLISHED.items():
        assert ports_of(compose, service) == ports, service


def test_services_start_in_order_of_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    needs = {
        "gateway": {"redis", "embedder", "cache", "mock-llm-1", "mock-llm-2"},
        "cache": {"redis"},
        "grafana": {"prometheus"},
    }
    for service, deps in needs.items():
        assert set(services[service]["depends_on"]) == deps, service
    for name, spec in services.items():
        for dep, how in spec.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert "healthcheck" in services[dep], (
                f"{name} waits on {dep}, which has no healthcheck"
            )
    for name, spec in services.items():
        check = spec["healthcheck"]
        assert check["test"][0] == "CMD", name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_our_images_build_from_the_repo_root_and_run_hardened(compose: dict[str, Any]) -> None:
    for service in SETTINGS:
        spec = compose["services"][service]
        build = spec["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO, service
        assert (REPO / build["dockerfile"]).is_file(), service
        assert spec["image"].startswith("llmgw/"), service
        assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"], service
        assert "/tmp" in spec["tmpfs"], service


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"


# --- variables are real settings --------------------------------------------------


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_variable_is_a_setting_the_service_reads(
    service: str, compose: dict[str, Any], settings_of: Callable[[str], Any]
) -> None:
    cls = SETTINGS[service]
    prefix = str(cls.model_config["env_prefix"])
    fields = {prefix + name.upper() for name in cls.model_fields}
    env = env_of(compose, service)
    assert env, f"{service} sets no variable"
    for key in env:
        assert key.startswith(prefix), f"{service} gets {key}: it reads only {prefix}*"
        assert key in fields, f"{service}: {key} is not a field of {cls.__name__}"
    settings_of(service)  # every value parses (JSON lists, numbers, ...)


def test_no_service_gets_another_services_variables(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        own = str(SETTINGS[name].model_config["env_prefix"]) if name in SETTINGS else None
        for key in spec.get("environment", {}):
            if key.startswith(PREFIXES):
                assert key.startswith(own or "-"), f"{name} gets {key}"


def test_services_listen_on_every_interface(settings_of: Callable[[str], Any]) -> None:
    for service in SETTINGS:
        assert settings_of(service).host == "0.0.0.0", service


# --- the wiring between services matches their settings ---------------------------


def test_gateway_reaches_each_model_server_on_the_port_it_listens_on(
    compose: dict[str, Any], settings_of: Callable[[str], Any]
) -> None:
    gateway = settings_of("gateway")
    seen = set()
    for backend in gateway.all_backends():
        url = urlsplit(backend.url)
        assert url.scheme == "http"
        mock = settings_of(url.hostname)
        assert url.port == mock.port, backend.url
        assert set(backend.models) <= set(mock.models), backend.url
        seen.add(url.hostname)
    assert seen == {"mock-llm-1", "mock-llm-2"}, "one endpoint per model server"


def test_gateway_reaches_the_sidecars_with_dns_targets(settings_of: Callable[[str], Any]) -> None:
    gateway = settings_of("gateway")
    for target, service in ((gateway.embedder_target, "embedder"), (gateway.cache_target, "cache")):
        assert target == f"dns:///{service}:{settings_of(service).port}"


def test_cache_uses_the_redis_service(settings_of: Callable[[str], Any]) -> None:
    url = urlsplit(settings_of("cache").redis_url)
    assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)


def test_prometheus_scrapes_each_service_where_it_serves_metrics(
    settings_of: Callable[[str], Any],
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {
        job["job_name"]: {t for sc in job["static_configs"] for t in sc["targets"]}
        for job in config["scrape_configs"]
    }
    gateway = settings_of("gateway")
    assert gateway.metrics_port, "/metrics and /admin/* on a port of their own"
    metrics_port = {
        "gateway": gateway.metrics_port,
        "embedder": settings_of("embedder").metrics_port,
        "cache": settings_of("cache").metrics_port,
        "mock-llm-1": settings_of("mock-llm-1").port,
        "mock-llm-2": settings_of("mock-llm-2").port,
    }
    assert targets["gateway"] == {f"gateway:{metrics_port['gateway']}"}
    assert targets["embedder"] == {f"embedder:{metrics_port['embedder']}"}
    assert targets["cache"] == {f"cache:{metrics_port['cache']}"}
    assert targets["model-servers"] == {
        f"{name}:{metrics_port[name]}" for name in ("mock-llm-1", "mock-llm-2")
    }


def test_gateway_shares_limits_through_the_caches_redis(
    compose: dict[str, Any], settings_of: Callable[[str], Any]
) -> None:
    gateway, cache = settings_of("gateway"), settings_of("cache")
    assert gateway.redis_url, "without Redis each replica enforces the whole limit on its own"
    url, cache_url = urlsplit(gateway.redis_url), urlsplit(cache.redis_url)
    assert (url.scheme, url.hostname, url.port, url.path) == (
        cache_url.scheme,
        cache_url.hostname,
        cache_url.port,
        cache_url.path,
    ), "one Redis for both"
    prefixes = (gateway.redis_prefix, cache.redis_prefix)
    assert not prefixes[0].startswith(prefixes[1]) and not prefixes[1].startswith(prefixes[0])
    replicas = compose["services"]["gateway"].get("deploy", {}).get("replicas", 1)
    assert gateway.expected_replicas == replicas
