"""The limiter on its own (no Redis): load shedding and each tenant's local limits."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import Overloaded, RateLimited
from gateway.tenancy.limits import Limiter, LimitsConfig, Permit
from gateway.tenancy.model import Tenant
from gwkit import FakeClock

FREE = Tenant("free", None, None, None)


def limiter(clock: FakeClock, **config: object) -> Limiter:
    return Limiter(LimitsConfig(**config), None, clock=clock)  # type: ignore[arg-type]


async def admit_all(lim: Limiter, tenant: Tenant, n: int) -> list[Permit]:
    return [await lim.admit(tenant) for _ in range(n)]


async def test_beyond_max_in_flight_requests_are_shed_with_503_and_retry_after(
    clock: FakeClock,
) -> None:
    lim = limiter(clock, max_in_flight=3)
    permits = await admit_all(lim, FREE, 3)
    with pytest.raises(Overloaded) as shed:
        await lim.admit(FREE)
    assert shed.value.status == 503
    assert shed.value.headers() == {"retry-after": "1", "retry-after-ms": "1000"}
    permits[0].release()
    await lim.admit(FREE)
    assert lim.stats().shed == 1


async def test_releasing_a_permit_twice_frees_one_slot_only(clock: FakeClock) -> None:
    lim = limiter(clock, max_in_flight=2)
    first, _ = await admit_all(lim, FREE, 2)
    first.release()
    first.release()
    await lim.admit(FREE)
    with pytest.raises(Overloaded):
        await lim.admit(FREE)


async def test_zero_max_in_flight_means_no_global_limit(clock: FakeClock) -> None:
    lim = limiter(clock, max_in_flight=0)
    await admit_all(lim, FREE, 5000)
    assert lim.stats().in_flight == 5000


async def test_a_tenant_over_its_rate_gets_429_with_the_time_to_wait(clock: FakeClock) -> None:
    lim = limiter(clock)
    tenant = Tenant("acme", requests_per_s=0.5, burst=2, max_streams=None)
    for permit in await admit_all(lim, tenant, 2):
        permit.release()
    with pytest.raises(RateLimited) as limited:
        await lim.admit(tenant)
    assert limited.value.status == 429
    assert limited.value.retry_after == pytest.approx(2.0)
    assert limited.value.headers() == {"retry-after": "2", "retry-after-ms": "2000"}
    assert "acme" in limited.value.message
    clock.advance(2.0)
    await lim.admit(tenant)


async def test_one_tenant_at_its_limit_does_not_affect_another(clock: FakeClock) -> None:
    lim = limiter(clock)
    noisy = Tenant("noisy", requests_per_s=1, burst=1, max_streams=1)
    await lim.admit(noisy)
    with pytest.raises(RateLimited):
        await lim.admit(noisy)
    await lim.admit(Tenant("quiet", requests_per_s=1, burst=1, max_streams=1))
    await lim.admit(FREE)


async def test_concurrent_requests_beyond_max_streams_get_429_until_one_ends(
    clock: FakeClock,
) -> None:
    lim = limiter(clock)
    tenant = Tenant("acme", requests_per_s=None, burst=None, max_streams=2)
    first, _ = await admit_all(lim, tenant, 2)
    with pytest.raises(RateLimited) as limited:
        await lim.admit(tenant)
    assert "concurrent" in limited.value.message
    first.release()
    await lim.admit(tenant)


async def test_a_refused_request_gives_back_its_global_slot(clock: FakeClock) -> None:
    lim = limiter(clock, max_in_flight=2)
    tenant = Tenant("acme", requests_per_s=None, burst=None, max_streams=1)
    await lim.admit(tenant)
    for _ in range(10):
        with pytest.raises(RateLimited):
            await lim.admit(tenant)
    await lim.admit(FREE)  # the second global slot is still free
    assert lim.stats().rate_limited == 10


async def test_without_shared_state_each_replica_allows_its_share(clock: FakeClock) -> None:
    lim = limiter(clock, replicas=2)
    tenant = Tenant("acme", requests_per_s=4, burst=4, max_streams=4)
    permits = await admit_all(lim, tenant, 2)
    with pytest.raises(RateLimited):  # 2 of 4 streams: the replica's half
        await lim.admit(tenant)
    for permit in permits:
        permit.release()
    with pytest.raises(RateLimited):  # 2 of the burst of 4, too
        await lim.admit(tenant)


async def test_new_limits_for_a_tenant_apply_at_once(clock: FakeClock) -> None:
    lim = limiter(clock)
    await lim.admit(Tenant("acme", requests_per_s=1, burst=1, max_streams=None))
    with pytest.raises(RateLimited):
        await lim.admit(Tenant("acme", requests_per_s=1, burst=1, max_streams=None))
    await lim.admit(Tenant("acme", requests_per_s=100, burst=100, max_streams=None))


async def test_release_from_a_finally_after_cancellation_frees_the_slot(clock: FakeClock) -> None:
    lim = limiter(clock, max_in_flight=1)
    tenant = Tenant("acme", requests_per_s=None, burst=None, max_streams=1)

    async def request() -> None:
        permit = await lim.admit(tenant)
        try:
            await asyncio.sleep(3600)
        finally:
            permit.release()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    (await lim.admit(tenant)).release()
    assert lim.stats().in_flight == 0
    await lim.close()
