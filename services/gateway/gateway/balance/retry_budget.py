"""Retry budget: retries may be at most a fraction of recent requests.

As in Envoy's retry budgets and Finagle/Linkerd's ``RetryBudget``: a retry is
allowed while the retries in the last ``window_s`` seconds stay under
``ratio`` times the requests in that window, with a floor of
``min_per_s * window_s`` retries so that a quiet gateway can still fail over.
A fleet-wide outage therefore adds at most ``ratio`` extra load instead of
multiplying it by the number of attempts. Requests are counted per attempt
(the pool counts every ``acquire``, retries included), as Envoy counts active
requests: with ``ratio=0.2`` retries are at most 25% of first attempts.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.balance.window import SlidingCounts


@dataclass(frozen=True)
class RetryBudgetConfig:
    ratio: float = 0.2
    min_per_s: float = 3.0
    window_s: float = 10.0


class RetryBudget:
    """Counts requests and retries; ``try_retry`` spends the budget."""

    __slots__ = ("_config", "_counts")

    def __init__(self, config: RetryBudgetConfig) -> None:
        self._config = config
        self._counts = SlidingCounts(config.window_s)  # a = requests, b = retries

    def record_request(self, now: float) -> None:
        self._counts.add(now, a=1)

    def allowance(self, now: float) -> float:
        """How many retries the window allows in total right now."""
        requests, _ = self._counts.totals(now)
        floor = self._config.min_per_s * self._config.window_s
        return max(floor, self._config.ratio * requests)

    def has_room(self, now: float) -> bool:
        """Whether one more retry would fit, without counting it."""
        _, retries = self._counts.totals(now)
        return retries < self.allowance(now)

    def try_retry(self, now: float) -> bool:
        """True (and the retry is counted) when one more retry fits the budget."""
        _, retries = self._counts.totals(now)
        if retries >= self.allowance(now):
            return False
        self._counts.add(now, b=1)
        return True
