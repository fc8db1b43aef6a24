"""What the rule-made pair generators share (training: ``bench.train_verifier_pairs``,
evaluation: ``bench.train_verifier_eval``); each keeps its own word lists and
templates, so that the evaluation does not measure the training lists."""

from __future__ import annotations

import random
from collections.abc import Callable

Maker = Callable[[str, random.Random], str | None]  # a rewrite of a text, or None


def match_case(new: str, old: str) -> str:
    """``new`` capitalised when ``old`` starts with a capital."""
    return new.capitalize() if old[:1].isupper() else new
