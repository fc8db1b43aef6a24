"""Semantic cache matching quality on Quora question pairs, held-out half only.

    python -m bench.cache_quality [--backend onnx-int8|torch] [--audit N]

A pair (query, cached question) is a hit when the rule accepts it; a hit on a
pair labelled 0 is a wrong answer served. Pairs are split in two by a hash of
their text: the tuning half is only used by `bench.cache_fit` (which prints the
constants to ship in semcache/calibration.py); every table here is measured on
the held-out half, for cosine thresholds, the text score (no vectors) and the
vector score (the learned metric), through the shipped `Verifier` itself, and
then for the pair verifier (the cross-encoder after the rules; its tables,
adversarial sets and hand-written sets are in `bench.train_verifier_report`).
Embeddings are computed once per backend and cached under .cache/.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable

import numpy as np

from bench.qqp import (
    BACKENDS,
    Half,
    Pairs,
    load_pairs,
    pair_vectors,
    precision_at,
    threshold_at,
    unseen,
    vector_scores,
)
from semcache.calibration import Calibration, VectorScore, calibration_for
from semcache.verify import STOPWORDS

RECALL_TARGET = 0.26  # the shipped thresholds let in this much of the tuning recall


def row(name: str, accepted: np.ndarray, label: np.ndarray) -> str:
    hits, tp = int(accepted.sum()), int((accepted & (label == 1)).sum())
    precision = tp / hits if hits else float("nan")
    recall = tp / int((label == 1).sum())
    return f"| {name:<40} | {precision:9.3f} | {recall:6.3f} | {hits:5d} | {hits - tp:5d} |"


HEADER = f"| {'rule':<40} | precision | recall |  hits | wrong |\n|{'-' * 42}|{'-' * 11}|" + (
    f"{'-' * 8}|{'-' * 7}|{'-' * 7}|"
)


def report(held: Half, tune: Half, cal: Calibration, fresh: np.ndarray) -> dict[str, np.ndarray]:
    """Print the held-out tables; return the verifier's reasons, text and vector paths."""
    label, c, ruled = held.pairs.label, held.cos, held.lex.passes_rules
    cos_cut = threshold_at(tune.cos, tune.pairs.label, RECALL_TARGET)
    reasons = {"text": held.reasons(cal, vectors=False)}
    print(f"\nHeld-out pairs: {len(label)}, {int(label.sum())} labelled duplicates")
    print(HEADER)
    for cut in (0.90, 0.95):
        print(row(f"cosine >= {cut:.2f}", c >= cut, label))
    print(row(f"cosine >= {cos_cut:.3f} (same tuning recall)", c >= cos_cut, label))
    print(row(f"cosine >= {cos_cut:.3f} + hard rules", ruled & (c >= cos_cut), label))
    print(row("previous verification (text score)", reasons["text"] == "ok", label))
    if cal.vector is not None:
        reasons["vector"] = held.reasons(cal, vectors=True)
        print(row("verification with the learned metric", reasons["vector"] == "ok", label))
    recall_table(held, cal, fresh)
    if cal.vector is not None:
        operating_points(held, tune, cal.vector)
    print("\nWhy held-out pairs at or above the floor were refused (duplicates / others):")
    final = reasons.get("vector", reasons["text"])
    for reason in sorted(set(final.tolist()) - {"ok", "below_min_similarity"}):
        mask = final == reason
        pos, neg = int((mask & (label == 1)).sum()), int((mask & (label == 0)).sum())
        print(f"  {reason:<20} {pos:6d} / {neg:6d}")
    return reasons


def recall_table(held: Half, cal: Calibration, fresh: np.ndarray) -> None:
    """Precision of each rule's best pairs at a given recall; the same on unseen questions."""
    label, ranks = held.pairs.label, held.rankings(cal)
    print("\nPrecision at a given recall, held-out (each rule ranking its best pairs first);")
    print(f"'unseen': the {int(fresh.sum())} held-out pairs with no question in the tuning half")
    names = list(ranks) + [f"{n} (unseen)" for n in list(ranks)[1:]]
    print("| recall | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    for r in (0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35):
        cells = [precision_at(x, label, r) for x in ranks.values()]
        cells += [precision_at(x[fresh], label[fresh], r) for x in list(ranks.values())[1:]]
        print(f"| {r:.2f} | " + " | ".join(f"{x:.3f}" for x in cells) + " |")


def operating_points(held: Half, tune: Half, vector: VectorScore) -> None:
    """Held-out precision and recall at thresholds picked on the tuning half."""

    def scores(half: Half) -> np.ndarray:
        passes = half.lex.passes_rules & (half.cos >= vector.min_similarity)
        return np.where(passes, vector_scores(vector, half.u, half.v, half.values), -np.inf)

    tuned, found = scores(tune), scores(held)
    label = held.pairs.label
    print("\nThe vector score at thresholds picked on the tuning half (same weights):")
    print("| tuning recall | threshold | held-out precision | recall | hits | wrong |")
    print("|---|---|---|---|---|---|")
    for r in (0.05, 0.10, 0.15, 0.20, RECALL_TARGET, 0.30):
        t = threshold_at(tuned, tune.pairs.label, r)
        hits, tp = int((found >= t).sum()), int(((found >= t) & (label == 1)).sum())
        recall = tp / int((label == 1).sum())
        print(
            f"| {r:.2f} | {t:.4f} | {tp / max(hits, 1):.3f} | {recall:.3f} | {hits} | {hits - tp} |"
        )


def audit(held: Pairs, reasons: np.ndarray, count: int) -> None:
    """Print fixed random samples of hits labelled 'different' and 'same', to read by hand."""
    for label, seed, name in ((0, 11, "different"), (1, 12, "the same")):
        hits = np.flatnonzero((reasons == "ok") & (held.label == label))
        sample = sorted(random.Random(seed).sample(hits.tolist(), min(count, len(hits))))
        print(f"\nAudit: {len(sample)} of {len(hits)} held-out hits labelled {name}:")
        for n, i in enumerate(sample, 1):
            print(f"{n:3d}. {held.text_a[i]}  ||  {held.text_b[i]}")


# --- adversarial pairs: one held-out question and a copy that differs in one fact ---

_AUX = re.compile(r"\b(can|is|are|do|does|did|should|will|would|could|was|were)\s+(\w+)\b", re.I)
_DIGITS = re.compile(r"\b\d+\b")
_CAPITAL = re.compile(r"(?<=[a-z,] )[A-Z][a-z]{2,}\b")


def _other_number(text: str, rng: random.Random) -> str | None:
    match = _DIGITS.search(text)
    if match is None:
        return None
    value = int(match.group())
    new = value + rng.choice((1, 2, 5, 10)) if value < 1900 else value - rng.choice((1, 2, 10))
    return text[: match.start()] + str(new) + text[match.end() :]


def _negated(text: str, _rng: random.Random) -> str | None:
    match = _AUX.search(text)
    if match is None or re.search(r"\b(not|no|never)\b|n't", text, re.I):
        return None
    return text[: match.end()] + " not" + text[match.end() :]


def _entity_swapper(texts: list[str]) -> Callable[[str, random.Random], str | None]:
    counts: dict[str, int] = {}
    for text in texts:
        for word in _CAPITAL.findall(text):
            counts[word] = counts.get(word, 0) + 1
    pool = sorted(w for w, n in counts.items() if n >= 20 and w.lower() not in STOPWORDS)

    def swap(text: str, rng: random.Random) -> str | None:
        found = [m for m in _CAPITAL.finditer(text) if m.group() in counts]
        if not found or not pool:
            return None
        match = rng.choice(found)
        new = rng.choice([w for w in pool if w.lower() not in text.lower()])
        return text[: match.start()] + new + text[match.end() :]

    return swap


def adversarial_pairs(texts: list[str], per_kind: int, seed: int) -> list[tuple[str, str, str]]:
    """(kind, changed question, original question) triples, `per_kind` of each kind."""
    rng = random.Random(seed)
    unique = sorted(set(texts))
    rng.shuffle(unique)
    makers = {"number": _other_number, "negation": _negated, "entity": _entity_swapper(unique)}
    out = []
    for kind, make in makers.items():
        made = 0
        for text in unique:
            changed = make(text, rng)
            if changed is not None and changed != text:
                out.append((kind, changed, text))
                made += 1
            if made == per_kind:
                break
    return out


def adversarial(backend: str, held: Half, cal: Calibration) -> None:
    cases = adversarial_pairs(held.pairs.text_a + held.pairs.text_b, per_kind=300, seed=7)
    a, b = [q for _, q, _ in cases], [o for _, _, o in cases]
    kinds = np.array([k for k, _, _ in cases])
    fake = Pairs(a, b, np.zeros(len(a), dtype=np.int8), np.ones(len(a), dtype=bool))
    u, v = pair_vectors(backend, "qqp-adversarial", a, b)
    changed = Half.of(fake, fake.held_out, u, v)
    columns = {f"cos >= {cut:.2f}": changed.cos >= cut for cut in (0.90, 0.95)}
    columns["text score"] = changed.reasons(cal, vectors=False) == "ok"
    if cal.vector is not None:
        columns["vector score"] = changed.reasons(cal, vectors=True) == "ok"
    print("\nAdversarial pairs: a held-out question and a copy changed in one fact. Accepted:")
    print("| change | pairs | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 2) + "|")
    for kind in ("number", "negation", "entity"):
        cells = [int((kinds == kind).sum())] + [
            int(c[kinds == kind].sum()) for c in columns.values()
        ]
        print(f"| {kind} | " + " | ".join(str(x) for x in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=BACKENDS, default="onnx-int8")
    parser.add_argument("--audit", type=int, default=0, help="print N wrong hits to read")
    parser.add_argument("--no-pair", action="store_true", help="skip the pair verifier's tables")
    args = parser.parse_args()
    pairs = load_pairs()
    u, v = pair_vectors(args.backend, "qqp", pairs.text_a, pairs.text_b)
    cal = calibration_for(args.backend)
    print(f"Shipped calibration: {cal!r}")
    held = Half.of(pairs, pairs.held_out, u, v)
    tune = Half.of(pairs, ~pairs.held_out, u, v)
    reasons = report(held, tune, cal, unseen(pairs)[pairs.held_out])
    adversarial(args.backend, held, cal)
    if not args.no_pair:
        from bench.train_verifier_report import report as pair_report

        pair_report(args.backend, cal, held, unseen(pairs)[pairs.held_out])
    if args.audit:
        audit(held.pairs, reasons.get("vector", reasons["text"]), args.audit)


if __name__ == "__main__":
    main()
