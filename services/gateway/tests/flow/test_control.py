"""The queue per pool: nothing waits while there is room; while saturated, slots go by
class and fair share, and a request is refused (429 or 503) or removed as a client sees it."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry

from gateway.balance.pool import Reading
from gateway.errors import Overloaded, RateLimited
from gateway.flow import FlowConfig, FlowControl, FlowMetrics, FlowRequest, Ticket
from gwkit import FakeClock

MODEL = "m"


class Readings:
    """The pool, as flow control reads it: two endpoints."""

    def __init__(self) -> None:
        self.endpoints = [Reading(0, None, 0.05), Reading(0, None, 0.05)]

    def readings(self, model: str) -> list[Reading]:
        return list(self.endpoints)

    def has_model(self, model: str) -> bool:
        return model == MODEL


def control(clock: FakeClock, **config: object) -> tuple[FlowControl, Readings, CollectorRegistry]:
    pool = Readings()
    registry = CollectorRegistry()
    settings = replace(FlowConfig(endpoint_concurrency=1, refresh_s=0.0), **config)
    flow = FlowControl(settings, pool, FlowMetrics(registry), clock=clock)  # type: ignore[arg-type]
    return flow, pool, registry


def req(tenant: str, priority: int = 0, cost: float = 100, wait_s: float = 10.0) -> FlowRequest:
    return FlowRequest(MODEL, tenant, priority, 1.0, cost, wait_s)


def take(flow: FlowControl, request: FlowRequest) -> Ticket:
    ticket = flow.enter(request)
    assert ticket is not None
    return ticket


async def queued(flow: FlowControl, request: FlowRequest) -> asyncio.Task[Ticket]:
    assert flow.enter(request) is None
    task = asyncio.ensure_future(flow.wait(request))
    await asyncio.sleep(0)
    return task


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    total = 0.0
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_flow_control_is_off_without_a_saturation_signal() -> None:
    assert not FlowConfig().active
    assert FlowConfig(endpoint_concurrency=4).active
    assert FlowConfig(engine_waiting=1).active


async def test_with_room_a_request_goes_at_once_and_a_freed_slot_goes_to_the_next(
    clock: FakeClock,
) -> None:
    flow, _, registry = control(clock)
    a, b = take(flow, req("t")), take(flow, req("t"))  # 2 endpoints x 1 slot
    third = await queued(flow, req("t"))
    assert not third.done()
    a.release()
    a.release()  # twice is harmless: one slot, not two
    await asyncio.sleep(0)
    assert third.done()
    fourth = await queued(flow, req("t"))
    third.result().release()
    b.release()
    await asyncio.sleep(0)
    assert fourth.done()
    assert sample(registry, "gateway_flow_admitted_total", path="queued") == 2
    assert sample(registry, "gateway_flow_admitted_total", path="direct") == 2


async def test_interactive_waiting_goes_before_batch_and_quiet_before_noisy(
    clock: FakeClock,
) -> None:
    flow, _, _ = control(clock, quantum_tokens=100)
    held = [take(flow, req("noisy")), take(flow, req("noisy"))]
    noisy = [await queued(flow, req("noisy")) for _ in range(4)]
    batch = await queued(flow, req("etl", priority=1))
    quiet = await queued(flow, req("quiet"))
    held[0].release()
    await asyncio.sleep(0)
    held[1].release()
    await asyncio.sleep(0)
    assert quiet.done()  # within the first two slots, ahead of noisy's backlog
    assert sum(t.done() for t in noisy) == 1
    assert not batch.done()
    first = next(t for t in noisy if t.done())
    for task in (quiet, first):
        task.result().release()
        await asyncio.sleep(0)
    assert sum(t.done() for t in noisy) == 3
    assert not batch.done()  # batch waits while interactive requests do


async def test_a_tenant_whose_queue_is_full_gets_429_with_a_wait(clock: FakeClock) -> None:
    flow, _, registry = control(clock, queue_per_tenant=2)
    take(flow, req("noisy")), take(flow, req("noisy"))
    waiting = [await queued(flow, req("noisy")) for _ in range(2)]
    with pytest.raises(RateLimited) as refused:
        await flow.wait(req("noisy"))
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1
    assert sample(registry, "gateway_flow_shed_total", reason="tenant_queue_full") == 1
    other = await queued(flow, req("quiet"))  # another tenant still queues
    for task in (*waiting, other):
        task.cancel()


async def test_a_full_pool_queue_answers_503(clock: FakeClock) -> None:
    flow, _, _ = control(clock, queue_max=1)
    take(flow, req("a")), take(flow, req("a"))
    first = await queued(flow, req("a"))
    with pytest.raises(Overloaded):
        await flow.wait(req("b"))
    first.cancel()


async def test_past_its_deadline_over_share_is_429_under_share_is_503(clock: FakeClock) -> None:
    flow, _, registry = control(clock)
    take(flow, req("noisy")), take(flow, req("noisy"))  # noisy holds both slots
    with pytest.raises(RateLimited):
        await flow.wait(req("noisy", wait_s=0.01))
    with pytest.raises(Overloaded):
        await flow.wait(req("quiet", wait_s=0.01))
    assert sample(registry, "gateway_flow_shed_total", reason="deadline_over_share") == 1
    assert sample(registry, "gateway_flow_shed_total", reason="deadline_fleet_full") == 1
    assert sample(registry, "gateway_flow_queue_depth") == 0


async def test_a_client_that_leaves_is_out_of_the_queue_at_once(clock: FakeClock) -> None:
    flow, _, registry = control(clock)
    held = take(flow, req("t")), take(flow, req("t"))
    gone = await queued(flow, req("t"))
    stays = await queued(flow, req("u"))
    assert sample(registry, "gateway_flow_queue_depth") == 2
    gone.cancel()
    await asyncio.sleep(0)
    assert sample(registry, "gateway_flow_queue_depth") == 1
    assert sample(registry, "gateway_flow_abandoned_total") == 1
    held[0].release()
    await asyncio.sleep(0)
    assert stays.done()  # the slot went to the one still waiting


async def test_engine_queue_saturation_hands_slots_on_one_for_one_until_it_clears(
    clock: FakeClock,
) -> None:
    flow, pool, registry = control(clock, endpoint_concurrency=0, engine_waiting=2)
    ours = take(flow, req("t"))
    pool.endpoints = [Reading(1, 3, 0.05), Reading(0, 2, 0.05)]  # every engine queues
    first, second = await queued(flow, req("t")), await queued(flow, req("t"))
    assert sample(registry, "gateway_flow_saturated", model=MODEL) == 1
    ours.release()
    await asyncio.sleep(0)
    assert first.done() and not second.done()  # one out, one in
    pool.endpoints[1] = Reading(0, 0, 0.05)  # one engine has room again
    runner = asyncio.ensure_future(flow.run())
    await asyncio.sleep(0.01)
    runner.cancel()
    assert second.done()
    assert sample(registry, "gateway_flow_saturated", model=MODEL) == 0


async def test_the_reserve_keeps_the_last_slot_for_a_tenant_under_its_share(
    clock: FakeClock,
) -> None:
    flow, _, _ = control(clock, endpoint_concurrency=2, reserve=1)  # 4 slots
    take(flow, req("quiet")).release()  # quiet is active: noisy's share is 2 of 4
    noisy = [take(flow, req("noisy")) for _ in range(3)]
    assert flow.enter(req("noisy")) is None  # the last slot is the reserve
    quiet = take(flow, req("quiet"))
    assert quiet is not None and noisy


async def test_a_lone_tenant_gets_the_whole_pool_even_with_a_reserve(clock: FakeClock) -> None:
    flow, _, _ = control(clock, endpoint_concurrency=2, reserve=1)
    assert all(flow.enter(req("alone")) is not None for _ in range(4))


async def test_a_model_nobody_serves_is_neither_queued_nor_counted(clock: FakeClock) -> None:
    flow, _, registry = control(clock)
    take(flow, req("t")), take(flow, req("t"))  # the pool is full
    for n in range(3):
        stray = FlowRequest(f"typo-{n}", "t", 0, 1.0, 10, 1.0)
        ticket = flow.enter(stray)
        assert ticket is not None  # routing answers it (404), not the queue
        ticket.release()
    assert sample(registry, "gateway_flow_admitted_in_flight") == 2
    names = {s.labels.get("model") for f in registry.collect() for s in f.samples}
    assert not any(str(name).startswith("typo") for name in names)


async def test_a_reserved_slot_goes_at_once_to_a_tenant_under_its_share_while_others_wait(
    clock: FakeClock,
) -> None:
    flow, _, _ = control(clock, endpoint_concurrency=2, reserve=1)  # 4 slots
    take(flow, req("quiet")).release()  # quiet is active: noisy's share is 2 of 4
    [take(flow, req("noisy")) for _ in range(3)]
    noisy = await queued(flow, req("noisy"))  # kept from the reserved slot
    quiet = await queued(flow, req("quiet"))  # the queue is not empty: it queues, and
    assert quiet.done() and not noisy.done()  # the reserved slot is its at once
    noisy.cancel()
