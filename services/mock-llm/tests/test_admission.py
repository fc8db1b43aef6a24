"""The concurrency gate: FIFO beyond the limit, nothing leaked when a waiter goes away."""

import asyncio

from mockllm.admission import Admission


async def test_requests_beyond_the_limit_wait_in_order() -> None:
    gate = Admission(2)
    await gate.acquire()
    await gate.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await gate.acquire()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert (gate.running, gate.waiting) == (2, 3)
    assert not gate.has_room()
    for _ in range(3):
        gate.release()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert (gate.running, gate.waiting) == (2, 0)


async def test_cancelled_waiter_leaves_the_queue() -> None:
    gate = Admission(1)
    await gate.acquire()
    task = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert (gate.running, gate.waiting) == (1, 0)
    gate.release()
    assert (gate.running, gate.waiting) == (0, 0)


async def test_slot_granted_to_a_cancelled_waiter_is_passed_on() -> None:
    gate = Admission(1)
    await gate.acquire()
    first = asyncio.create_task(gate.acquire())
    second = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # hands the slot to `first`...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    assert (gate.running, gate.waiting) == (1, 0)
    gate.release()
    assert gate.running == 0
