"""Power of two choices: pick two distinct candidates at random, keep the lighter.

Mitzenmacher's result: comparing two random choices gives an exponential
improvement over one random choice, without the herding that "always pick the
least loaded" causes when many balancers share stale information.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def two_distinct(n: int, rng: random.Random) -> tuple[int, int]:
    """Two different indices in ``range(n)`` drawn uniformly (``n >= 2``)."""
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    return i, j


class PowerOfTwoChoices:
    """Chooses among candidates by load; every random draw comes from ``rng``."""

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    @property
    def rng(self) -> random.Random:
        return self._rng

    def pick(self, items: Sequence[T], load: Callable[[T], float]) -> T:
        """The lower-load item of two distinct random ones.

        On a tie the first drawn wins, so ties are broken by the rng (and are
        reproducible from its seed). One item is returned as is.
        """
        n = len(items)
        if n == 0:
            raise ValueError("no candidates")
        if n == 1:
            return items[0]
        i, j = two_distinct(n, self._rng)
        a, b = items[i], items[j]
        return b if load(b) < load(a) else a
