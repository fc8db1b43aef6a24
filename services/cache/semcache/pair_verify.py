"""The third stage of verification: the pair model decides, bounded, failing to a miss.

After the cosine floor and the hard rules (semcache.verify), the best
candidates go to the cross-encoder (semcache.pair_model) in one batch per
lookup. A candidate is a hit when the model scores it at or above the
threshold calibrated for the configured target precision
(`verifier_model/calibration.json`, set by `bench/train_verifier.py` on a
slice of the tuning half of the Quora pairs that training never saw, per
embedding backend).

Opt-in veto mode (`veto_threshold`, off by default): a candidate the
calibrated score of semcache.verify accepts is also a hit when the model
scores it at least `veto_threshold` (the model then only vetoes what it reads
as different). More recall, and less safety: see docs/cache-quality.md.

What the model cannot judge is refused before it runs, unless both texts are
the same after trimming and case-folding (`guard`): an empty question, a pair
longer than the model's window (it would only see the beginnings), word
pieces the vocabulary does not know ([UNK]: emoji, most non-Latin scripts),
letters outside ASCII (other languages) and code.

Under load it is bounded, not queued without end: the model runs in its own
small thread pool, at most `max_pending` calls may be in flight, and a lookup
waits at most `timeout_s`. Busy, late or failing: a miss, never an error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from llmgw_common.logs import get_logger

log = get_logger(__name__)

_CODE = re.compile(r"```|^\s{4}\S|[{};]\s*$|\b(def|class|import|return|function)\b.*[(:{]", re.M)
_SYMBOLS = frozenset("{}[]()<>=;$\\|`~^")


class PairScorer(Protocol):
    def scores(self, query: str, candidates: Sequence[str]) -> list[float]: ...

    def unjudgeable(self, a: str, b: str) -> str | None: ...


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def text_guard(a: str, b: str) -> str | None:
    """Why the model may not judge this pair from the characters alone, or None."""
    for text in (a, b):
        if not text.strip():
            return "empty_text"
        if any(ord(c) > 127 and c.isalpha() for c in text):
            return "non_ascii_letters"
        symbols = sum(1 for c in text if c in _SYMBOLS)
        if _CODE.search(text) or symbols > max(3, len(text) // 20):
            return "code"
    return None


@dataclass(frozen=True)
class PairVerdict:
    accepted: bool
    score: float
    reason: str


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float  # the model alone accepts at or above this
    target_precision: float
    backend: str
    min_similarity: float
    # Opt-in (CACHE_VERIFIER_VETO_THRESHOLD): a candidate the calibrated score
    # accepts is also served when the model scores it at least this. Above 1: off.
    veto_threshold: float = 2.0


def operating_point(
    calibration_json: Path,
    backend: str,
    target_precision: float,
    threshold: float = 0.0,
    veto_threshold: float = 0.0,
) -> OperatingPoint:
    """The shipped threshold for `target_precision` on `backend`'s vectors.

    A backend with no entry gets the strictest threshold any backend has for
    that precision; an explicit `threshold` (> 0) overrides the file.
    """
    cal = json.loads(calibration_json.read_text())
    key = f"{target_precision:.2f}"
    entries = {k: v for k, v in cal.items() if isinstance(v, dict) and "thresholds" in v}
    if not entries or not all(key in v["thresholds"] for v in entries.values()):
        raise ValueError(f"{calibration_json} has no threshold for precision {key}")
    if backend in entries:
        chosen = entries[backend]
        value, floor = chosen["thresholds"][key]["threshold"], chosen["min_similarity"]
    else:
        value = max(v["thresholds"][key]["threshold"] for v in entries.values())
        floor = max(v["min_similarity"] for v in entries.values())
    veto = veto_threshold or 2.0
    return OperatingPoint(threshold or float(value), target_precision, backend, float(floor), veto)


class PairVerifier:
    """Scores a query against its candidates; None when it cannot say (a miss)."""

    def __init__(
        self,
        scorer: PairScorer,
        point: OperatingPoint,
        *,
        timeout_s: float = 0.05,
        max_pending: int = 8,
        threads: int = 1,
    ) -> None:
        self.scorer = scorer
        self.point = point
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._pending = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, "pair-verifier")

    def guard(self, query: str, candidate: str) -> str | None:
        """Why this pair is refused without the model ("" = the same text: accept)."""
        if not query.strip() or not candidate.strip():
            return "empty_text"
        if _same(query, candidate):
            return ""
        return text_guard(query, candidate) or self.scorer.unjudgeable(query, candidate)

    async def scores(self, query: str, candidates: Sequence[str]) -> list[float] | None:
        """P(same meaning) for each candidate; None if busy, late or failing."""
        if self._pending >= self.max_pending:
            return None
        self._pending += 1
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._pool, self.scorer.scores, query, list(candidates))
        except RuntimeError:  # the pool is shut down
            self._pending -= 1
            return None
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except TimeoutError:
            log.warning("pair_verifier_timeout", timeout_s=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - a model that fails is a miss, never an error
            log.warning("pair_verifier_failed", error=repr(exc))
        return None

    def _done(self, _future: asyncio.Future[list[float]]) -> None:
        self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
