"""The cache itself: lookups, stores and invalidation, in the service's own terms.

A lookup is exact first (one Redis round trip by the request's canonical hash),
then semantic: the namespace's index gives the top ``candidates`` vectors at or
above the similarity floor, the store gives their prompts and responses (the
truth: an entry deleted or expired in Redis is never served, whatever the
index still holds), and the verifier decides; the most similar candidate that
passes is the hit.

Every change goes to the store first, then to this replica's index at once (so
a replica reads its own writes); other replicas get it through the stream.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from llmgw_common.logs import get_logger
from semcache.errors import InvalidArgument, NotReady
from semcache.index import IndexStats, VectorIndex
from semcache.metrics import CacheMetrics
from semcache.model import (
    MISS,
    Added,
    Candidate,
    Change,
    Cleared,
    Entry,
    HitKind,
    LookupResult,
    NamespaceDropped,
    Removed,
    as_unit_vector,
)
from semcache.pair_verify import PairVerdict, PairVerifier
from semcache.store import EntryStore

log = get_logger(__name__)


class Verdict(Protocol):
    @property
    def accepted(self) -> bool: ...
    @property
    def score(self) -> float: ...
    @property
    def reason(self) -> str: ...


class Verifier(Protocol):
    """``semcache.verify.Verifier``: may this cached question answer that one?"""

    def check(
        self,
        query: str,
        candidate: str,
        similarity: float,
        query_vector: np.ndarray | None = None,
        candidate_vector: np.ndarray | None = None,
    ) -> Verdict: ...

    def screen(self, query: str, candidate: str) -> str | None:
        """The hard rule that refuses the pair (numbers, negation, names...), or None."""
        ...


@dataclass(frozen=True, slots=True)
class Limits:
    dim: int = 384
    default_ttl_s: int = 86_400
    max_response_bytes: int = 1 << 20
    max_prompt_bytes: int = 64 << 10
    max_key_bytes: int = 1024
    candidates: int = 4
    pair_candidates: int = 2  # the most similar screened candidates the pair model reads


Hit = tuple[Candidate, Entry, "Verdict"]


@dataclass(slots=True)
class ReplicaState:
    """What the stream follower tells the rest of the replica."""

    ready: bool = False  # the index has been built once
    lag_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class LookupQuery:
    namespace: str
    exact_key: str = ""
    vector: Sequence[float] = ()
    prompt_text: str = ""
    min_similarity: float = 0.0


@dataclass(frozen=True, slots=True)
class StoreCommand:
    namespace: str
    response: bytes
    exact_key: str = ""
    prompt_text: str = ""
    vector: Sequence[float] = ()
    ttl_seconds: int = 0
    upstream_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class InvalidateTarget:
    """``kind`` is "entry" (entry_id), "exact" (namespace + exact_key), "namespace" or "all"."""

    kind: str
    entry_id: str = ""
    namespace: str = ""
    exact_key: str = ""


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    index: IndexStats
    store: str
    stream_lag_seconds: float


class SemanticCache:
    def __init__(
        self,
        *,
        limits: Limits,
        store: EntryStore,
        index: VectorIndex,
        verifier: Verifier,
        min_similarity: float,
        pair: PairVerifier | None = None,
        metrics: CacheMetrics,
        state: ReplicaState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.store = store
        self.index = index
        self.verifier = verifier
        self.pair = pair
        self.min_similarity = min_similarity
        self.metrics = metrics
        self.state = state or ReplicaState(ready=True)
        self._clock = clock
        self._background: set[asyncio.Task[None]] = set()

    # -- validation -------------------------------------------------------

    def _ready(self) -> None:
        if not self.state.ready:
            raise NotReady("the index is still being built")

    def _namespace(self, namespace: str) -> str:
        if not namespace:
            raise InvalidArgument("namespace is required")
        self._size("namespace", namespace.encode(), self.limits.max_key_bytes)
        return namespace

    @staticmethod
    def _size(what: str, value: bytes, limit: int) -> None:
        if len(value) > limit:
            raise InvalidArgument(f"{what} is {len(value)} bytes, the limit is {limit}")

    def _vector(self, values: Sequence[float]) -> np.ndarray | None:
        if not len(values):
            return None
        raw = np.asarray(values, dtype=np.float32)
        if raw.shape != (self.limits.dim,):
            raise InvalidArgument(
                f"vector has {raw.size} dimensions, this cache expects {self.limits.dim}"
            )
        unit = as_unit_vector(raw)
        if unit is None:
            raise InvalidArgument("vector has zero or non-finite norm")
        return unit

    # -- lookup -----------------------------------------------------------

    async def lookup(self, query: LookupQuery) -> LookupResult:
        self._ready()
        namespace = self._namespace(query.namespace)
        self._size("exact_key", query.exact_key.encode(), self.limits.max_key_bytes)
        vector = self._vector(query.vector)
        if not query.exact_key and vector is None:
            raise InvalidArgument("a lookup needs an exact_key, a vector, or both")
        now = self._clock()
        if query.exact_key:
            entry = await self.store.get_exact(namespace, query.exact_key, now)
            if entry is not None and entry.namespace == namespace:
                self.metrics.lookups.labels("exact_hit").inc()
                return LookupResult(HitKind.EXACT, entry, 1.0, max(0.0, now - entry.created_at))
        if vector is None:
            self.metrics.lookups.labels("miss").inc()
            return MISS
        return await self._semantic(namespace, vector, query, now)

    async def _semantic(
        self, namespace: str, vector: np.ndarray, query: LookupQuery, now: float
    ) -> LookupResult:
        floor = max(float(query.min_similarity), self.min_similarity)
        candidates = await self.index.search(namespace, vector, self.limits.candidates, floor, now)
        entries = await self.store.get_many([c.entry_id for c in candidates]) if candidates else []
        live: list[tuple[Candidate, Entry]] = []
        gone: list[Change] = []
        for candidate, entry in zip(candidates, entries, strict=True):
            if entry is None:  # deleted or expired in the store: the index lags
                gone.append(Removed(candidate.entry_id, namespace))
            elif entry.namespace == namespace:
                live.append((candidate, entry))
        if gone:
            self._spawn(self.index.apply(gone))
        if self.pair is None:
            hit, rejected = self._decide(query.prompt_text, vector, live)
        else:
            hit, rejected = await self._decide_with_pair(query.prompt_text, vector, live)
        if hit is not None:
            candidate, entry, verdict = hit
            self._spawn(self.store.touch([entry.entry_id], now))
            self.metrics.lookups.labels("semantic_hit").inc()
            return LookupResult(
                HitKind.SEMANTIC, entry, candidate.similarity,
                max(0.0, now - entry.created_at),
                verification_score=verdict.score, verification_reason=verdict.reason,
            )  # fmt: skip
        if rejected is not None:
            self.metrics.lookups.labels("rejected_by_verification").inc()
            return LookupResult(
                HitKind.MISS, rejected_by_verification=True,
                verification_score=rejected.score, verification_reason=rejected.reason,
            )  # fmt: skip
        self.metrics.lookups.labels("miss").inc()
        return MISS

    def _check(self, query: str, vector: np.ndarray, candidate: Candidate, entry: Entry) -> Verdict:
        stored = np.frombuffer(entry.vector, dtype=np.float32) if entry.vector else None
        return self.verifier.check(
            query, entry.prompt_text, candidate.similarity,
            query_vector=vector, candidate_vector=stored,
        )  # fmt: skip

    def _decide(
        self, query: str, vector: np.ndarray, live: list[tuple[Candidate, Entry]]
    ) -> tuple[Hit | None, Verdict | None]:
        """The floor, the rules and the vector score: the most similar accepted candidate."""
        rejected: Verdict | None = None
        for candidate, entry in live:
            verdict = self._check(query, vector, candidate, entry)
            if verdict.accepted:
                return (candidate, entry, verdict), None
            rejected = rejected or verdict
        return None, rejected

    async def _decide_with_pair(
        self, query: str, vector: np.ndarray, live: list[tuple[Candidate, Entry]]
    ) -> tuple[Hit | None, Verdict | None]:
        """The pair floor and the hard rules screen; the pair model decides (pair_verify)."""
        pair = self.pair
        assert pair is not None
        point = pair.point
        rejected: Verdict | None = None
        screened: list[tuple[Candidate, Entry, bool]] = []  # and: the vector score accepts
        for candidate, entry in live:
            if candidate.similarity < point.min_similarity:
                rejected = rejected or PairVerdict(False, 0.0, "below_min_similarity")
                continue
            refusal = pair.guard(query, entry.prompt_text)
            if refusal == "":  # the same text
                return (candidate, entry, PairVerdict(True, 1.0, "same_text")), None
            rule = self.verifier.screen(query, entry.prompt_text)
            if rule is not None:
                rejected = rejected or PairVerdict(False, 0.0, rule)
                continue
            if refusal is not None:
                self.metrics.pair_verifications.labels("refused").inc()
                rejected = rejected or PairVerdict(False, 0.0, refusal)
                continue
            vector_ok = (
                point.veto_threshold <= 1.0
                and self._check(query, vector, candidate, entry).accepted
            )
            screened.append((candidate, entry, vector_ok))
        screened = screened[: self.limits.pair_candidates]
        if not screened:
            return None, rejected
        started = time.perf_counter()
        scores = await pair.scores(query, [e.prompt_text for _, e, _ in screened])
        self.metrics.pair_verify_seconds.observe(time.perf_counter() - started)
        if scores is None:
            self.metrics.pair_verifications.labels("unavailable").inc()
            return None, PairVerdict(False, 0.0, "verifier_unavailable")
        for (candidate, entry, vector_ok), score in zip(screened, scores, strict=True):
            if score >= point.threshold or (vector_ok and score >= point.veto_threshold):
                self.metrics.pair_verifications.labels("accepted").inc()
                return (candidate, entry, PairVerdict(True, score, "ok")), None
        self.metrics.pair_verifications.labels("below_threshold").inc()
        return None, PairVerdict(False, max(scores), "below_pair_threshold")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Work the caller need not wait for (LRU touch, dropping stale vectors)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background_task_failed", error=str(task.exception()))

    # -- store ------------------------------------------------------------

    def _entry(self, command: StoreCommand, vector: np.ndarray | None, now: float) -> Entry:
        ttl = command.ttl_seconds or self.limits.default_ttl_s
        return Entry(
            entry_id=secrets.token_hex(12),
            namespace=command.namespace,
            exact_key=command.exact_key,
            prompt_text=command.prompt_text,
            vector=vector.tobytes() if vector is not None else b"",
            response=command.response,
            created_at=now,
            expires_at=now + ttl,
            upstream_seconds=max(0.0, float(command.upstream_seconds)),
        )

    async def store_entry(self, command: StoreCommand) -> tuple[str, int]:
        """Store a response; returns its entry id and how many entries were evicted."""
        self._ready()
        self._namespace(command.namespace)
        limits = self.limits
        self._size("exact_key", command.exact_key.encode(), limits.max_key_bytes)
        self._size("prompt_text", command.prompt_text.encode(), limits.max_prompt_bytes)
        self._size("response", command.response, limits.max_response_bytes)
        if not command.response:
            raise InvalidArgument("response is empty: nothing to cache")
        vector = self._vector(command.vector)
        if not command.exact_key and vector is None:
            raise InvalidArgument("an entry needs an exact_key, a vector, or both")
        entry = self._entry(command, vector, self._clock())
        result = await self.store.put(entry)
        changes: list[Change] = list(result.removed)
        if entry.vector:
            changes.append(Added(entry.entry_id, entry.namespace, entry.vector, entry.expires_at))
        await self.index.apply(changes)
        self.metrics.stores.inc()
        self.metrics.evictions.inc(result.evicted)
        return entry.entry_id, result.evicted

    # -- invalidate and stats --------------------------------------------------

    async def invalidate(self, target: InvalidateTarget) -> int:
        self._ready()
        if target.kind == "all":
            removed = await self.store.clear()
            await self.index.apply([Cleared()])
        elif target.kind == "entry" and target.entry_id:
            changes = await self.store.remove(target.entry_id)
            await self.index.apply(changes)
            removed = len(changes)
        elif target.kind == "exact" and target.exact_key:
            namespace = self._namespace(target.namespace)
            changes = await self.store.remove_exact(namespace, target.exact_key)
            await self.index.apply(changes)
            removed = len(changes)
        elif target.kind == "namespace":
            namespace = self._namespace(target.namespace)
            removed = await self.store.drop_namespace(namespace)
            await self.index.apply([NamespaceDropped(namespace)])
        else:
            raise InvalidArgument(
                "say what to invalidate: a non-empty entry_id, exact key, namespace, or all"
            )
        self.metrics.invalidated.labels(target.kind).inc(removed)
        log.info("invalidated", target=target.kind, removed=removed)
        return removed

    async def stats(self) -> CacheStats:
        entries = await self.store.count(self._clock())
        return CacheStats(entries, self.index.stats(), self.store.kind, self.state.lag_seconds)
