"""Peak EWMA latency estimate for one endpoint.

The idea follows Finagle's ``PeakEwma`` and tower's ``load/peak_ewma.rs``
(written here from the published description, not from their code):

* between samples the cost decays toward zero with ``w = exp(-dt / tau)``, so
  an endpoint nobody has heard from for a while becomes worth trying again;
* a sample above the (decayed) cost replaces it at once: one slow answer is
  enough to steer traffic away;
* a sample below it blends in with weight ``1 - w``, ``dt`` being the time since
  the previous sample, so recovering from a peak takes about ``tau`` no matter
  how many requests arrive in between.

Reading is pure (``cost(now)`` does not change the state), so how often the
balancer looks at an endpoint never changes its estimate.
"""

from __future__ import annotations

import math


class PeakEwma:
    """Time-decayed, peak-sensitive moving average of latency samples in seconds."""

    __slots__ = ("_cost", "_stamp", "_tau_s")

    def __init__(self, tau_s: float, initial_s: float, now: float) -> None:
        if tau_s <= 0:
            raise ValueError("tau_s must be positive")
        self._tau_s = tau_s
        self._cost = initial_s
        self._stamp = now

    def cost(self, now: float) -> float:
        """The estimate at ``now``: the last value decayed toward zero."""
        dt = now - self._stamp
        if dt <= 0.0:
            return self._cost
        return self._cost * math.exp(-dt / self._tau_s)

    def observe(self, sample_s: float, now: float) -> None:
        """Fold one latency sample (seconds) taken at ``now`` into the estimate."""
        dt = now - self._stamp
        w = math.exp(-dt / self._tau_s) if dt > 0.0 else 1.0
        decayed = self._cost * w
        if sample_s > decayed:
            self._cost = sample_s
        else:
            self._cost = decayed + sample_s * (1.0 - w)
        if now > self._stamp:
            self._stamp = now
