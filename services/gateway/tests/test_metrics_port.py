"""The metrics port (``GATEWAY_METRICS_PORT``: /metrics and /admin/* off the API
port) and readiness (``/readyz``: whether this gateway can answer, not whether
every backend can). Split from ``test_metrics_bounds.py``."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import httpx
import pytest

from gateway.__main__ import bind, ops_server
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gwkit import MakeBackend, MakeGateway, backend, chat
from gwkit import metric as sample


@contextlib.asynccontextmanager
async def running(settings: GatewaySettings, **extra: Any) -> Any:
    app = create_app(settings, **extra)
    async with app.router.lifespan_context(app):
        yield app


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_with_a_metrics_port_metrics_and_admin_leave_the_api_port(
    make_backend: MakeBackend,
) -> None:
    settings = GatewaySettings(
        backends=[backend(await make_backend())], metrics_port=9, admin_key="sk-admin-0123"
    )
    admin = {"Authorization": "Bearer sk-admin-0123"}
    async with running(settings) as app, client(app) as api, client(app.ops) as ops:
        assert (await api.post("/v1/chat/completions", json=chat())).status_code == 200
        assert (await api.get("/metrics")).status_code == 404
        assert (await api.get("/admin/cache/stats", headers=admin)).status_code == 404
        assert (await api.get("/readyz")).status_code == 200
        assert (await api.get("/healthz")).status_code == 200
        page = await ops.get("/metrics")
        assert page.status_code == 200
        assert sample(page.text, "gateway_requests_total", status="200") == 1
        assert (await ops.get("/admin/cache/stats", headers=admin)).status_code == 503
        assert (await ops.get("/admin/cache/stats")).status_code == 401
        assert (await ops.get("/v1/models")).status_code == 404
        assert (await ops.post("/v1/chat/completions", json=chat())).status_code == 404
        paths = (await api.get("/openapi.json")).json()["paths"]
        assert "/metrics" not in paths and "/v1/chat/completions" in paths


async def test_without_a_metrics_port_everything_is_on_the_api_port(
    make_backend: MakeBackend,
) -> None:
    settings = GatewaySettings(backends=[backend(await make_backend())])
    assert settings.metrics_port == 0, "make run keeps /metrics on the API port"
    async with running(settings) as app, client(app) as api:
        assert app.ops is None
        assert (await api.get("/metrics")).status_code == 200
        assert (await api.get("/admin/cache/stats")).status_code == 403  # no admin key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_metrics_port_is_served_while_the_gateway_runs(
    make_backend: MakeBackend,
) -> None:
    port = free_port()
    settings = GatewaySettings(backends=[backend(await make_backend())], metrics_port=port)
    url = f"http://127.0.0.1:{port}/metrics"
    async with running(settings, companion=ops_server(settings)) as app:
        async with client(app) as api:
            await api.post("/v1/chat/completions", json=chat())
        async with httpx.AsyncClient() as http:
            page = await http.get(url)
    assert page.status_code == 200
    assert "gateway_requests_total" in page.text
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):  # stopped with the gateway
            await http.get(url)


def test_workers_share_the_metrics_port_and_one_worker_has_it_alone() -> None:
    port = free_port()
    with bind("127.0.0.1", port, share=True) as one, bind("127.0.0.1", port, share=True) as two:
        one.listen()
        two.listen()  # every worker of one gateway listens on it; the kernel spreads scrapes
    with bind("127.0.0.1", port, share=False) as alone:
        alone.listen()
        with pytest.raises(OSError):
            bind("127.0.0.1", port, share=False)


async def test_a_metrics_port_in_use_fails_the_start(make_backend: MakeBackend) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = GatewaySettings(backends=[backend(await make_backend())], metrics_port=port)
        with pytest.raises(OSError):
            async with running(settings, companion=ops_server(settings)):
                pass


# --- (g) readiness -------------------------------------------------------------------


async def test_ready_with_every_breaker_open_and_the_gateway_answers_503_itself(
    make_gateway: MakeGateway,
) -> None:
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens: every attempt fails
    gw = await make_gateway(
        [backend(gone, "alpha")],
        breaker_consecutive_failures=1,
        breaker_base_ejection_s=60,
        max_attempts=1,
    )
    assert (await gw.get("/readyz")).json()["backends_usable"] is True
    await gw.post("/v1/chat/completions", json={**chat(), "model": "alpha"})
    ready = await gw.get("/readyz")
    assert ready.status_code == 200, "the gateway can answer; only its backends cannot"
    body = ready.json()
    assert body["backends_usable"] is False
    assert body["models"] == 1
    assert [e["breaker"] for e in body["endpoints"]] == ["open"]
    assert (await gw.get("/readyz", params={"backends": "1"})).status_code == 503
    answer = await gw.post("/v1/chat/completions", json={**chat(), "model": "alpha"})
    assert answer.status_code >= 500
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


async def test_not_ready_without_a_model_to_serve(make_gateway: MakeGateway) -> None:
    gw = await make_gateway([])
    ready = await gw.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "no model known"


async def test_readyz_never_refuses_its_query(make_gateway: MakeGateway) -> None:
    gw = await make_gateway([backend("http://127.0.0.1:9", "alpha")])
    for query in ("backends=%0C%04%C3%BA", "backends=", "other=1&backends=no"):
        reply = await gw.get(f"/readyz?{query}")
        assert reply.status_code == 200, query  # anything but a yes: the gateway's own readiness


async def test_ready_with_backends_is_ready_either_way(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    for params in ({}, {"backends": "1"}):
        reply = await gw.get("/readyz", params=params)
        assert reply.status_code == 200
        assert reply.json()["status"] == "ready"
