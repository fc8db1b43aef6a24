"""A client's mistakes get a client error from the gateway, never count against a
healthy replica, and what llama.cpp would do with them never reaches the client."""

from __future__ import annotations

import json

import httpx
import pytest

from deploy.local.harness import Stack
from tests.integration.realbackend.client import MODEL, attempts, chat, llama_gateway

pytestmark = pytest.mark.realbackend


def test_bad_bodies_get_400_from_the_gateway_and_never_reach_the_model(
    gateway: str, pair: tuple[str, str]
) -> None:
    url = f"{gateway}/v1/chat/completions"
    bad = [
        b'{"model": "smollm2-135m", "messages": [',  # not JSON
        json.dumps(chat("hi", max_tokens="many")).encode(),
        json.dumps(chat("hi", temperature="hot")).encode(),
        json.dumps({"model": MODEL, "messages": "hi"}).encode(),
        json.dumps(chat("hi", stream="yes please")).encode(),
    ]
    before = attempts(gateway)
    for body in bad:
        reply = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["type"] == "invalid_request_error"
        assert "Traceback" not in reply.text and 'File "' not in reply.text
    assert attempts(gateway) == before
    # What the gateway spares its clients: llama.cpp answers the same with a 500.
    direct = httpx.post(
        f"{pair[0]}/v1/chat/completions",
        content=bad[1],
        headers={"content-type": "application/json"},
    )
    assert direct.status_code == 500


def test_unknown_model_is_404_from_the_gateway(gateway: str, pair: tuple[str, str]) -> None:
    body = chat("hi", max_tokens=4) | {"model": "gpt-5-turbo"}
    reply = httpx.post(f"{gateway}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"
    # llama.cpp itself would answer with its own model and 200.
    assert httpx.post(f"{pair[0]}/v1/chat/completions", json=body, timeout=30).status_code == 200


def test_a_client_request_id_that_is_not_a_uuid_is_served(gateway: str) -> None:
    """llama-cpp-python answers any X-Request-ID that is not a UUID with 400 (starlette-
    context's RequestIdPlugin); the gateway sends it a UUID and keeps the client's."""
    reply = httpx.post(
        f"{gateway}/v1/chat/completions",
        json=chat("hi", max_tokens=4),
        headers={"X-Request-ID": "order-42"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == "order-42"


def wrong_field_leaves_breakers_closed(cluster: Stack, pair: tuple[str, str], **field: str) -> None:
    _, gw = llama_gateway(cluster, list(pair), cache_enabled="false")
    for _ in range(5):  # as many as open a breaker on consecutive failures
        reply = httpx.post(
            f"{gw}/v1/chat/completions", json=chat("hi", max_tokens=4, **field), timeout=60
        )
        assert reply.status_code == 400, reply.text
    assert all(e["breaker"] == "closed" for e in httpx.get(f"{gw}/readyz").json()["endpoints"])


def test_a_wrongly_typed_extension_field_is_a_client_error(
    cluster: Stack, pair: tuple[str, str]
) -> None:
    """llama.cpp answers ``top_k: "x"`` with a 500: the gateway must not hold the
    client's mistake against a healthy replica."""
    wrong_field_leaves_breakers_closed(cluster, pair, top_k="x")


def test_a_wrongly_typed_llamacpp_field_is_a_client_error(
    cluster: Stack, pair: tuple[str, str]
) -> None:
    wrong_field_leaves_breakers_closed(cluster, pair, repeat_penalty="x")
