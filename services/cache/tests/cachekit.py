"""Helpers of the cache service's tests: vectors, a fake verifier, a fake clock, settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semcache.settings import CacheSettings

DIM = 16


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, similarity: float, seed: int = 99) -> np.ndarray:
    """A unit vector at exactly ``similarity`` cosine from unit vector ``v``."""
    noise = np.random.default_rng(10_000 + seed).standard_normal(len(v)).astype(np.float32)
    noise -= noise.dot(v) * v
    noise /= np.linalg.norm(noise)
    out = similarity * v + np.sqrt(1 - similarity**2) * noise
    return (out / np.linalg.norm(out)).astype(np.float32)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    score: float
    reason: str


class FakeVerifier:
    """Accepts everything at or above ``floor`` unless the cached prompt says REJECT."""

    def __init__(self, floor: float = 0.8) -> None:
        self.floor = floor
        self.calls: list[tuple[str, str, float]] = []

    def check(
        self,
        query: str,
        candidate: str,
        similarity: float,
        query_vector: object = None,
        candidate_vector: object = None,
    ) -> Verdict:
        self.calls.append((query, candidate, similarity))
        if similarity < self.floor:
            return Verdict(False, 0.0, "below_min_similarity")
        if "REJECT" in candidate:
            return Verdict(False, 0.1, "fake_rejection")
        return Verdict(True, 0.9, "ok")

    def screen(self, query: str, candidate: str) -> str | None:
        return "fake_rejection" if "REJECT" in candidate else None


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings(**overrides: object) -> CacheSettings:
    base: dict[str, object] = {"port": 0, "metrics_port": 0, "host": "127.0.0.1", "dim": DIM}
    base.update(overrides)
    return CacheSettings(**base)  # type: ignore[arg-type]
