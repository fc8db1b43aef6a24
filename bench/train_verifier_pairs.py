"""Training pairs for the cache's pair verifier, made by rules from tuning questions.

Used only by `bench.train_verifier`. The generators here are the TRAINING ones;
`bench.train_verifier_eval` holds the evaluation generators, built from other
word lists and other templates, so the evaluation measures what the model
learned about a kind of change, not the list it was shown.

Hard negatives (label 0): an opposed word swapped in, the two arguments around
a directional word swapped, a number changed, a negation added, a name
replaced. Hard positives (label 1): a synonym swapped in, "the X of my Y" ->
"my Y's X", a leading clause moved to the end, case and punctuation changed,
the same text.
"""

from __future__ import annotations

import random

from bench.rewrite import Maker
from bench.train_verifier_negatives import (
    entity,
    negated,
    number,
    opposed,
    qualified,
    sibling,
    swapped,
)
from bench.train_verifier_positives import noisy, possessive, reordered, surface, synonym

NEGATIVES: dict[str, Maker] = {
    "sibling": sibling,
    "opposed": opposed,
    "swapped": swapped,
    "number": number,
    "negation": negated,
    "entity": entity,
    "qualified": qualified,
}
POSITIVES: dict[str, Maker] = {
    "synonym": synonym,
    "possessive": possessive,
    "reordered": reordered,
    "surface": surface,
    "noisy": noisy,
}


def generated(
    texts: list[str], per_kind: int, seed: int, skip: frozenset[str] = frozenset()
) -> list[tuple[str, str, int, str]]:
    """(a, b, label, kind) rows: up to `per_kind` of each generator but `skip`, from `texts`
    (a skipped generator draws nothing from the seeded stream: the others' rows stay the same)."""
    rng = random.Random(seed)
    pool = sorted(set(texts))
    rng.shuffle(pool)
    out: list[tuple[str, str, int, str]] = []
    for label, makers in ((0, NEGATIVES), (1, POSITIVES)):
        for kind, make in makers.items():
            if kind in skip:
                continue
            made = 0
            for text in pool:
                changed = make(text, rng)
                if changed and changed.strip() != text.strip():
                    pair = (changed, text) if rng.random() < 0.5 else (text, changed)
                    out.append((*pair, label, kind))
                    made += 1
                if made >= per_kind:
                    break
    for text in pool[: per_kind // 2]:
        out.append((text, text, 1, "identical"))
    return out
