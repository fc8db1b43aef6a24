"""The vectors of one namespace: a FAISS index with tombstones, that rebuilds itself.

A namespace starts on an exact flat index (``IndexFlatIP`` over unit vectors:
inner product is the cosine) and moves to ``IndexIVFFlat`` when it holds
``ivf_min_vectors``: a flat search is linear (~60-110 ms at 1M vectors on one
core), an IVF search with ``nprobe`` 16 of ~2048 lists is well under 5 ms.

Slots: vector ``i`` of the FAISS index is slot ``i`` (vectors are only ever
appended, so FAISS's sequential ids are the slots). Deletion is logical: the
slot's bit is cleared in the ``alive`` bitmap and searches pass the bitmap to
FAISS as an ``IDSelectorBitmap``. A rebuild (compaction, flat -> IVF, IVF
retrained for a larger size) copies the live vectors out, builds a new index
with no lock held, then replays what changed meanwhile (the journal) and swaps.

Every method here is synchronous and may block for milliseconds or, for
``rebuild``, seconds: callers run them in worker threads, never on the event
loop. Searches share a readers-writer lock; adds, removals and the swap take it
exclusively.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from semcache.model import Added, Candidate
from semcache.rwlock import RWLock

_EXTRA = 4  # searched beyond k, for expired vectors the sweep has not marked yet
_CHUNK = 65_536  # vectors copied per step when a rebuild exports an index


@dataclass(frozen=True, slots=True)
class IndexParams:
    dim: int
    ivf_min_vectors: int = 8192
    ivf_nlist: int = 0  # 0: from the size
    ivf_nprobe: int = 16
    compact_ratio: float = 0.2

    def nlist_for(self, n: int) -> int:
        """Lists for an IVF over ``n`` vectors: ~2*sqrt(n), a power of two, trainable."""
        if self.ivf_nlist:
            return self.ivf_nlist
        target = 2 ** round(math.log2(2 * math.sqrt(max(n, 1))))
        return int(max(1, min(4096, target, n // 39)))


@dataclass(frozen=True, slots=True)
class NamespaceStats:
    kind: str  # "flat" | "ivf"
    vectors: int  # live (not deleted; possibly expired but not swept yet)
    tombstones: int


def _set_bits(bits: np.ndarray, slots: np.ndarray) -> None:
    np.bitwise_or.at(bits, slots >> 3, (1 << (slots & 7)).astype(np.uint8))


def _clear_bits(bits: np.ndarray, slots: np.ndarray) -> None:
    np.bitwise_and.at(bits, slots >> 3, ~(1 << (slots & 7)).astype(np.uint8))


class _Generation:
    """One FAISS index and what the slots mean; a rebuild replaces it whole."""

    def __init__(self, index: Any, kind: str, trained_for: int) -> None:
        self.index = index
        self.kind = kind
        self.trained_for = trained_for
        self.ids: list[str] = []  # slot -> entry id
        self.slots: dict[str, int] = {}  # live entry id -> slot
        self.expires = np.zeros(0, dtype=np.float64)
        self.alive = np.zeros(0, dtype=np.uint8)  # bitmap over slots
        self.dead = 0
        self.next_expiry = math.inf

    def append(self, ids: Sequence[str], vectors: np.ndarray, expires: np.ndarray) -> None:
        start, stop = len(self.ids), len(self.ids) + len(ids)
        self._reserve(stop)
        self.index.add(vectors)
        self.ids.extend(ids)
        self.slots.update(zip(ids, range(start, stop), strict=True))
        self.expires[start:stop] = expires
        _set_bits(self.alive, np.arange(start, stop, dtype=np.int64))
        if len(expires):
            self.next_expiry = min(self.next_expiry, float(expires.min()))

    def kill(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():
            self.slots.pop(self.ids[slot], None)
        _clear_bits(self.alive, slots)
        self.dead += len(slots)

    def live_mask(self) -> np.ndarray:
        n = len(self.ids)
        return np.unpackbits(self.alive, count=n, bitorder="little").astype(bool)

    def _reserve(self, n: int) -> None:
        """Grow by replacing arrays (never in place): searches may hold the old ones."""
        if n <= len(self.expires):
            return
        capacity = max(1024, n, 2 * len(self.expires))
        expires = np.zeros(capacity, dtype=np.float64)
        expires[: len(self.expires)] = self.expires
        alive = np.zeros((capacity + 7) // 8, dtype=np.uint8)
        alive[: len(self.alive)] = self.alive
        self.expires, self.alive = expires, alive


def _decode(entries: Sequence[Added], dim: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    ids = [e.entry_id for e in entries]
    vectors = np.frombuffer(b"".join(e.vector for e in entries), dtype=np.float32)
    expires = np.fromiter((e.expires_at for e in entries), dtype=np.float64, count=len(entries))
    return ids, vectors.reshape(len(entries), dim), expires


def build_generation(
    params: IndexParams, ids: Sequence[str], vectors: np.ndarray, expires: np.ndarray
) -> _Generation:
    """A new index over these vectors: flat when small, IVF (trained here) when large."""
    n = len(ids)
    if n < params.ivf_min_vectors:
        generation = _Generation(faiss.IndexFlatIP(params.dim), "flat", 0)
    else:
        nlist = params.nlist_for(n)
        quantizer = faiss.IndexFlatIP(params.dim)
        ivf = faiss.IndexIVFFlat(quantizer, params.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(n).choice(n, size=min(n, nlist * 40), replace=False)
        ivf.train(vectors[np.sort(sample)])
        ivf.make_direct_map()  # reconstruct_batch by slot, for the next rebuild
        ivf.nprobe = params.ivf_nprobe
        generation = _Generation(ivf, "ivf", n)
    generation.append(ids, np.ascontiguousarray(vectors, dtype=np.float32), expires)
    return generation


class NamespaceIndex:
    """Thread-safe vector index of one namespace (see the module docstring)."""

    def __init__(self, params: IndexParams, generation: _Generation | None = None) -> None:
        self.params = params
        self._lock = RWLock()
        self._gen = generation or build_generation(
            params, [], np.zeros((0, params.dim), np.float32), np.zeros(0)
        )
        self._journal: list[tuple[str, Any]] | None = None  # set while a rebuild runs

    @classmethod
    def from_arrays(
        cls, params: IndexParams, ids: Sequence[str], vectors: np.ndarray, expires: np.ndarray
    ) -> NamespaceIndex:
        return cls(params, build_generation(params, ids, vectors, expires))

    def add(self, entries: Sequence[Added]) -> int:
        with self._lock.write():
            fresh = {e.entry_id: e for e in entries if e.entry_id not in self._gen.slots}
            if not fresh:
                return 0
            ids, vectors, expires = _decode(list(fresh.values()), self.params.dim)
            self._gen.append(ids, vectors, expires)
            if self._journal is not None:
                self._journal.append(("add", (ids, vectors, expires)))
            return len(ids)

    def remove(self, entry_ids: Sequence[str]) -> int:
        with self._lock.write():
            return self._remove(self._gen, entry_ids, journal=True)

    def _remove(self, gen: _Generation, entry_ids: Sequence[str], *, journal: bool) -> int:
        slots = sorted({gen.slots[i] for i in entry_ids if i in gen.slots})
        if slots:
            gen.kill(np.asarray(slots, dtype=np.int64))
            if journal and self._journal is not None:
                self._journal.append(("del", [gen.ids[s] for s in slots]))
        return len(slots)

    def search(
        self, query: np.ndarray, k: int, min_similarity: float, now: float
    ) -> list[Candidate]:
        """Up to ``k`` live, unexpired entries at least ``min_similarity`` close, best first."""
        with self._lock.read():
            gen = self._gen
            n = len(gen.ids)
            if not gen.slots:
                return []
            selector = (  # kept referenced here: FAISS holds only a raw pointer to it
                faiss.IDSelectorBitmap((n + 7) // 8, faiss.swig_ptr(gen.alive))
                if gen.dead
                else None
            )
            params = self._search_params(gen, selector)
            sims, slots = gen.index.search(query.reshape(1, -1), min(n, k + _EXTRA), params=params)
            found: list[Candidate] = []
            for sim, slot in zip(sims[0].tolist(), slots[0].tolist(), strict=True):
                if slot < 0 or sim < min_similarity:
                    break
                if gen.expires[slot] > now:
                    found.append(Candidate(gen.ids[slot], sim))
                    if len(found) == k:
                        break
            return found

    def _search_params(self, gen: _Generation, selector: Any) -> Any:
        if gen.kind == "ivf":
            params: Any = faiss.SearchParametersIVF()
            params.nprobe = self.params.ivf_nprobe
        elif selector is not None:
            params = faiss.SearchParameters()
        else:
            return None
        if selector is not None:
            params.sel = selector
        return params

    def sweep(self, now: float) -> int:
        """Tombstone the vectors whose entries expired; returns how many."""
        if now < self._gen.next_expiry:
            return 0
        with self._lock.write():
            gen = self._gen
            n = len(gen.ids)
            live = gen.live_mask()
            expired = np.flatnonzero(live & (gen.expires[:n] <= now))
            gen.kill(expired)
            still = live & (gen.expires[:n] > now)
            gen.next_expiry = float(gen.expires[:n][still].min()) if still.any() else math.inf
            return len(expired)

    def rebuild_reason(self) -> str | None:
        """Why this index should be rebuilt now, or None."""
        gen, p = self._gen, self.params
        live = len(gen.slots)
        if gen.kind == "flat" and live >= p.ivf_min_vectors:
            return "grow"
        if gen.kind == "ivf" and live >= 4 * gen.trained_for:
            return "grow"
        if gen.kind == "ivf" and live < p.ivf_min_vectors // 4:
            return "shrink"
        if gen.dead >= 64 and gen.dead > p.compact_ratio * (live + gen.dead):
            return "compact"
        return None

    def rebuild(self, now: float) -> None:
        """Compact and re-choose the index type; searches go on meanwhile."""
        ids, vectors, expires = self._export(now)
        try:
            fresh = build_generation(self.params, ids, vectors, expires)
        except BaseException:
            with self._lock.write():
                self._journal = None
            raise
        del vectors
        with self._lock.write():
            for op, arg in self._journal or ():
                if op == "add":
                    new_ids, new_vectors, new_expires = arg
                    keep = [i for i, e in enumerate(new_ids) if e not in fresh.slots]
                    fresh.append([new_ids[i] for i in keep], new_vectors[keep], new_expires[keep])
                else:
                    self._remove(fresh, arg, journal=False)
            self._gen, self._journal = fresh, None

    def _export(self, now: float) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The live, unexpired vectors; starts journaling what changes after this copy."""
        with self._lock.read():
            gen = self._gen
            n = len(gen.ids)
            slots = np.flatnonzero(gen.live_mask() & (gen.expires[:n] > now))
            vectors = np.empty((len(slots), self.params.dim), dtype=np.float32)
            for start in range(0, len(slots), _CHUNK):
                chunk = slots[start : start + _CHUNK]
                vectors[start : start + len(chunk)] = gen.index.reconstruct_batch(chunk)
            self._journal = []
            return [gen.ids[s] for s in slots.tolist()], vectors, gen.expires[slots].copy()

    def stats(self) -> NamespaceStats:
        gen = self._gen
        return NamespaceStats(gen.kind, len(gen.slots), gen.dead)
