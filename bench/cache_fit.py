"""Fit the cache verifier's two scores on the tuning half of the Quora pairs only.

    python -m bench.cache_fit --backend onnx-int8 [--write]   # the vector score
    python -m bench.cache_fit --backend onnx-int8 --text      # the text score

The vector score is a logistic regression over u*v and |u-v| (one weight per
embedding dimension each) and the cosine, as Sentence-BERT's classification
head but over the frozen encoder: it re-weights the embedding's dimensions, a
learned metric. Its L2 strength is chosen by 5-fold cross-validation within the
tuning half, folds grouped by connected questions so that no question sits on
both sides of a fold. On top come the verifier's cheap features with signs
fixed by meaning, then Platt scaling, the threshold and the cosine floor.
--write saves the weight vectors as semcache/metric_<backend>.npy.

The text score (used when the cache has no vectors to give) is a coordinate
search over the cheap features with the cosine, signs fixed the same way.

Both print the constants for semcache/calibration.py. Measure the result with
`python -m bench.cache_quality --backend <name>`: every table is held-out.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from bench.qqp import (
    BACKENDS,
    Pairs,
    lexical,
    load_pairs,
    pair_vectors,
    precision_at,
    threshold_at,
    vector_scores,
    with_cosine,
)
from semcache.calibration import FEATURES, HERE, TextScore, VectorScore

FIT_FLOOR = 0.80  # pairs below this cosine are not used to fit either score
RECALLS = (0.25, 0.30)  # the fits maximise the mean tuning precision at these recalls
RECALL_TARGET = 0.26  # the shipped threshold lets in this much of the tuning recall
C_GRID = (0.0001, 0.0003, 0.001, 0.003)  # inverse L2 strength, on standardised inputs
# Weights of the cheap features. Signs are fixed by meaning, not by what the data
# set rewards (on QQP, looking alike at a given cosine predicts "different"):
# agreement may only raise the score, disagreement only lower it.
TEXT_GRID = {  # in cosine units
    "unmatched_entities": (0.0, -0.005, -0.01, -0.02, -0.03, -0.05, -0.08),
    "same_qword": (0.0, 0.005, 0.01, 0.02, 0.03),
    "length_ratio": (0.0, 0.005, 0.01, 0.02, 0.03),
}
VECTOR_GRID = {  # in logit units, on top of the metric
    "unmatched_entities": (0.0, -0.25, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0),
    "same_qword": (0.0, 0.1, 0.25, 0.5, 1.0),
    "length_ratio": (0.0, 0.25, 0.5, 1.0, 2.0),
}


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-6, steps: int = 50) -> np.ndarray:
    """Weights [bias, w...] of a logistic regression by Newton's method (IRLS)."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xb.shape[1])
    ridge = l2 * len(x) * np.eye(xb.shape[1])
    ridge[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + ridge @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + ridge
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def search_weights(
    base: np.ndarray, values: np.ndarray, label: np.ndarray, grid: dict[str, tuple[float, ...]]
) -> np.ndarray:
    """Weights of `values` (cosine's stays 0) added to `base` with the best precision at RECALLS."""
    w = np.zeros(len(FEATURES))

    def objective(w: np.ndarray) -> float:
        return float(np.mean([precision_at(base + values @ w, label, r) for r in RECALLS]))

    best = objective(w)
    for _ in range(2):  # coordinate search; a second pass rarely moves
        for name, steps in grid.items():
            for value in steps:
                trial = w.copy()
                trial[FEATURES.index(name)] = value
                if (found := objective(trial)) > best + 1e-5:
                    best, w = found, trial
    return w


def fit_text(tune: Pairs, cos: np.ndarray) -> TextScore:
    """Weights, threshold and cosine floor of the text score (at RECALL_TARGET)."""
    lex = lexical(tune)
    values, label = with_cosine(lex, cos), tune.label
    pool = lex.passes_rules & (cos >= FIT_FLOOR)
    w = search_weights(np.where(pool, cos, -np.inf), values, label, TEXT_GRID)
    w[FEATURES.index("cosine")] = 1.0
    bias, slope = fit_logistic((values[pool] @ w)[:, None], label[pool].astype(np.float64))
    weights = tuple(round(float(slope * x), 4) for x in w)
    text = TextScore(FIT_FLOOR, weights, round(float(bias), 4), 0.5)
    score = np.where(pool, [text.score(v) for v in values], -np.inf)
    threshold = round(threshold_at(score, label, RECALL_TARGET), 4)
    # The lowest cosine that can still reach the threshold: nothing below is worth a check.
    logit = math.log(threshold / (1 - threshold))
    boost = sum(max(x, 0.0) for n, x in zip(FEATURES, weights, strict=True) if n != "cosine")
    floor = (logit - text.bias - boost) / weights[FEATURES.index("cosine")]
    return TextScore(math.floor(floor * 100) / 100, weights, text.bias, threshold)


def question_groups(pairs: Pairs) -> np.ndarray:
    """For each pair, the id of its connected set of questions (pairs sharing one)."""
    ids: dict[str, int] = {}
    a = np.array([ids.setdefault(t, len(ids)) for t in pairs.text_a])
    b = np.array([ids.setdefault(t, len(ids)) for t in pairs.text_b])
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(ids), len(ids)))
    return np.asarray(connected_components(graph, directed=False)[1])[a]


def _logistic(x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=5000).fit(x, y)


def choose_c(x: np.ndarray, label: np.ndarray, pool: np.ndarray, groups: np.ndarray) -> float:
    """The L2 strength with the best cross-validated precision at RECALLS."""
    found = {}
    for c in C_GRID:
        scores = []
        for fit_idx, val_idx in GroupKFold(5).split(x, groups=groups):
            fit_idx = fit_idx[pool[fit_idx]]
            model = _logistic(x[fit_idx], label[fit_idx], c)
            score = np.where(pool[val_idx], model.decision_function(x[val_idx]), -np.inf)
            scores += [precision_at(score, label[val_idx], r) for r in RECALLS]
        found[c] = float(np.mean(scores))
        print(f"  C={c:g}: cross-validated precision at recall {RECALLS} = {found[c]:.4f}")
    return max(found, key=lambda c: found[c])


def fit_vector(tune: Pairs, u: np.ndarray, v: np.ndarray) -> VectorScore:
    """The metric, the cheap features on top, Platt scaling, threshold and floor."""
    cos = np.einsum("ij,ij->i", u, v).astype(np.float64)
    lex = lexical(tune)
    values, label = with_cosine(lex, cos), tune.label.astype(np.float64)
    pool = lex.passes_rules & (cos >= FIT_FLOOR)
    x = np.hstack([u * v, np.abs(u - v), cos[:, None]]).astype(np.float64)
    mean, std = x[pool].mean(0), x[pool].std(0) + 1e-9
    xs = (x - mean) / std
    c = choose_c(xs, label, pool, question_groups(tune))
    model = _logistic(xs[pool], label[pool], c)
    raw = model.coef_[0] / std  # the weights of the unstandardised inputs
    bias = float(model.intercept_[0] - raw @ mean)
    cheap = search_weights(np.where(pool, x @ raw + bias, -np.inf), values, label, VECTOR_GRID)
    print(f"  C={c:g}; cheap features (logit units): {dict(zip(FEATURES, cheap, strict=True))}")
    intercept, slope = fit_logistic((x @ raw + bias + values @ cheap)[pool][:, None], label[pool])
    dim = u.shape[1]
    weights = slope * cheap
    weights[FEATURES.index("cosine")] += slope * raw[2 * dim]
    score = VectorScore(
        FIT_FLOOR,
        tuple(round(float(w), 4) for w in weights),
        round(float(slope * bias + intercept), 4),
        0.5,
        (slope * raw[: 2 * dim]).reshape(2, dim).astype(np.float32),
    )
    return _with_threshold(score, u, v, values, pool, label)


def _with_threshold(
    score: VectorScore,
    u: np.ndarray,
    v: np.ndarray,
    values: np.ndarray,
    pool: np.ndarray,
    label: np.ndarray,
) -> VectorScore:
    """The threshold at RECALL_TARGET of the tuning recall, and a floor that loses none of it."""
    scores = np.where(pool, vector_scores(score, u, v, values), -np.inf)
    threshold = round(threshold_at(scores, label, RECALL_TARGET), 4)
    lowest = float(values[scores >= threshold, FEATURES.index("cosine")].min())
    for target in (0.95, 0.94, 0.93):
        reach = [r for r in np.arange(0.01, 0.40, 0.01) if precision_at(scores, label, r) >= target]
        print(f"  tuning recall at {target:.0%} tuning precision: {max(reach, default=0.0):.2f}")
    print(f"  threshold {threshold}; lowest accepted tuning cosine {lowest:.4f}")
    floor = max(FIT_FLOOR, math.floor(lowest * 100) / 100)
    return VectorScore(floor, score.weights, score.bias, threshold, score.metric)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, default="onnx-int8")
    parser.add_argument("--text", action="store_true", help="fit the text score instead")
    parser.add_argument("--write", action="store_true", help="save semcache/metric_<backend>.npy")
    args = parser.parse_args()
    pairs = load_pairs()
    # Every pair's vectors, as the report embeds them: the cache is keyed by the text set.
    u, v = pair_vectors(args.backend, "qqp", pairs.text_a, pairs.text_b)
    tune = ~pairs.held_out
    if args.text:
        cos = np.einsum("ij,ij->i", u[tune], v[tune]).astype(np.float64)
        print(
            f'Ship in semcache/calibration.py TEXT:\n    "{args.backend}": '
            f"{fit_text(pairs.half(tune), cos)!r},"
        )
        return
    score = fit_vector(pairs.half(tune), u[tune], v[tune])
    print(
        f'Ship in semcache/calibration.py VECTOR:\n    "{args.backend}": ({score.min_similarity}, '
        f"{score.weights}, {score.bias}, {score.score_threshold}),"
    )
    if args.write:
        path = HERE / f"metric_{args.backend}.npy"
        np.save(path, score.metric)
        print(f"wrote {path} ({score.metric.size} float32)")


if __name__ == "__main__":
    main()
