"""The per-namespace index set: changes in order, walls between namespaces, bad input skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from cachekit import DIM, unit

from semcache.index import FaissIndex
from semcache.model import Added, Cleared, NamespaceDropped, Removed
from semcache.namespace_index import IndexParams

NOW = 1_000.0


def add(i: int, ns: str = "ns", expires: float = NOW + 60) -> Added:
    return Added(f"e{i}", ns, unit(i).tobytes(), expires)


@pytest.fixture
def index() -> Iterator[FaissIndex]:
    idx = FaissIndex(IndexParams(dim=DIM, ivf_min_vectors=256))
    yield idx
    idx.close()


async def ids(index: FaissIndex, ns: str, i: int) -> list[str]:
    return [c.entry_id for c in await index.search(ns, unit(i), 4, 0.99, NOW)]


async def test_changes_apply_in_order_within_and_across_namespaces(index: FaissIndex) -> None:
    await index.apply([add(1), add(2, "other"), Removed("e1", "ns"), add(3), add(1)])

    assert await ids(index, "ns", 1) == ["e1"]  # removed, then added again
    assert await ids(index, "ns", 2) == []  # e2 lives in "other" only
    assert await ids(index, "other", 2) == ["e2"]
    await index.apply([NamespaceDropped("ns")])
    assert await ids(index, "ns", 3) == [] and await ids(index, "other", 2) == ["e2"]
    await index.apply([Cleared(), add(4)])
    assert index.stats().namespaces == 1 and index.stats().size == 1


async def test_a_vector_of_another_dimension_is_skipped_not_fatal(index: FaissIndex) -> None:
    wrong = Added("bad", "ns", np.ones(DIM + 1, np.float32).tobytes(), NOW + 60)

    await index.apply([wrong, add(1)])

    assert await ids(index, "ns", 1) == ["e1"]
    assert index.stats().size == 1


async def test_load_replaces_everything_and_drops_expired_entries(index: FaissIndex) -> None:
    await index.apply([add(9)])

    async def batches() -> AsyncIterator[list[Added]]:
        yield [add(1), add(2, "other"), add(3, expires=NOW - 1)]
        yield [add(4)]

    assert await index.load(batches(), NOW) == 3
    assert await ids(index, "ns", 9) == [] and await ids(index, "ns", 3) == []
    assert await ids(index, "ns", 4) == ["e4"] and await ids(index, "other", 2) == ["e2"]


async def test_sweeping_expired_vectors_empties_and_forgets_a_namespace(index: FaissIndex) -> None:
    await index.apply([add(1, expires=NOW + 1), add(2, "other")])

    assert await index.sweep(NOW + 2) == 1

    stats = index.stats()
    assert (stats.namespaces, stats.size) == (1, 1)


async def test_maintenance_moves_a_large_namespace_to_ivf(index: FaissIndex) -> None:
    await index.apply([add(i) for i in range(300)])
    assert index.stats().kind == "flat"

    await index.maintain(NOW)
    await index.wait_rebuilt()

    assert index.stats().kind == "ivf" and index.stats().size == 300
    assert await ids(index, "ns", 123) == ["e123"]


async def test_an_entry_scanned_twice_is_indexed_once(index: FaissIndex) -> None:
    async def batches() -> AsyncIterator[list[Added]]:
        yield [add(1), add(2)]
        yield [add(1)]

    assert await index.load(batches(), NOW) == 2
    await index.apply([Removed("e1", "ns")])
    assert await ids(index, "ns", 1) == []
