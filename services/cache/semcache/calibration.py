"""Per-embedding-backend calibration of the semantic cache's verification step.

The numbers below are fitted offline by `python -m bench.cache_quality --fit`
on the tuning half of the Quora question pairs and checked on the held-out half
(docs/cache-quality.md). They are constants on purpose: the lookup path does no
fitting, loads no file and needs no scikit-learn.

Cosines differ between backends (an int8-quantized model does not give the
torch model's cosines), so each backend has its own entry. A backend with no
entry gets the strictest of the known ones: a miss is cheap, a wrong hit is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Inputs of the logistic score, in order (computed by semcache.verify.features).
FEATURES = ("cosine", "unmatched_entities", "same_qword", "length_ratio")


@dataclass(frozen=True)
class Calibration:
    backend: str
    min_similarity: float  # candidates below this cosine are not even considered
    weights: tuple[float, ...]  # one per FEATURES entry
    bias: float
    score_threshold: float  # accept when the calibrated score is at least this

    def __post_init__(self) -> None:
        if len(self.weights) != len(FEATURES):
            raise ValueError(f"{len(self.weights)} weights for {len(FEATURES)} features")

    def score(self, values: tuple[float, ...]) -> float:
        """Probability-like score in [0, 1] that the two questions mean the same."""
        z = self.bias + sum(w * x for w, x in zip(self.weights, values, strict=True))
        if z < -60.0:
            return 0.0
        return 1.0 / (1.0 + math.exp(-z))


# Fitted by `python -m bench.cache_quality --backend torch --fit` on the tuning
# half of qqp_dev.jsonl (32,277 pairs); held-out: precision 0.881 at recall 0.265.
TORCH = Calibration(
    backend="torch",
    min_similarity=0.92,
    weights=(8.3566, -0.6685, 0.0836, 0.0836),
    bias=-6.5643,
    score_threshold=0.7966,
)

# Same recipe on the embedder's int8 ONNX backend: for pairs above 0.9 its cosines
# run 0.008 below torch's on average (0.023 at the 99th percentile), so torch's
# numbers would lose it recall. Held-out: precision 0.880 at recall 0.264.
ONNX_INT8 = Calibration(
    backend="onnx-int8",
    min_similarity=0.92,
    weights=(8.3073, -0.6646, 0.0415, 0.0),
    bias=-6.3603,
    score_threshold=0.7958,
)

CALIBRATIONS = {c.backend: c for c in (TORCH, ONNX_INT8)}
DEFAULT_BACKEND = "onnx-int8"


def _strictest(backend: str) -> Calibration:
    """An entry for an unknown backend that is at least as strict as every known one."""
    known = list(CALIBRATIONS.values())
    base = max(known, key=lambda c: c.score_threshold)
    return Calibration(
        backend=backend,
        min_similarity=max(c.min_similarity for c in known),
        weights=base.weights,
        bias=base.bias,
        score_threshold=max(c.score_threshold for c in known),
    )


def calibration_for(backend: str) -> Calibration:
    """The shipped calibration for `backend` ("onnx-int8", "torch"); strictest if unknown."""
    return CALIBRATIONS.get(backend) or _strictest(backend)
