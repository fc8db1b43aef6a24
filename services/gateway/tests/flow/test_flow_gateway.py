"""Flow control through the gateway, as clients see it: a saturated pool queues, answers
429/503 in the OpenAI shape, and forgets a client that left."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from gwkit import MakeBackend, MakeGateway, as_, backend, chat, metric

URL = "/v1/chat/completions"


async def saturated_gateway(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path, **settings: Any
) -> httpx.AsyncClient:
    """One endpoint with one slot; each stream lasts ~0.3 s."""
    url = await make_backend(output_tokens=15, inter_token_ms=20)
    return await make_gateway(
        [backend(url)],
        auth_enabled=True,
        api_keys_file=keys_file,
        flow_endpoint_concurrency=1,
        **settings,
    )


async def flow_metric(gw: httpx.AsyncClient, name: str, **labels: str) -> float:
    return metric((await gw.get("/metrics")).text, name, **labels)


async def test_a_request_waits_for_the_slot_then_is_served(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    gw = await saturated_gateway(make_backend, make_gateway, keys_file)
    body = chat(stream=True)
    first = asyncio.create_task(gw.post(URL, json=body, headers=as_("alice")))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(gw.post(URL, json=body, headers=as_("carol")))
    await asyncio.sleep(0.05)
    assert await flow_metric(gw, "gateway_flow_queue_depth", tenant="carol") == 1
    assert (await first).status_code == 200
    assert (await second).status_code == 200
    assert await flow_metric(gw, "gateway_flow_admitted_total", path="queued") == 1
    assert await flow_metric(gw, "gateway_flow_admitted_in_flight") == 0


async def test_refusals_are_429_over_share_and_503_fleet_full_in_the_openai_shape(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    gw = await saturated_gateway(make_backend, make_gateway, keys_file, flow_queue_per_tenant=1)
    body = chat(stream=True)
    holder = asyncio.create_task(gw.post(URL, json=body, headers=as_("alice")))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(gw.post(URL, json=body, headers=as_("alice")))
    await asyncio.sleep(0.02)
    full = await gw.post(URL, json=body, headers=as_("alice"))  # alice's queue is full
    assert full.status_code == 429
    assert full.json()["error"]["type"] == "rate_limit_error"
    assert int(full.headers["retry-after"]) >= 1
    short = {**as_("carol"), "x-llmgw-max-wait-ms": "30"}  # carol holds nothing: the fleet's
    late = await gw.post(URL, json=body, headers=short)
    assert late.status_code == 503
    assert late.json()["error"]["type"] == "overloaded_error"
    assert "retry-after" in late.headers
    assert (await holder).status_code == 200
    assert (await waiting).status_code == 200
    assert await flow_metric(gw, "gateway_flow_shed_total", reason="tenant_queue_full") == 1
    assert await flow_metric(gw, "gateway_flow_shed_total", reason="deadline_fleet_full") == 1


async def test_a_client_that_leaves_the_queue_is_removed_at_once(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    gw = await saturated_gateway(make_backend, make_gateway, keys_file)
    body = chat(stream=True)
    holder = asyncio.create_task(gw.post(URL, json=body, headers=as_("alice")))
    await asyncio.sleep(0.05)
    leaver = asyncio.create_task(gw.post(URL, json=body, headers=as_("carol")))
    await asyncio.sleep(0.05)
    assert await flow_metric(gw, "gateway_flow_queue_depth", tenant="carol") == 1
    leaver.cancel()  # httpx's ASGI transport tells the app the client disconnected
    await asyncio.sleep(0.05)
    assert await flow_metric(gw, "gateway_flow_queue_depth", tenant="carol") == 0
    assert await flow_metric(gw, "gateway_flow_abandoned_total", tenant="carol") == 1
    assert (await holder).status_code == 200
    after = await gw.post(URL, json=body, headers=as_("carol"))
    assert after.status_code == 200


async def test_a_bad_priority_header_is_a_400(
    make_backend: MakeBackend, make_gateway: MakeGateway, keys_file: Path
) -> None:
    gw = await saturated_gateway(make_backend, make_gateway, keys_file)
    reply = await gw.post(URL, json=chat(), headers={**as_("alice"), "x-llmgw-priority": "vip"})
    assert reply.status_code == 400
    batch = await gw.post(URL, json=chat(), headers={**as_("alice"), "x-llmgw-priority": "batch"})
    assert batch.status_code == 200
    assert await flow_metric(gw, "gateway_flow_admitted_total", priority="batch") == 1
