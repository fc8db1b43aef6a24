"""The prefix cache and the shared prefill compute, as pure objects."""

from __future__ import annotations

import pytest

from mockllm.prefill import SharedCompute
from mockllm.prefix_cache import BLOCK_BYTES, BLOCK_TOKENS, PrefixCache, block_hashes

SYSTEM = "s" * (BLOCK_BYTES * 4)


def test_only_full_blocks_are_hashed_and_the_chain_carries_the_prefix() -> None:
    assert len(block_hashes("x" * (BLOCK_BYTES * 3 - 1))) == 2
    a = block_hashes(SYSTEM + "a" * BLOCK_BYTES)
    b = block_hashes(SYSTEM + "b" * BLOCK_BYTES)
    assert a[:4] == b[:4] and a[4] != b[4]
    # the same block after a different prefix is a different block
    assert block_hashes("t" * BLOCK_BYTES + "a" * BLOCK_BYTES)[1] != a[4]


def test_a_repeated_prefix_hits_in_tokens_and_never_the_whole_prompt() -> None:
    cache = PrefixCache(capacity=100)
    prompt = SYSTEM + "question one"
    tokens = len(prompt) // 4
    assert cache.lookup(block_hashes(prompt), tokens) == 0
    cache.insert(block_hashes(prompt))
    other = SYSTEM + "another question"
    assert cache.lookup(block_hashes(other), len(other) // 4) == 4 * BLOCK_TOKENS
    whole = "w" * BLOCK_BYTES * 2
    cache.insert(block_hashes(whole))
    assert cache.lookup(block_hashes(whole), 2 * BLOCK_TOKENS) == 2 * BLOCK_TOKENS - 1
    assert cache.queries == tokens + len(other) // 4 + 2 * BLOCK_TOKENS
    assert cache.hits == 4 * BLOCK_TOKENS + 2 * BLOCK_TOKENS - 1


def test_the_least_recently_used_blocks_are_evicted_first() -> None:
    cache = PrefixCache(capacity=4)
    first, second = "a" * BLOCK_BYTES * 2, "b" * BLOCK_BYTES * 2
    cache.insert(block_hashes(first))
    cache.insert(block_hashes(second))
    cache.lookup(block_hashes(first), 32)  # touch: second is now the oldest
    cache.insert(block_hashes("c" * BLOCK_BYTES * 2))
    assert len(cache) == 4
    assert cache.lookup(block_hashes(first), 40) == 32
    assert cache.lookup(block_hashes(second), 40) == 0


def test_concurrent_prefills_share_the_compute() -> None:
    compute = SharedCompute(now=0.0)
    long_job = compute.add(1.0, now=0.0)
    assert compute.next_finish(0.0) == pytest.approx(1.0)
    short = compute.add(0.1, now=0.5)  # long has 0.5 s left; both now run at half speed
    assert compute.next_finish(0.5) == pytest.approx(0.7)
    assert compute.finished(0.69) == []
    assert compute.finished(0.7) == [short]
    assert compute.next_finish(0.7) == pytest.approx(0.7 + 0.4)  # alone again: 0.4 s left
    assert compute.finished(1.1) == [long_job]
    assert compute.next_finish(1.1) is None


def test_a_cancelled_prefill_gives_its_share_back() -> None:
    compute = SharedCompute(now=0.0)
    gone = compute.add(10.0, now=0.0)
    kept = compute.add(1.0, now=0.0)
    compute.cancel(gone, now=1.0)  # kept had 0.5 s of work by then
    assert compute.next_finish(1.0) == pytest.approx(1.5)
    assert compute.finished(1.5) == [kept]
