"""One namespace's FAISS index: tombstones, expiry, flat -> IVF, compaction under writes."""

from __future__ import annotations

import threading

import numpy as np
from cachekit import DIM, near, unit

from semcache.model import Added
from semcache.namespace_index import IndexParams, NamespaceIndex

NOW = 1_000.0
LATER = NOW + 3600


def added(i: int, v: np.ndarray, expires: float = LATER) -> Added:
    return Added(f"e{i}", "ns", v.astype(np.float32).tobytes(), expires)


def clustered(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(8, n // 50), dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_returns_the_nearest_live_entries_best_first() -> None:
    index = NamespaceIndex(IndexParams(dim=DIM))
    target = unit(1)
    index.add(
        [added(0, near(target, 0.95)), added(1, near(target, 0.9, seed=3)), added(2, unit(2))]
    )

    found = index.search(target, k=4, min_similarity=0.85, now=NOW)

    assert [c.entry_id for c in found] == ["e0", "e1"]
    assert found[0].similarity > found[1].similarity >= 0.85


def test_removed_entries_are_never_returned_even_as_the_only_match() -> None:
    index = NamespaceIndex(IndexParams(dim=DIM))
    target = unit(1)
    index.add([added(0, target), added(1, near(target, 0.9))])

    index.remove(["e0"])

    assert [c.entry_id for c in index.search(target, 4, 0.5, NOW)] == ["e1"]
    index.remove(["e1"])
    assert index.search(target, 4, 0.0, NOW) == []
    assert index.stats().tombstones == 2


def test_expired_entries_are_skipped_before_and_after_the_sweep() -> None:
    index = NamespaceIndex(IndexParams(dim=DIM))
    target = unit(1)
    index.add([added(0, target, expires=NOW + 10), added(1, near(target, 0.9))])

    assert index.search(target, 1, 0.5, NOW)[0].entry_id == "e0"
    assert index.search(target, 1, 0.5, NOW + 11)[0].entry_id == "e1"  # not swept yet
    assert index.sweep(NOW + 11) == 1
    assert index.stats().vectors == 1
    assert [c.entry_id for c in index.search(target, 4, 0.5, NOW + 11)] == ["e1"]


def test_adding_an_entry_twice_keeps_one_copy() -> None:
    index = NamespaceIndex(IndexParams(dim=DIM))
    index.add([added(0, unit(1))])
    index.add([added(0, unit(1))])
    assert index.stats().vectors == 1
    assert len(index.search(unit(1), 4, 0.0, NOW)) == 1


def test_growing_past_the_threshold_moves_to_ivf_and_keeps_finding_neighbours() -> None:
    params = IndexParams(dim=DIM, ivf_min_vectors=2000, ivf_nprobe=8)
    x = clustered(3000)
    index = NamespaceIndex(params)
    index.add([added(i, v) for i, v in enumerate(x)])
    index.remove([f"e{i}" for i in range(0, 3000, 10)])  # 300 tombstones
    assert index.stats().kind == "flat"
    assert index.rebuild_reason() == "grow"

    index.rebuild(NOW)

    stats = index.stats()
    assert (stats.kind, stats.vectors, stats.tombstones) == ("ivf", 2700, 0)
    live = np.array([i for i in range(3000) if i % 10])
    hits = 0
    for q in range(100):  # recall@1 against exact search over the live vectors
        query = near(x[live[q * 25]], 0.9, seed=q)
        exact = f"e{live[np.argmax(x[live] @ query)]}"
        hits += index.search(query, 1, 0.0, NOW)[0].entry_id == exact
    assert hits >= 95
    assert all(c.entry_id != "e0" for c in index.search(x[0], 4, 0.0, NOW))


def test_changes_made_while_a_rebuild_runs_survive_the_swap() -> None:
    params = IndexParams(dim=DIM, ivf_min_vectors=2000)
    x = clustered(2600, seed=5)
    index = NamespaceIndex(params)
    index.add([added(i, v) for i, v in enumerate(x[:2500])])
    built = threading.Event()
    release = threading.Event()

    import semcache.namespace_index as module

    real_build = module.build_generation

    def slow_build(*args: object, **kwargs: object) -> object:
        generation = real_build(*args, **kwargs)  # type: ignore[arg-type]
        built.set()
        release.wait(10)
        return generation

    module.build_generation = slow_build  # type: ignore[assignment]
    try:
        worker = threading.Thread(target=index.rebuild, args=(NOW,))
        worker.start()
        assert built.wait(30)
        index.add([added(i, v) for i, v in enumerate(x[2500:], start=2500)])
        index.remove(["e7", "e2550"])
        assert index.search(x[2510], 1, 0.0, NOW)[0].entry_id == "e2510"  # served meanwhile
        release.set()
        worker.join(30)
    finally:
        module.build_generation = real_build

    assert index.stats().kind == "ivf"
    assert index.stats().vectors == 2598
    assert index.search(x[2510], 1, 0.0, NOW)[0].entry_id == "e2510"
    assert all(c.entry_id not in ("e7", "e2550") for c in index.search(x[7], 4, 0.0, NOW))
    assert all(c.entry_id != "e2550" for c in index.search(x[2550], 4, 0.0, NOW))


def test_compaction_is_due_once_tombstones_pass_the_ratio() -> None:
    index = NamespaceIndex(IndexParams(dim=DIM, compact_ratio=0.2))
    x = clustered(500, seed=2)
    index.add([added(i, v) for i, v in enumerate(x)])
    index.remove([f"e{i}" for i in range(90)])
    assert index.rebuild_reason() is None
    index.remove([f"e{i}" for i in range(90, 110)])
    assert index.rebuild_reason() == "compact"

    index.rebuild(NOW)

    assert (index.stats().vectors, index.stats().tombstones) == (390, 0)
    assert index.search(x[200], 1, 0.0, NOW)[0].entry_id == "e200"


def test_a_shrunken_ivf_goes_back_to_flat() -> None:
    params = IndexParams(dim=DIM, ivf_min_vectors=1000)
    x = clustered(1200, seed=4)
    index = NamespaceIndex.from_arrays(
        params, [f"e{i}" for i in range(1200)], x, np.full(1200, LATER)
    )
    assert index.stats().kind == "ivf"
    index.remove([f"e{i}" for i in range(1000)])
    assert index.rebuild_reason() == "shrink"
    index.rebuild(NOW)
    assert index.stats().kind == "flat"
    assert index.search(x[1100], 1, 0.0, NOW)[0].entry_id == "e1100"


def test_nlist_grows_with_the_square_root_of_the_size() -> None:
    params = IndexParams(dim=DIM)
    assert params.nlist_for(1_000_000) == 2048
    assert params.nlist_for(32_768) in (256, 512)
    assert params.nlist_for(1000) * 39 <= 1000
