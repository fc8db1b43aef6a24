"""The Quora question pairs the quality benchmarks share: loaded and split in two
halves by a hash of their text, embedded once per backend (cached under .cache/),
the verifier's lexical view of each pair, and the precision/recall arithmetic."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcache.calibration import FEATURES, Calibration, VectorScore
from semcache.verify import Verifier, analyse, features, hard_rule

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("/work/shared/data/qqp_dev.jsonl")
CACHE_DIR = ROOT / ".cache"
BACKENDS = ("torch", "onnx-int8")

Encode = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Pairs:
    text_a: list[str]
    text_b: list[str]
    label: np.ndarray  # 1 = same meaning
    held_out: np.ndarray  # bool: the evaluation half

    def half(self, mask: np.ndarray) -> Pairs:
        idx = np.flatnonzero(mask)
        return Pairs(
            [self.text_a[i] for i in idx],
            [self.text_b[i] for i in idx],
            self.label[idx],
            self.held_out[idx],
        )


def load_pairs(path: Path = DATA) -> Pairs:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    a, b = [r["text_a"] for r in rows], [r["text_b"] for r in rows]
    digest = [hashlib.sha256(f"{x}\0{y}".encode()).digest()[0] for x, y in zip(a, b, strict=True)]
    return Pairs(
        text_a=a,
        text_b=b,
        label=np.array([int(r["label"]) for r in rows], dtype=np.int8),
        held_out=np.array([d % 2 == 1 for d in digest]),
    )


def encoder(backend: str) -> Encode:
    """The embedder service's own backend class, so the bench sees the cosines it serves."""
    from embedder.model import load_model
    from embedder.settings import EmbedderSettings

    model = load_model(EmbedderSettings(backend=backend))

    def encode(texts: list[str], batch: int = 64) -> np.ndarray:
        tokens = model.tokenize(texts)
        order = np.argsort([len(t.ids) for t in tokens], kind="stable")  # pad little
        out = np.zeros((len(texts), model.info.dimension), dtype=np.float32)
        for i in range(0, len(order), batch):
            rows = order[i : i + batch]
            out[rows] = model.embed([tokens[r] for r in rows])
        return out

    return encode


def embeddings(backend: str, name: str, texts: list[str], chunk: int = 4096) -> np.ndarray:
    """Unit vectors of `texts`, computed once and cached as .cache/<name>-<backend>.npy."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path, meta = CACHE_DIR / f"{name}-{backend}.npy", CACHE_DIR / f"{name}-{backend}.json"
    if path.exists() and meta.exists() and json.loads(meta.read_text())["texts"] == digest:
        return np.load(path)
    CACHE_DIR.mkdir(exist_ok=True)
    encode, parts, start = encoder(backend), [], time.monotonic()
    for i in range(0, len(texts), chunk):
        parts.append(encode(texts[i : i + chunk]))
        took = time.monotonic() - start
        print(f"  embedded {i + len(parts[-1])}/{len(texts)} in {took:.0f}s", file=sys.stderr)
    vectors = np.concatenate(parts)
    np.save(path, vectors)
    meta.write_text(json.dumps({"texts": digest, "count": len(texts)}))
    return vectors


def pair_vectors(
    backend: str, name: str, a: list[str], b: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The unit vectors of both sides of each pair (`name` keys the embedding cache)."""
    texts = sorted(set(a) | set(b))
    vectors = embeddings(backend, name, texts)
    row = {t: i for i, t in enumerate(texts)}
    return vectors[[row[t] for t in a]], vectors[[row[t] for t in b]]


def cosines(backend: str, name: str, a: list[str], b: list[str]) -> np.ndarray:
    va, vb = pair_vectors(backend, name, a, b)
    return np.einsum("ij,ij->i", va, vb).astype(np.float64)


@dataclass(frozen=True)
class Lexical:
    """The verifier's view of every pair, computed once (cosine left out)."""

    passes_rules: np.ndarray  # bool
    reasons: list[str]
    values: np.ndarray  # (n, len(FEATURES)), cosine column filled by `with_cosine`


def lexical(pairs: Pairs) -> Lexical:
    reasons, rows = [], []
    for x, y in zip(pairs.text_a, pairs.text_b, strict=True):
        a, b = analyse(x), analyse(y)
        reasons.append(hard_rule(a, b) or "ok")
        rows.append(features(a, b, 0.0))
    passes = np.array([r == "ok" for r in reasons])
    return Lexical(passes, reasons, np.array(rows, dtype=np.float64))


def with_cosine(lex: Lexical, cos: np.ndarray) -> np.ndarray:
    values = lex.values.copy()
    values[:, FEATURES.index("cosine")] = cos
    return values


def ranked(score: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores from best to worst and the true hits among the first k, for every k."""
    order = np.argsort(-score, kind="stable")
    return score[order], np.cumsum(label[order] == 1)


def precision_at(score: np.ndarray, label: np.ndarray, recall: float) -> float:
    """Precision of the best-scored hits that reach `recall` (nan when out of reach)."""
    top, tp = ranked(score, label)
    k = int(np.searchsorted(tp, recall * int((label == 1).sum())))
    return float(tp[k] / (k + 1)) if k < len(top) and np.isfinite(top[k]) else float("nan")


def threshold_at(score: np.ndarray, label: np.ndarray, recall: float) -> float:
    """The score that lets in just enough hits to reach `recall`."""
    top, tp = ranked(score, label)
    k = int(np.searchsorted(tp, recall * int((label == 1).sum())))
    return float(top[min(k, len(top) - 1)])


def vector_scores(
    score: VectorScore, u: np.ndarray, v: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """VectorScore.score over many pairs at once (the same arithmetic, vectorised)."""
    product, difference = score.metric.astype(np.float64)
    z = (u * v) @ product + np.abs(u - v) @ difference + values @ np.array(score.weights)
    return 1.0 / (1.0 + np.exp(-np.clip(score.bias + z, -60.0, 60.0)))


@dataclass(frozen=True)
class Half:
    """One half of the pairs with what every rule needs: vectors, cosines, rules, features."""

    pairs: Pairs
    u: np.ndarray
    v: np.ndarray
    cos: np.ndarray
    lex: Lexical
    values: np.ndarray  # FEATURES with the cosine

    @staticmethod
    def of(pairs: Pairs, mask: np.ndarray, u: np.ndarray, v: np.ndarray) -> Half:
        cos = np.einsum("ij,ij->i", u[mask], v[mask]).astype(np.float64)
        half, lex = pairs.half(mask), lexical(pairs.half(mask))
        return Half(half, u[mask], v[mask], cos, lex, with_cosine(lex, cos))

    def reasons(self, cal: Calibration, vectors: bool) -> np.ndarray:
        """The shipped verifier's reason for each pair, with or without the vectors."""
        verifier, p = Verifier(cal), self.pairs
        rows = zip(p.text_a, p.text_b, self.cos, self.u, self.v, strict=True)
        if not vectors:
            return np.array([verifier.check(x, y, float(c)).reason for x, y, c, _, _ in rows])
        return np.array([verifier.check(x, y, float(c), a, b).reason for x, y, c, a, b in rows])

    def rankings(self, cal: Calibration) -> dict[str, np.ndarray]:
        """Each rule's score at every cosine (not only above the floors); -inf = refused."""
        ruled, vector = self.lex.passes_rules, cal.vector
        text = np.array([cal.text.score(v) for v in self.values])
        out = {"cosine": self.cos, "cosine + rules": np.where(ruled, self.cos, -np.inf)}
        out["text score"] = np.where(ruled, text, -np.inf)
        if vector is not None:
            out["vector score"] = np.where(
                ruled, vector_scores(vector, self.u, self.v, self.values), -np.inf
            )
        return out


def unseen(pairs: Pairs) -> np.ndarray:
    """Held-out pairs neither of whose questions appears in the tuning half."""
    tuned = {t for i in np.flatnonzero(~pairs.held_out) for t in (pairs.text_a[i], pairs.text_b[i])}
    return np.array(
        [a not in tuned and b not in tuned for a, b in zip(pairs.text_a, pairs.text_b, strict=True)]
    )
