"""Prometheus config, alert rules and the Grafana dashboard against what the
services really export.

Every metric name in a dashboard query or an alert rule must be one a service
serves on /metrics (scraped from the running services, see conftest), so a
renamed metric breaks this test instead of leaving an empty panel or an alert
that can never fire. promtool checks the config, the rules (and their unit
tests in alerts_test.yml), the dashboard's PromQL, and each service's output.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "deploy/prometheus"
GRAFANA = REPO / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/llmgw.json"

# Series Prometheus makes itself for every target, not exported by a service.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label
    names and values, durations and Grafana variables left out)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"' + r"|'(?:\\.|[^'\\])*'", '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", " ", expr)  # Grafana variables
    expr = re.sub(r"\b\d[\w.]*", " ", expr)  # numbers, 1e3, 0.99
    names = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?!\s*\(|[a-zA-Z0-9_:])", expr)
    return {name for name in names if name not in _KEYWORDS}


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page can produce (a counter's _total, a
    histogram's _bucket/_sum/_count...), with or without samples yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    return [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


# --- the extractor itself ----------------------------------------------------


def test_metric_names_are_found_in_promql_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, model) (rate(a_seconds_bucket{job="x", '
        'le=~"0.5"}[$__rate_interval]))) / ignoring (cache) group_left '
        "sum(rate(b_total[5m] offset 1h)) > bool 0.05 or vllm:num_requests_waiting"
        ' unless absent(up{job="cache"} == 1)'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "vllm:num_requests_waiting", "up"}


# --- promtool -----------------------------------------------------------------


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_prometheus_config_is_valid(config: str) -> None:
    result = promtool("check", "config", str(PROM / config))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_are_valid() -> None:
    result = promtool("check", "rules", str(PROM / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "LlmgwBackendEjected",
        "LlmgwHighErrorRatio",
        "LlmgwCacheSidecarDown",
        "LlmgwLoadShedding",
    } <= names


def test_alerts_fire_on_the_failures_they_name() -> None:
    """alerts_test.yml: ejection, error ratio, panic routing, cache down or absent,
    sustained load shedding (and not a burst of it, nor rate limiting)."""
    result = promtool("test", "rules", str(PROM / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_jobs_are_scraped_under_those_names() -> None:
    for config in ("prometheus.yml", "prometheus-k8s.yml"):
        jobs = {
            j["job_name"] for j in yaml.safe_load((PROM / config).read_text())["scrape_configs"]
        }
        for rule in alert_rules():
            for job in re.findall(r'job="([^"]+)"', rule["expr"]):
                assert job in jobs, f"{rule['alert']} selects job {job!r}, not scraped by {config}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:panel_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- names against the services' real /metrics ---------------------------------


def test_every_metric_in_the_dashboard_is_exported(service_metrics: dict[str, str]) -> None:
    exported = set().union(*(exported_names(text) for text in service_metrics.values()))
    missing = {
        (title, name)
        for title, expr in dashboard_exprs()
        for name in metric_names(expr)
        if name not in exported | SYNTHETIC
    }
    assert not missing, f"dashboard panels query metrics no service exports: {sorted(missing)}"


def test_every_metric_in_the_alert_rules_is_exported(service_metrics: dict[str, str]) -> None:
    exported = set().union(*(exported_names(text) for text in service_metrics.values()))
    missing = {
        (rule["alert"], name)
        for rule in alert_rules()
        for name in metric_names(rule["expr"])
        if name not in exported | SYNTHETIC
    }
    assert not missing, f"alert rules use metrics no service exports: {sorted(missing)}"


def test_the_dashboard_covers_each_service(service_metrics: dict[str, str]) -> None:
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    for service in ("gateway", "embedder", "cache", "mock-llm"):
        assert used & exported_names(service_metrics[service]), f"no panel shows {service}"


@pytest.mark.parametrize("service", ["gateway", "embedder", "cache"])
def test_service_metrics_pass_promtool(service: str, service_metrics: dict[str, str]) -> None:
    text = service_metrics[service]
    assert f"# TYPE {service}_" in text, "scraped page is not this service's metrics"
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mock_metrics_pass_promtool_but_for_vllms_own_names(
    service_metrics: dict[str, str],
) -> None:
    """The mock copies vLLM's metric names, colons included (the gateway's
    engine poller and the dashboard read them): that is the only complaint."""
    result = promtool("check", "metrics", stdin=service_metrics["mock-llm"])
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    others = [
        p for p in problems if not re.match(r"vllm:\S+ metric names should not contain ':'", p)
    ]
    assert not others, others
    assert "vllm:num_requests_waiting" in exported_names(service_metrics["mock-llm"])


# --- Grafana provisioning ---------------------------------------------------------


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus(
    compose: dict[str, Any],
) -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]

    dash = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] == source["uid"]
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${" + variable["name"] + "}", panel["title"]

    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/llmgw.yml").read_text())
    (provider,) = providers["providers"]
    mounts = dict(
        v.rsplit(":", 2)[:2]
        for v in compose["services"]["grafana"]["volumes"]
        if v.startswith("./")
    )
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = " | ".join(title for title, _ in dashboard_exprs()).lower()
    for topic in (
        "requests per second",
        "error ratio",
        "latency p50 / p99",
        "time to first token",
        "overhead",
        "ewma",
        "breaker",
        "hit ratio by kind",
        "embedder throughput",
        "batch size",
        "rate-limited / overloaded",
        "cache lookup time",
        "time saved",
        "sidecar errors",
        "tokens",
    ):
        assert topic in titles, topic


def test_dashboard_shows_every_refusal_reason_and_the_admission_metrics(
    service_metrics: dict[str, str],
) -> None:
    """The gateway's rejection counter by reason, its cache lookup histogram, time
    saved, sidecar errors and tokens by direction each have a panel."""
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    for name in (
        "gateway_rejected_requests_total",
        "gateway_cache_lookups_total",
        "gateway_cache_lookup_seconds_bucket",
        "gateway_cache_stores_total",
        "gateway_cache_time_saved_seconds_total",
        "gateway_sidecar_errors_total",
        "gateway_tokens_total",
    ):
        assert name in used, name
        assert name in exported_names(service_metrics["gateway"]), name
    exprs = [expr for _, expr in dashboard_exprs() if "gateway_rejected_requests_total" in expr]
    assert any("by (reason)" in expr for expr in exprs), "rate-limited and overloaded apart"
