"""Counts over a sliding time window, kept in a ring of fixed-width buckets.

Recording and summing cost O(buckets) with no allocation, whatever the traffic:
the window forgets old events a bucket at a time instead of storing every one.
"""

from __future__ import annotations

import math


class SlidingCounts:
    """Two counters (``a`` and ``b``) summed over the last ``window_s`` seconds."""

    __slots__ = ("_a", "_b", "_epochs", "_n", "_width")

    def __init__(self, window_s: float, buckets: int = 10) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("window_s must be positive and buckets at least 1")
        self._n = buckets
        self._width = window_s / buckets
        self._epochs = [-1] * buckets
        self._a = [0] * buckets
        self._b = [0] * buckets

    def _slot(self, now: float) -> int:
        epoch = math.floor(now / self._width)
        slot = epoch % self._n
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._a[slot] = 0
            self._b[slot] = 0
        return slot

    def add(self, now: float, a: int = 0, b: int = 0) -> None:
        slot = self._slot(now)
        self._a[slot] += a
        self._b[slot] += b

    def totals(self, now: float) -> tuple[int, int]:
        """(sum of a, sum of b) over the buckets still inside the window."""
        oldest = math.floor(now / self._width) - self._n + 1
        total_a = total_b = 0
        for slot in range(self._n):
            if self._epochs[slot] >= oldest:
                total_a += self._a[slot]
                total_b += self._b[slot]
        return total_a, total_b

    def clear(self) -> None:
        for slot in range(self._n):
            self._epochs[slot] = -1
            self._a[slot] = 0
            self._b[slot] = 0
