"""The last few samples of a latency, and their quantiles (for hedging).

A ring of the most recent ``size`` samples: quantiles follow the endpoint as
it is now (a window of requests, not of time, so a quiet endpoint keeps what
it last showed). The samples are sorted when a quantile is asked for and at
least ``resort_after`` samples came since the last sort (sorting 256 floats
costs ~5 us, 64 ~1 us: the pool's ring, asked on every stream, is resorted
every 16 samples, which moves its median by a sixteenth of its window at most).
"""

from __future__ import annotations


class RecentSamples:
    __slots__ = ("_fresh", "_next", "_resort_after", "_ring", "_size", "_sorted")

    def __init__(self, size: int = 64, resort_after: int = 1) -> None:
        self._size = size
        self._resort_after = resort_after
        self._ring: list[float] = []
        self._next = 0
        self._sorted: list[float] | None = None
        self._fresh = 0  # samples since the last sort

    def __len__(self) -> int:
        return len(self._ring)

    def observe(self, value: float) -> None:
        if len(self._ring) < self._size:
            self._ring.append(value)
        else:
            self._ring[self._next] = value
            self._next = (self._next + 1) % self._size
        self._fresh += 1
        if self._sorted is not None and self._fresh >= self._resort_after:
            self._sorted = None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1, nearest rank) of the samples kept; None when empty."""
        if not self._ring:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._ring)
            self._fresh = 0
        ranked = self._sorted
        return ranked[min(len(ranked) - 1, max(0, round(q * len(ranked)) - 1))]

    def latest_median(self, count: int) -> float | None:
        """The median of the last ``count`` samples (fewer if fewer kept); None when empty."""
        if not self._ring:
            return None
        n = len(self._ring)
        if n < self._size:
            last = self._ring[-count:]
        else:  # the ring is full: the newest sample is just before ``_next``
            last = [self._ring[(self._next - 1 - i) % n] for i in range(min(count, n))]
        ordered = sorted(last)
        return ordered[(len(ordered) - 1) // 2]

    def clear(self) -> None:
        self._ring.clear()
        self._next = 0
        self._sorted = None
        self._fresh = 0
