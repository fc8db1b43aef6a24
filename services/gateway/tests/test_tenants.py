"""Keys, tenants and limits at the gateway's door, as clients see them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from fake_sidecars import FakeSidecars

from gwkit import MakeBackend, MakeGateway, as_, backend, chat


async def test_keys_are_required_and_checked(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    gw = await make_gateway(
        [backend(await make_backend())], auth_enabled=True, api_keys_file=keys_file
    )
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Basic x"}):
        reply = await gw.post("/v1/chat/completions", json=chat(), headers=headers)
        assert reply.status_code == 401
        assert reply.json()["error"]["type"] == "authentication_error"
    # The body is not even read for an unknown caller.
    junk = await gw.post(
        "/v1/chat/completions", content=b"{junk", headers={"content-type": "application/json"}
    )
    assert junk.status_code == 401
    ok = await gw.post("/v1/chat/completions", json=chat(), headers=as_("alice"))
    assert ok.status_code == 200


async def test_tenant_rate_limit_answers_429_with_retry_after(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    gw = await make_gateway(
        [backend(await make_backend())], auth_enabled=True, api_keys_file=keys_file
    )
    first = await gw.post("/v1/chat/completions", json=chat(), headers=as_("bob"))
    second = await gw.post("/v1/chat/completions", json=chat(), headers=as_("bob"))
    assert first.status_code == 200
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "rate_limit_error"
    assert int(second.headers["retry-after"]) >= 1
    other = await gw.post("/v1/chat/completions", json=chat(), headers=as_("alice"))
    assert other.status_code == 200  # one tenant's limit is not another's


async def test_stream_slot_is_held_until_the_stream_ends_then_freed(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    url = await make_backend(output_tokens=20, inter_token_ms=10)
    gw = await make_gateway([backend(url)], auth_enabled=True, api_keys_file=keys_file)
    body = chat(stream=True)
    slow = asyncio.create_task(gw.post("/v1/chat/completions", json=body, headers=as_("ops")))
    await asyncio.sleep(0.08)
    busy = await gw.post("/v1/chat/completions", json=body, headers=as_("ops"))
    assert busy.status_code == 429
    assert (await slow).status_code == 200
    after = await gw.post("/v1/chat/completions", json=body, headers=as_("ops"))
    assert after.status_code == 200


async def test_beyond_max_in_flight_the_gateway_sheds_with_503(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend(ttft_ms=300)
    gw = await make_gateway([backend(url)], max_in_flight=2)
    replies = await asyncio.gather(
        *(gw.post("/v1/chat/completions", json=chat()) for _ in range(4))
    )
    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 200, 503, 503]
    shed = next(r for r in replies if r.status_code == 503)
    assert shed.json()["error"]["type"] == "overloaded_error"
    assert "retry-after" in shed.headers
    assert (await gw.post("/v1/chat/completions", json=chat())).status_code == 200
    assert (
        'gateway_rejected_requests_total{reason="overloaded"} 2.0'
        in (await gw.get("/metrics")).text
    )


async def test_one_tenant_never_gets_another_tenants_cached_answer(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path, sidecars: FakeSidecars
) -> None:
    gw = await make_gateway(
        [backend(await make_backend())],
        auth_enabled=True,
        api_keys_file=keys_file,
        cache_target=sidecars.target,
        embedder_target=sidecars.target,
        cache_lookup_budget_ms=2000,
    )
    secret = chat("What is alice's account balance?", temperature=0)
    assert (await gw.post("/v1/chat/completions", json=secret, headers=as_("alice"))).headers[
        "x-cache"
    ] == "MISS"
    await sidecars.wait_stores(1)
    mine = await gw.post("/v1/chat/completions", json=secret, headers=as_("alice"))
    assert mine.headers["x-cache"] == "HIT-EXACT"
    theirs = await gw.post("/v1/chat/completions", json=secret, headers=as_("ops"))
    assert theirs.headers["x-cache"] == "MISS"
    # Nor through a paraphrase (asked by a tenant whose own namespace is still empty).
    para = chat("What is alice's account balance", temperature=0)
    assert (await gw.post("/v1/chat/completions", json=para, headers=as_("carol"))).headers[
        "x-cache"
    ] == "MISS"


async def test_admin_needs_an_admin_key_or_an_admin_tenant(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path, sidecars: FakeSidecars
) -> None:
    gw = await make_gateway(
        [backend(await make_backend())],
        auth_enabled=True,
        api_keys_file=keys_file,
        cache_target=sidecars.target,
        admin_key="root-key",
    )
    stats = "/admin/cache/stats"
    assert (await gw.get(stats)).status_code == 401
    assert (await gw.get(stats, headers=as_("alice"))).status_code == 403
    assert (await gw.get(stats, headers=as_("ops"))).status_code == 200
    assert (await gw.get(stats, headers={"Authorization": "Bearer root-key"})).status_code == 200


async def test_auth_off_means_every_request_is_the_default_tenant(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    reply = await gw.post(
        "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer anything"}
    )
    assert reply.status_code == 200
    assert isinstance(gw, httpx.AsyncClient)
