"""The batcher: callers share model runs, the queue is bounded, dead calls never reach the model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from embedder.batcher import Batcher, BatchLimits
from embedder.errors import DeadlineExpired, InferenceFailed, NotReady, Overloaded
from embedder.metrics import Metrics

Until = Callable[..., Awaitable[None]]


def limits(size: int = 64, tokens: int = 8192, queue: int = 1024, workers: int = 1) -> BatchLimits:
    return BatchLimits(
        max_batch_size=size, max_batch_tokens=tokens, max_queue_texts=queue, workers=workers
    )


@pytest.fixture
async def batcher(fake_model, metrics: Metrics) -> AsyncIterator[Batcher]:
    batcher = Batcher(fake_model, limits(), metrics)
    batcher.start()
    yield batcher
    fake_model.release()
    await batcher.close()


async def make(fake_model, metrics: Metrics, **kwargs: int) -> Batcher:
    batcher = Batcher(fake_model, limits(**kwargs), metrics)
    batcher.start()
    return batcher


async def test_callers_waiting_on_a_busy_model_share_the_next_run(
    batcher: Batcher, fake_model, until: Until
) -> None:
    fake_model.hold()
    first = asyncio.create_task(batcher.embed(["first caller"]))
    await until(fake_model.running.is_set)
    others = [asyncio.create_task(batcher.embed([f"caller {i}"])) for i in range(5)]
    await asyncio.sleep(0.05)  # they are queued behind the running batch
    fake_model.release()
    await asyncio.gather(first, *others)

    assert fake_model.batches == [["first caller"], [f"caller {i}" for i in range(5)]]
    for i, task in enumerate(others):
        assert task.result().tokens[0].text == f"caller {i}"


async def test_each_caller_gets_its_own_vectors_in_input_order(
    batcher: Batcher, fake_model
) -> None:
    texts = ["alpha beta", "gamma", "delta epsilon zeta"]
    result = await batcher.embed(texts)
    expected = np.stack([fake_model.vector_for(text) for text in texts])
    np.testing.assert_allclose(result.vectors, expected)


async def test_a_second_worker_runs_the_next_batch_while_the_first_is_busy(
    fake_model, metrics, until: Until
) -> None:
    batcher = await make(fake_model, metrics, workers=2)
    fake_model.hold()
    first = asyncio.create_task(batcher.embed(["first"]))
    await until(fake_model.running.is_set)
    second = asyncio.create_task(batcher.embed(["second"]))
    await until(lambda: fake_model.active == 2)
    fake_model.release()
    await asyncio.gather(first, second)
    await batcher.close()
    assert sorted(fake_model.seen) == ["first", "second"]


async def test_batch_size_one_runs_every_text_alone(fake_model, metrics, until: Until) -> None:
    batcher = await make(fake_model, metrics, size=1)
    fake_model.hold()
    first = asyncio.create_task(batcher.embed(["a"]))
    await until(fake_model.running.is_set)
    rest = [asyncio.create_task(batcher.embed([t])) for t in ("b", "c", "d")]
    await asyncio.sleep(0.02)
    fake_model.release()
    await asyncio.gather(first, *rest)
    await batcher.close()
    assert fake_model.batches == [["a"], ["b"], ["c"], ["d"]]


async def test_a_large_request_spans_batches_and_comes_back_whole(fake_model, metrics) -> None:
    batcher = await make(fake_model, metrics, size=4)
    texts = [f"text number {i}" for i in range(10)]
    result = await batcher.embed(texts)
    await batcher.close()
    assert [len(batch) for batch in fake_model.batches] == [4, 4, 2]
    assert [item.text for item in result.tokens] == texts
    assert result.vectors.shape == (10, 8)


async def test_large_requests_are_tokenized_off_the_event_loop(
    batcher: Batcher, fake_model
) -> None:
    await batcher.embed(["short one"])
    await batcher.embed(["word " * 300])  # 1500 characters
    loop_thread = threading.get_ident()
    assert fake_model.tokenized_on == [loop_thread, fake_model.tokenized_on[1]]
    assert fake_model.tokenized_on[1] != loop_thread


async def test_token_budget_counts_padding_to_the_longest_text(fake_model, metrics) -> None:
    # 4-word texts: two fit in a budget of 8 padded tokens, a third would not.
    batcher = await make(fake_model, metrics, tokens=8)
    await batcher.embed(["one two three four"] * 5)
    await batcher.close()
    assert [len(batch) for batch in fake_model.batches] == [2, 2, 1]


async def test_a_full_queue_refuses_at_once_and_recovers(fake_model, metrics, until: Until) -> None:
    batcher = await make(fake_model, metrics, queue=3)
    fake_model.hold()
    running = asyncio.create_task(batcher.embed(["in the model"]))
    await until(fake_model.running.is_set)
    queued = asyncio.create_task(batcher.embed(["one", "two"]))
    await asyncio.sleep(0.02)
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.embed(["one too many", "and another"])
    fake_model.release()
    await asyncio.gather(running, queued)
    assert (await batcher.embed(["fits again", "now", "yes"])).vectors.shape == (3, 8)
    await batcher.close()
    assert "one too many" not in fake_model.seen


async def test_calls_past_their_deadline_are_dropped_before_the_model(
    batcher: Batcher, fake_model, until: Until, registry: CollectorRegistry
) -> None:
    fake_model.hold()
    running = asyncio.create_task(batcher.embed(["busy"]))
    await until(fake_model.running.is_set)
    deadline = asyncio.get_running_loop().time() + 0.02
    late = asyncio.create_task(batcher.embed(["too late", "also late"], deadline=deadline))
    await asyncio.sleep(0.05)
    fake_model.release()
    await running
    with pytest.raises(DeadlineExpired):
        await late
    assert fake_model.seen == ["busy"]
    assert registry.get_sample_value("embedder_dropped_texts_total", {"reason": "expired"}) == 2


async def test_cancelled_calls_are_dropped_before_the_model(
    batcher: Batcher, fake_model, until: Until
) -> None:
    fake_model.hold()
    running = asyncio.create_task(batcher.embed(["busy"]))
    await until(fake_model.running.is_set)
    gone = asyncio.create_task(batcher.embed(["caller hung up"]))
    await asyncio.sleep(0.02)
    gone.cancel()
    await asyncio.sleep(0.01)
    fake_model.release()
    await running
    await batcher.embed(["next"])
    assert fake_model.seen == ["busy", "next"]


async def test_a_model_failure_fails_that_batch_only(batcher: Batcher, fake_model) -> None:
    fake_model.fail_next = True
    with pytest.raises(InferenceFailed):
        await batcher.embed(["unlucky"])
    assert (await batcher.embed(["fine"])).vectors.shape == (1, 8)


async def test_queue_depth_gauge_counts_waiting_texts(
    batcher: Batcher, fake_model, until: Until, registry: CollectorRegistry
) -> None:
    fake_model.hold()
    running = asyncio.create_task(batcher.embed(["busy"]))
    await until(fake_model.running.is_set)
    queued = asyncio.create_task(batcher.embed(["a", "b", "c"]))
    await until(lambda: registry.get_sample_value("embedder_queue_depth") == 3)
    fake_model.release()
    await asyncio.gather(running, queued)
    assert registry.get_sample_value("embedder_queue_depth") == 0
    assert registry.get_sample_value("embedder_batch_size_count") == 2


async def test_a_closed_batcher_refuses_calls(fake_model, metrics) -> None:
    batcher = await make(fake_model, metrics)
    await batcher.close()
    with pytest.raises(NotReady):
        await batcher.embed(["anyone there"])


async def test_the_model_takes_the_next_batch_without_waiting_for_the_event_loop(
    batcher: Batcher, fake_model, until: Until
) -> None:
    fake_model.hold()
    first = asyncio.create_task(batcher.embed(["first"]))
    await until(fake_model.running.is_set)
    second = asyncio.create_task(batcher.embed(["second"]))
    await asyncio.sleep(0.02)  # queued behind the running batch
    # Block the event loop: the inference thread must go on to the next batch by itself.
    fake_model.release()
    deadline = time.monotonic() + 5
    while len(fake_model.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)  # noqa: ASYNC251 - blocking the loop is the point
    assert fake_model.batches == [["first"], ["second"]]
    await asyncio.gather(first, second)


async def test_closing_answers_the_batch_in_the_model_and_refuses_the_queued(
    fake_model, metrics, until: Until
) -> None:
    batcher = await make(fake_model, metrics)
    fake_model.hold()
    running = asyncio.create_task(batcher.embed(["in the model"]))
    await until(fake_model.running.is_set)
    queued = asyncio.create_task(batcher.embed(["still queued"]))
    await asyncio.sleep(0.02)
    await batcher.close()
    with pytest.raises(NotReady):
        await queued
    fake_model.release()
    assert (await running).vectors.shape == (1, 8)
    assert fake_model.seen == ["in the model"]
