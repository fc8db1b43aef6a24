"""The pair verifier's tables for `bench.cache_quality` (held-out half and evaluation sets).

Every decision goes through the shipped parts: `semcache.verify.Verifier` for
the floor and the hard rules, `semcache.pair_verify.PairVerifier.guard` for
the texts the model may not judge, `semcache.pair_model.PairModel` for the
score and the threshold in `verifier_model/calibration.json`, exactly as
`SemanticCache._decide_with_pair` chains them for one candidate.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.qqp import CACHE_DIR, Half, Pairs, pair_vectors, precision_at
from bench.train_verifier_eval import DATA, adversarial, hand_written
from semcache.calibration import Calibration
from semcache.pair_model import MODEL_DIR, PairModel
from semcache.pair_verify import PairVerifier, operating_point
from semcache.settings import CacheSettings
from semcache.verify import Verifier

TARGETS = (0.90, 0.95, 0.97)
SHIPPED = CacheSettings().verifier_target_precision  # the default operating point
VETO = 0.5  # the opt-in veto mode, CACHE_VERIFIER_VETO_THRESHOLD=0.5
# The _b, _c and _d sets: later pairs, written by other hands and kept apart
# from all tuning (_c after the last change to the rules and the operating
# point, _d after the last change to the training data).
HAND_SETS = (
    ("near_miss", 0), ("paraphrases", 1), ("near_miss_b", 0), ("paraphrases_b", 1),
    ("near_miss_c", 0), ("paraphrases_c", 1), ("near_miss_d", 0), ("paraphrases_d", 1),
)  # fmt: skip


@dataclass
class Judge:
    """Runs the three stages over many pairs at once."""

    backend: str
    cal: Calibration
    model: PairModel

    def scores(self, name: str, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """The model's scores, cached per model file and pair list."""
        digest = hashlib.sha256((MODEL_DIR / "model.onnx").read_bytes()).hexdigest()[:12]
        texts = hashlib.sha256(
            "\n".join(f"{x}\0{y}" for x, y in zip(a, b, strict=True)).encode()
        ).hexdigest()
        path = CACHE_DIR / f"verifier-{name}-{digest}-{texts[:12]}.npy"
        if path.exists():
            return np.load(path)
        out = np.array(self.model.score_pairs(list(a), list(b), batch=32))
        CACHE_DIR.mkdir(exist_ok=True)
        np.save(path, out)
        return out

    def pair(self, target: float) -> PairVerifier:
        point = operating_point(MODEL_DIR / "calibration.json", self.backend, target)
        return PairVerifier(self.model, point)

    def screened(self, half: Half) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(passes the floor and the rules, guard: 1 same text, 0 to the model, -1 refused,
        the vector score accepts)."""
        verifier, p = Verifier(self.cal), half.pairs
        pair = self.pair(SHIPPED)
        passes, guard, vector = [], [], []
        for x, y, c in zip(p.text_a, p.text_b, half.cos, strict=True):
            # As in the service: the pair verifier's own cosine floor and the hard
            # rules screen; the text score (the store gives no stored vectors,
            # EntryStore.get_many) only matters in veto mode.
            passes.append(c >= pair.point.min_similarity and verifier.screen(x, y) is None)
            vector.append(verifier.check(x, y, float(c)).reason == "ok")
            g = pair.guard(x, y)
            guard.append(1 if g == "" else (0 if g is None else -1))
        return np.array(passes), np.array(guard), np.array(vector)

    def decide(
        self, half: Half, scores: np.ndarray, threshold: float, veto: float = 2.0
    ) -> np.ndarray:
        """SemanticCache._decide_with_pair for one candidate, over many pairs."""
        passes, guard, vector = self.screened(half)
        model = (scores >= threshold) | (vector & (scores >= veto))
        return passes & ((guard == 1) | ((guard == 0) & model))


def _row(name: str, accepted: np.ndarray, label: np.ndarray) -> str:
    hits, tp = int(accepted.sum()), int((accepted & (label == 1)).sum())
    precision = tp / hits if hits else float("nan")
    return (
        f"| {name} | {precision:.3f} | {tp / max(1, int(label.sum())):.3f} | {hits} | {hits - tp} |"
    )


def recall_at_precision(score: np.ndarray, label: np.ndarray, target: float) -> float:
    order = np.argsort(-score, kind="stable")
    finite = np.isfinite(score[order])
    tp = np.cumsum(label[order] == 1)
    precision = tp / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(finite & (precision >= target) & (np.arange(len(order)) >= 49))
    return float(tp[ok.max()] / max(1, int(label.sum()))) if len(ok) else 0.0


def held_out(judge: Judge, held: Half, fresh: np.ndarray) -> None:
    p, label = held.pairs, held.pairs.label
    scores = judge.scores("heldout", p.text_a, p.text_b)
    passes, guard, vector = judge.screened(held)
    ranked = np.where(passes & (guard >= 0), np.where(guard == 1, 2.0, scores), -np.inf)
    print("\nPair verifier on the held-out half (floor + hard rules + cross-encoder):")
    print("| operating point | precision | recall | hits | wrong |\n|---|---|---|---|---|")
    print(_row("text score alone (what the service ran before)", passes & vector, label))
    for target in TARGETS:
        t = judge.pair(target).point.threshold
        accepted = judge.decide(held, scores, t)
        print(_row(f"shipped: model >= {t:.3f} (set for {target:.2f} on tuning)", accepted, label))
        unseen = f"  same, unseen questions only ({int(fresh.sum())})"
        print(_row(unseen, accepted[fresh], label[fresh]))
        vetoed = judge.decide(held, scores, t, VETO)
        print(_row(f"  veto mode: text score and model >= {VETO}, or the above", vetoed, label))
    reach = float((passes & (label == 1)).sum() / label.sum())
    print(f"\nDuplicates the floor and rules let through (highest reachable recall): {reach:.3f}")
    print("| measure | cross-encoder stage | model alone, every pair |\n|---|---|---|")
    alone = scores.copy()
    for r in (0.25, 0.30, 0.50):
        print(f"| precision at {r:.0%} recall | {precision_at(ranked, label, r):.3f} | "
              f"{precision_at(alone, label, r):.3f} |")  # fmt: skip
    for target in (0.95, 0.90):
        print(f"| hit rate at {target:.0%} precision (threshold read on held-out) | "
              f"{recall_at_precision(ranked, label, target):.3f} | "
              f"{recall_at_precision(alone, label, target):.3f} |")  # fmt: skip


def _eval_half(judge: Judge, name: str, a: list[str], b: list[str], label: np.ndarray) -> Half:
    fake = Pairs(a, b, label, np.ones(len(a), dtype=bool))
    u, v = pair_vectors(judge.backend, name, a, b)
    return Half.of(fake, fake.held_out, u, v)


def adversarial_table(judge: Judge, held: Half) -> None:
    cases = adversarial(held.pairs.text_a + held.pairs.text_b, per_kind=300, seed=23)
    a, b = [x for _, x, _ in cases], [y for _, _, y in cases]
    kinds = np.array([k for k, _, _ in cases])
    half = _eval_half(judge, "verifier-adversarial", a, b, np.zeros(len(a), dtype=np.int8))
    scores = judge.scores("adversarial", a, b)
    t = judge.pair(SHIPPED).point.threshold
    columns = {
        "cos >= 0.90": half.cos >= 0.90,
        "vector score (previous)": half.reasons(judge.cal, vectors=True) == "ok",
        "model alone": scores >= t,
        "shipped: rules + model": judge.decide(half, scores, t),
        "veto mode": judge.decide(half, scores, t, VETO),
    }
    print("\nAdversarial pairs from the evaluation generators (not the training ones); "
          f"false hits at the shipped point ({SHIPPED:.2f}, t={t:.3f}):")  # fmt: skip
    print("| change | pairs | " + " | ".join(columns) + " | false-hit rate |")
    print("|---" * (len(columns) + 3) + "|")
    for kind in dict.fromkeys(kinds.tolist()):
        mask = kinds == kind
        cells = [str(int(c[mask].sum())) for c in columns.values()]
        rate = float(columns["shipped: rules + model"][mask].mean())
        print(f"| {kind} | {int(mask.sum())} | " + " | ".join(cells) + f" | {rate:.1%} |")


def hand_sets(judge: Judge, show: int = 40) -> None:
    t = judge.pair(SHIPPED).point.threshold
    for name, want in HAND_SETS:
        if not (DATA / f"{name}.txt").exists():
            continue
        rows = hand_written(name)
        a, b = [x for _, x, _ in rows], [y for _, _, y in rows]
        half = _eval_half(judge, f"verifier-{name}", a, b, np.full(len(a), want, dtype=np.int8))
        scores = judge.scores(name, a, b)
        shipped, alone = judge.decide(half, scores, t), scores >= t
        veto = judge.decide(half, scores, t, VETO)
        domains = np.array([d for d, _, _ in rows])
        verb = "false hits" if want == 0 else "hits"
        point = f"the shipped point ({SHIPPED:.2f}, t={t:.3f})"
        print(f"\nHand-written {name} ({len(rows)} pairs), {verb} at {point}:")
        print("| domain | pairs | shipped | model alone | veto mode |\n|---|---|---|---|---|")
        for d in dict.fromkeys(domains.tolist()):
            m = domains == d
            cells = [int(m.sum()), int(shipped[m].sum()), int(alone[m].sum()), int(veto[m].sum())]
            print(f"| {d} | " + " | ".join(map(str, cells)) + " |")
        print(f"| all | {len(rows)} | {int(shipped.sum())} ({shipped.mean():.1%}) | "
              f"{int(alone.sum())} ({alone.mean():.1%}) | "
              f"{int(veto.sum())} ({veto.mean():.1%}) |")  # fmt: skip
        wrong = np.flatnonzero(shipped != bool(want))
        for i in wrong[:show]:
            print(f"   {'HIT ' if shipped[i] else 'MISS'} {scores[i]:.3f} cos {half.cos[i]:.3f}"
                  f"  {a[i]}  ||  {b[i]}")  # fmt: skip


SWEEP = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


def _hand(judge: Judge, name: str, want: int) -> tuple[Half, np.ndarray] | None:
    if not (DATA / f"{name}.txt").exists():
        return None
    rows = hand_written(name)
    a, b = [x for _, x, _ in rows], [y for _, _, y in rows]
    half = _eval_half(judge, f"verifier-{name}", a, b, np.full(len(a), want, dtype=np.int8))
    return half, judge.scores(name, a, b)


def sweep(judge: Judge, held: Half) -> None:
    """Every set at every threshold: what each operating point trades."""
    scores = judge.scores("heldout", held.pairs.text_a, held.pairs.text_b)
    cases = adversarial(held.pairs.text_a + held.pairs.text_b, per_kind=300, seed=23)
    a, b = [x for _, x, _ in cases], [y for _, _, y in cases]
    kinds = np.array([k for k, _, _ in cases])
    adv = _eval_half(judge, "verifier-adversarial", a, b, np.zeros(len(a), dtype=np.int8))
    adv_scores = judge.scores("adversarial", a, b)
    hand = {n: _hand(judge, n, w) for n, w in HAND_SETS}
    names = [n for n, h in hand.items() if h is not None]
    print("\nEvery set at each model threshold (after the floor and the hard rules):")
    print("| threshold | held-out precision | recall | adversarial worst kind | "
          + " | ".join(names) + " |\n" + "|---" * (len(names) + 4) + "|")  # fmt: skip
    label = held.pairs.label
    for t in SWEEP:
        got = judge.decide(held, scores, t)
        tp = int((got & (label == 1)).sum())
        accepted = judge.decide(adv, adv_scores, t)
        worst = max((float(accepted[kinds == k].mean()), str(k)) for k in set(kinds.tolist()))
        cells = []
        for n in names:
            h = hand[n]
            assert h is not None
            hits = judge.decide(h[0], h[1], t)
            cells.append(f"{int(hits.sum())}/{len(hits)}")
        print(f"| {t:.2f} | {tp / max(1, int(got.sum())):.3f} | {tp / int(label.sum()):.3f} | "
              f"{worst[0]:.1%} ({worst[1]}) | " + " | ".join(cells) + " |")  # fmt: skip


def latency(judge: Judge, runs: int = 200) -> None:
    """Median ms of one lookup's model call (1 and 2 candidates) against one embedding."""
    from bench.qqp import encoder

    encode = encoder(judge.backend)
    q, c = "How do I reset the password of my router?", "How can I reset my router's password?"
    c2 = "How do I change the name of my router?"
    timings: dict[str, list[float]] = {"embed one text": [], "pair, 1 candidate": [],
                                       "pair, 2 candidates": []}  # fmt: skip
    for _ in range(runs):
        for name, work in (
            ("embed one text", lambda: encode([q])),
            ("pair, 1 candidate", lambda: judge.model.scores(q, [c])),
            ("pair, 2 candidates", lambda: judge.model.scores(q, [c, c2])),
        ):
            start = time.perf_counter()
            work()
            timings[name].append((time.perf_counter() - start) * 1000)
    print(f"\nIn-process cost, one thread, median of {runs} interleaved runs:")
    for name, values in timings.items():
        print(f"  {name:<20} {statistics.median(values):6.2f} ms")


def report(backend: str, cal: Calibration, held: Half, fresh: np.ndarray) -> None:
    if not (MODEL_DIR / "model.onnx").exists():
        print("\nNo pair verifier model: run python -m bench.train_verifier")
        return
    judge = Judge(backend, cal, PairModel(threads=2))
    held_out(judge, held, fresh)
    adversarial_table(judge, held)
    hand_sets(judge)
    sweep(judge, held)
    judge.model = PairModel(threads=1)
    latency(judge)
