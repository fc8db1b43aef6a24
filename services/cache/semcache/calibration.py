"""Per-embedding-backend calibration of the semantic cache's verification step.

Two scores, both fitted offline on the tuning half of the Quora question pairs
and checked on the held-out half (docs/cache-quality.md):

- `TextScore`, a logistic function of the cosine and three cheap features of
  the two texts; used when the caller passes no vectors.
- `VectorScore`, a learned similarity over the two unit vectors themselves
  (a weight per dimension of u*v and of |u-v|, as in Sentence-BERT's
  classification head but over the frozen encoder) plus the same cheap
  features; used when the caller passes both vectors. Fitted by
  `python -m bench.cache_fit --backend <name> --write`; its two weight vectors ship
  as `metric_<backend>.npy` beside this module, read once per backend.

The lookup path does no fitting and needs no scikit-learn. Cosines and vectors
differ between backends (an int8-quantized model does not give the torch
model's cosines), so each backend has its own entry. A backend with no entry
gets the strictest known text score and no vector score: a miss is cheap, a
wrong hit is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

# Inputs of both logistic scores, in order (computed by semcache.verify.features).
FEATURES = ("cosine", "unmatched_entities", "same_qword", "length_ratio")
HERE = Path(__file__).resolve().parent


def _sigmoid(z: float) -> float:
    if z < -60.0:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True)
class TextScore:
    """sigmoid(bias + weights . features): what two texts and their cosine say."""

    min_similarity: float  # candidates below this cosine are not even considered
    weights: tuple[float, ...]  # one per FEATURES entry
    bias: float
    score_threshold: float  # accept when the score is at least this

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"{len(self.weights)} weights for {len(FEATURES)} features")

    def score(self, values: Sequence[float]) -> float:
        """Probability-like score in [0, 1] that the two questions mean the same."""
        return _sigmoid(self.bias + sum(w * x for w, x in zip(self.weights, values, strict=True)))


@dataclass(frozen=True)
class VectorScore:
    """sigmoid(bias + product . u*v + difference . |u-v| + weights . features)."""

    min_similarity: float
    weights: tuple[float, ...]  # one per FEATURES entry
    bias: float
    score_threshold: float
    # (2, dim): the weights of u*v and of |u-v|, one per embedding dimension.
    metric: np.ndarray = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"{len(self.weights)} weights for {len(FEATURES)} features")
        if self.metric.ndim != 2 or self.metric.shape[0] != 2:
            raise ValueError(f"metric of shape {self.metric.shape}, expected (2, dim)")

    @property
    def dim(self) -> int:
        return int(self.metric.shape[1])

    def score(self, u: np.ndarray, v: np.ndarray, values: Sequence[float]) -> float:
        """Probability-like score that unit vectors `u` and `v` are the same question."""
        if u.shape != (self.dim,) or v.shape != (self.dim,):
            raise ValueError(f"vectors of shape {u.shape}, {v.shape} for a metric of {self.dim}")
        product, difference = self.metric
        z = float(product @ (u * v)) + float(difference @ np.abs(u - v))
        z += sum(w * x for w, x in zip(self.weights, values, strict=True))
        return _sigmoid(self.bias + z)


def load_metric(backend: str, directory: Path = HERE) -> np.ndarray:
    """The (2, dim) float32 weights shipped as `metric_<backend>.npy`."""
    metric = np.load(directory / f"metric_{backend}.npy", allow_pickle=False)
    return np.ascontiguousarray(metric, dtype=np.float32)


@dataclass(frozen=True)
class Calibration:
    backend: str
    text: TextScore
    vector: VectorScore | None = None  # None: this backend's vectors have no learned metric

    @property
    def min_similarity(self) -> float:
        """The search floor: the lowest cosine either score may accept."""
        floors = [self.text.min_similarity]
        if self.vector is not None:
            floors.append(self.vector.min_similarity)
        return min(floors)


# Fitted by `python -m bench.cache_fit --backend <name> --text` on the tuning
# half of qqp_dev.jsonl (32,277 pairs). Held-out: torch 0.881 precision at 0.265
# recall, onnx-int8 0.880 at 0.264.
TEXT = {
    "torch": TextScore(0.92, (8.3566, -0.6685, 0.0836, 0.0836), -6.5643, 0.7966),
    "onnx-int8": TextScore(0.92, (8.3073, -0.6646, 0.0415, 0.0), -6.3603, 0.7958),
}

# Fitted by `python -m bench.cache_fit --backend <name> --write` on the same
# tuning half; the weight vectors are in metric_<backend>.npy. Held-out: torch
# 0.903 precision at 0.255 recall, onnx-int8 0.899 at 0.252 (docs/cache-quality.md).
VECTOR: dict[str, tuple[float, tuple[float, ...], float, float]] = {
    # backend: (min_similarity, weights of FEATURES, bias, score_threshold)
    "torch": (0.8, (0.1454, -1.2001, 0.0, 0.0), 2.2168, 0.8055),
    "onnx-int8": (0.8, (0.1521, -1.1665, 0.0, 0.1458), 2.1678, 0.8051),
}

DEFAULT_BACKEND = "onnx-int8"


def _strictest(backend: str) -> Calibration:
    """An entry for an unknown backend that is at least as strict as every known one."""
    known = list(TEXT.values())
    base = max(known, key=lambda t: t.score_threshold)
    text = TextScore(
        min_similarity=max(t.min_similarity for t in known),
        weights=base.weights,
        bias=base.bias,
        score_threshold=max(t.score_threshold for t in known),
    )
    return Calibration(backend, text)


@cache
def calibration_for(backend: str) -> Calibration:
    """The shipped calibration for `backend` ("onnx-int8", "torch"); strictest if unknown."""
    if backend not in TEXT:
        return _strictest(backend)
    vector = None
    if backend in VECTOR:
        floor, weights, bias, threshold = VECTOR[backend]
        vector = VectorScore(floor, weights, bias, threshold, load_metric(backend))
    return Calibration(backend, TEXT[backend], vector)
