"""Metrics a client cannot blow up, refusals that are seen, and readiness that means
"this gateway can answer" (issue 17, parts 4 and 6).

- a model name the gateway does not serve is ``model="unknown"``: a thousand
  made-up names add no series;
- every request refused before it is served is counted by reason
  (``gateway_rejected_requests_total``) and logged (``request_rejected``);
  the in-flight limit's ``overloaded`` is in test_tenants.py;
- ``/v1/embeddings`` is metered; cache hits have their own first-token
  histogram; buckets reach the timeouts;
- ``GATEWAY_METRICS_PORT`` moves ``/metrics`` and ``/admin/*`` off the API port;
- ``/readyz`` stays 200 with every breaker open.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import structlog.testing
from aiohttp import web
from fake_sidecars import FakeSidecars
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry

from gateway.app import ErrorAnswers
from gateway.metrics import REJECTION_REASONS, GatewayMetrics
from gateway.settings import GatewaySettings
from gwkit import MakeBackend, MakeGateway, as_, backend, chat
from gwkit import metric as sample

Serve = Any  # conftest's serve_app


def series(text: str) -> Counter[str]:
    """Series per metric name on a /metrics page."""
    found: Counter[str] = Counter()
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? \S+$", line)
        if match:
            found[match[1]] += 1
    return found


async def metrics_of(gw: httpx.AsyncClient) -> str:
    return (await gw.get("/metrics")).text


# --- (a) unknown models --------------------------------------------------------------


async def test_a_thousand_unknown_model_names_add_no_series(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend(models="alpha")
    gw = await make_gateway([backend(url, "alpha")], log_requests=False)
    assert (await gw.post("/v1/chat/completions", json={**chat(), "model": "alpha"})).is_success
    routes = {  # every model-routed route, with a body it would serve
        "/v1/chat/completions": chat(),
        "/v1/responses": {"input": "hi"},
        "/tokenize": {"prompt": "hi"},
        "/v1/embeddings": {"input": "hi"},
    }
    bodies = list(routes.items())
    for route, body in bodies:  # each route's first unknown model makes its series
        assert (await gw.post(route, json={**body, "model": "nope-0"})).status_code == 404
    before = series(await metrics_of(gw))
    for i in range(1, 1000):
        route, body = bodies[i % len(bodies)]
        reply = await gw.post(route, json={**body, "model": f"nope-{i}"})
        assert reply.status_code == 404
    text = await metrics_of(gw)
    grown = {name: n - before[name] for name, n in series(text).items() if n != before[name]}
    assert not grown, f"series added by unknown model names: {grown}"
    assert "nope-" not in text
    requests = "gateway_requests_total"
    assert sample(text, requests, model="unknown", status="404") == 999 + len(bodies)
    assert sample(text, requests, model="alpha", status="200") == 1
    rejected = sample(text, "gateway_rejected_requests_total", reason="model_not_found")
    assert rejected == 999 + len(bodies)


def test_a_model_label_is_a_served_model_or_unknown() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    served = {"alpha"}
    metrics.models.watch(served.__contains__)
    metrics.requests.labels("/v1/chat/completions", "alpha", "200", "MISS").inc()
    metrics.requests.labels("/v1/chat/completions", "beta", "404", "BYPASS").inc()
    metrics.tokens.labels(model="gamma", direction="in").inc(3)
    served.add("beta")  # discovery found it: its own series from now on
    metrics.tokens.labels("beta", "out").inc(2)
    registry = metrics.registry
    assert registry.get_sample_value(
        "gateway_requests_total",
        {"route": "/v1/chat/completions", "model": "unknown", "status": "404", "cache": "BYPASS"},
    )
    got = registry.get_sample_value("gateway_tokens_total", {"model": "unknown", "direction": "in"})
    assert got == 3
    assert registry.get_sample_value("gateway_tokens_total", {"model": "beta", "direction": "out"})


# --- (b) refusals --------------------------------------------------------------------


async def test_every_refusal_is_counted_by_reason_and_logged(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    gw = await make_gateway(
        [backend(await make_backend())],
        auth_enabled=True,
        api_keys_file=keys_file,
        max_body_bytes=2000,
        max_header_bytes=4000,
    )
    post = gw.post
    alice = as_("alice")
    with structlog.testing.capture_logs() as logs:
        cases = {
            "unauthorized": await post("/v1/chat/completions", json=chat()),
            "invalid_request": await post(
                "/v1/chat/completions", content=b"{nope", headers={**alice, "x-request-id": "r-1"}
            ),
            "payload_too_large": await post(
                "/v1/chat/completions", json=chat("x" * 3000), headers=alice
            ),
            "headers_too_large": await post(
                "/v1/chat/completions", json=chat(), headers={**alice, "x-big": "y" * 5000}
            ),
            "model_not_found": await post(
                "/v1/chat/completions", json={**chat(), "model": "nope"}, headers=alice
            ),
            "forbidden": await gw.get("/admin/cache/stats", headers=alice),
            "not_found": await gw.get("/v1/nothing-here"),
        }
        assert (await post("/v1/chat/completions", json=chat(), headers=as_("bob"))).is_success
        cases["rate_limited"] = await post("/v1/chat/completions", json=chat(), headers=as_("bob"))
        embed = await post("/v1/embeddings", json={"model": "m", "input": "x"}, headers=alice)
    statuses = {reason: reply.status_code for reason, reply in cases.items()}
    assert statuses == {
        "unauthorized": 401,
        "invalid_request": 400,
        "payload_too_large": 413,
        "headers_too_large": 431,
        "model_not_found": 404,
        "forbidden": 403,
        "not_found": 404,
        "rate_limited": 429,
    }
    # No embedder and no backend serving "m": that model does not exist here.
    assert embed.status_code == 404
    for reply in cases.values():
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
        assert reply.headers["x-request-id"]
    text = await metrics_of(gw)
    for reason in REJECTION_REASONS:
        expected = (reason in cases) + (reason == "model_not_found")  # (+ the embeddings')
        got = sample(text, "gateway_rejected_requests_total", reason=reason)
        assert got == expected, reason
    lines = [line for line in logs if line["event"] == "request_rejected"]
    assert sorted(line["reason"] for line in lines) == sorted([*cases, "model_not_found"])
    by_reason = {line["reason"]: line for line in lines}
    assert by_reason["invalid_request"]["request_id"] == "r-1"
    assert by_reason["invalid_request"]["route"] == "/v1/chat/completions"
    assert by_reason["invalid_request"]["status"] == 400
    for line in lines:
        reply = embed if line["route"] == "/v1/embeddings" else cases[line["reason"]]
        assert line["request_id"] == reply.headers["x-request-id"]
        assert "messages" not in line and "hello" not in orjson.dumps(line).decode()


def test_fastapi_s_own_validation_error_is_a_400_refusal() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    request = Request({"type": "http", "method": "GET", "path": "/x", "headers": []})
    error = RequestValidationError([{"loc": ("query", "n"), "msg": "not a number"}])
    reply = ErrorAnswers(metrics, log_rejections=False)(request, error)
    assert reply.status_code == 400
    assert b"query.n" in bytes(reply.body)
    value = metrics.registry.get_sample_value
    assert value("gateway_rejected_requests_total", {"reason": "invalid_request"}) == 1


async def test_a_backend_s_429_is_not_a_refusal_of_the_gateway(
    serve_app: Serve, make_gateway: MakeGateway
) -> None:
    async def limited(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "slow down"}}, status=429)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", limited)
    gw = await make_gateway([backend(await serve_app(app))])
    reply = await gw.post("/v1/chat/completions", json=chat())
    assert reply.status_code == 429
    assert sample(await metrics_of(gw), "gateway_rejected_requests_total") == 0


# --- (c) embeddings ------------------------------------------------------------------


async def test_embeddings_are_metered_by_model_and_status(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await make_gateway([backend(await make_backend())], embedder_target=sidecars.target)
    ok = await gw.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a b", "c"]})
    assert ok.status_code == 200
    wrong = await gw.post("/v1/embeddings", json={"model": "made-up-7", "input": "x"})
    assert wrong.status_code == 404
    sidecars.embedder.faults.fail = True
    down = await gw.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "x"})
    assert down.status_code == 503
    text = await metrics_of(gw)
    route = "/v1/embeddings"
    requests = "gateway_requests_total"
    assert sample(text, requests, route=route, model="all-MiniLM-L6-v2", status="200") == 1
    assert sample(text, requests, route=route, model="unknown", status="404") == 1
    assert sample(text, requests, route=route, model="all-MiniLM-L6-v2", status="503") == 1
    assert sample(text, "gateway_request_duration_seconds_count", route=route) == 3
    assert sample(text, "gateway_embedding_inputs_total", model="all-MiniLM-L6-v2") == 2
    tokens = sample(text, "gateway_tokens_total", model="all-MiniLM-L6-v2", direction="in")
    assert tokens == ok.json()["usage"]["prompt_tokens"]
    assert "made-up-7" not in text


# --- (d) cache hits apart, (e) buckets -----------------------------------------------


def test_a_cache_hit_s_first_token_is_apart_from_the_model_servers() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.models.watch(lambda model: model == "alpha")
    metrics.first_token("alpha", "HIT-EXACT", 0.002)
    metrics.first_token("alpha", "HIT-SEMANTIC", 0.008)
    metrics.first_token("alpha", "MISS", 0.5)
    metrics.first_token("alpha", "BYPASS", 1.5)
    value = metrics.registry.get_sample_value
    alpha = {"model": "alpha"}
    assert value("gateway_time_to_first_token_seconds_count", alpha) == 4  # as before
    assert value("gateway_upstream_time_to_first_token_seconds_count", alpha) == 2
    assert value("gateway_upstream_time_to_first_token_seconds_sum", alpha) == 2.0
    assert value("gateway_cache_hit_time_to_first_token_seconds_count", alpha) == 2


async def test_a_served_cache_hit_is_not_an_upstream_first_token(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await make_gateway(
        [backend(await make_backend(models="alpha"), "alpha")],
        embedder_target=sidecars.target,
        cache_target=sidecars.target,
        cache_lookup_budget_ms=2000,  # the hit is never late: the upstream waits for it
        cache_speculative=False,
    )
    body = {**chat("same question"), "model": "alpha", "temperature": 0, "stream": True}
    assert (await gw.post("/v1/chat/completions", json=body)).headers["x-cache"] == "MISS"
    await sidecars.wait_stores(1)
    assert (await gw.post("/v1/chat/completions", json=body)).headers["x-cache"] == "HIT-EXACT"
    text = await metrics_of(gw)
    assert sample(text, "gateway_time_to_first_token_seconds_count", model="alpha") == 2
    assert sample(text, "gateway_upstream_time_to_first_token_seconds_count", model="alpha") == 1
    assert sample(text, "gateway_cache_hit_time_to_first_token_seconds_count", model="alpha") == 1


def largest_bucket(metrics: GatewayMetrics, name: str) -> float:
    buckets = [
        float(s.labels["le"])
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == f"{name}_bucket" and s.labels["le"] != "+Inf"
    ]
    return max(buckets)


@pytest.mark.parametrize(("ttft_s", "total_s"), [(None, None), (200.0, 1800.0)])
def test_buckets_reach_the_timeouts(ttft_s: float | None, total_s: float | None) -> None:
    extra = {} if ttft_s is None else {"ttft_timeout_s": ttft_s, "total_timeout_s": total_s}
    settings = GatewaySettings(**extra)  # type: ignore[arg-type]
    metrics = GatewayMetrics(
        CollectorRegistry(),
        ttft_limit_s=settings.ttft_timeout_s,
        duration_limit_s=settings.total_timeout_s,
    )
    for model in ("m",):
        metrics.ttft.metric.labels(model).observe(1)
        metrics.upstream_ttft.metric.labels(model).observe(1)
    metrics.duration.labels("/v1/chat/completions", "true").observe(1)
    assert largest_bucket(metrics, "gateway_time_to_first_token_seconds") >= settings.ttft_timeout_s
    assert (
        largest_bucket(metrics, "gateway_upstream_time_to_first_token_seconds")
        >= settings.ttft_timeout_s
    )
    assert largest_bucket(metrics, "gateway_request_duration_seconds") >= settings.total_timeout_s


# --- (f) the metrics port ------------------------------------------------------------
