"""The cache's vocabulary: entries, the changes replicas apply to their index, results.

Vectors travel and rest as float32 bytes (little-endian, ``dim * 4`` bytes, unit
norm): the compact encoding Redis stores and the stream carries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

import numpy as np


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached response, as the store holds it."""

    entry_id: str
    namespace: str
    exact_key: str  # "" for a semantic-only entry
    prompt_text: str
    vector: bytes  # float32 unit vector; b"" for an exact-only entry
    response: bytes
    created_at: float  # unix seconds
    expires_at: float  # unix seconds
    upstream_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Added:
    """A vector enters a namespace's index."""

    entry_id: str
    namespace: str
    vector: bytes
    expires_at: float


@dataclass(frozen=True, slots=True)
class Removed:
    entry_id: str
    namespace: str


@dataclass(frozen=True, slots=True)
class NamespaceDropped:
    namespace: str


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


Change = Added | Removed | NamespaceDropped | Cleared


@dataclass(frozen=True, slots=True)
class PutResult:
    removed: list[Removed]  # the entry it replaced (same exact key) and evicted ones
    evicted: int


@dataclass(frozen=True, slots=True)
class Candidate:
    """A vector-search result, before the store and the verifier have seen it."""

    entry_id: str
    similarity: float


class HitKind(Enum):
    MISS = "miss"
    EXACT = "exact"
    SEMANTIC = "semantic"


@dataclass(frozen=True, slots=True)
class LookupResult:
    kind: HitKind
    entry: Entry | None = None
    similarity: float = 0.0
    age_seconds: float = 0.0
    rejected_by_verification: bool = False
    verification_score: float = 0.0
    verification_reason: str = ""


MISS = LookupResult(HitKind.MISS)


def as_unit_vector(values: np.ndarray) -> np.ndarray | None:
    """``values`` as a float32 unit vector, or None when it has no direction."""
    vector = np.asarray(values, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return vector / np.float32(norm)


def key_digest(*parts: str) -> str:
    """A short, fixed-length name for a namespace (and key): safe inside Redis key names."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part.encode()).to_bytes(4, "little"))
        digest.update(part.encode())
    return digest.hexdigest()
