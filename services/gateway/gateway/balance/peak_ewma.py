"""Peak EWMA latency estimate for one endpoint.

The idea follows Finagle's ``PeakEwma`` and tower's ``load/peak_ewma.rs``
(written here from the published description, not from their code), with
one change in how long a peak is believed:

* samples are averaged with weight ``1 - w``, ``w = exp(-dt / tau)``, ``dt``
  being the time since the previous sample, so the mean moves at the same
  pace in time however many requests arrive;
* a slow sample counts at once, as in Finagle: the estimate is the larger of
  that mean and the **latest** sample. Finagle keeps a peak until ``tau``
  decays it; here the next sample replaces it, and with no next sample it
  decays with its own length as time constant (a one-second answer is
  believed for about a second, not ten);
* between samples the mean decays toward zero by ``w``, so an endpoint
  nobody has heard from for a while becomes worth trying again.

Why the latest sample and not a peak kept for ``tau``: an estimate that keeps
peaks for ``tau`` seconds is about the largest sample of the last ``tau``
seconds, and the largest of many samples is larger than the largest of few.
The busier an endpoint, the worse it looks, from noise alone: a fast replica
serving 45 requests a second is judged by its worst answer of the last ten
seconds (a scheduling hiccup of its host, a long prompt), while the slow
replica it is compared with, serving one request now and then, is judged by
a typical one. Measured, that brought a 10x slower replica back into use for
seconds after every hiccup (docs/routing.md). The mean and the latest sample
do not depend on how many samples an endpoint gets, so every endpoint is
judged alike. A replica that turns slow is still avoided at once: by its
latest answer, and before it answers by the age of the requests it keeps
waiting (see :mod:`gateway.balance.endpoint`); a replica slow in every answer
raises its mean too, which keeps it away for ``tau``. The latest sample fades
with its own length because one answer is evidence about that answer: a
replica stalled once for a second (its host descheduled it) is not kept
away for ten seconds on that alone, while the one-second stall still weighs
in its mean in proportion to the time it lasted. What is given up: a replica
that is slow only now and then (one answer in 50) is judged by its mean, not
kept away for ``tau`` after each slow answer.

The starting value is only a placeholder: the first real sample replaces it,
whether it is above or below (Finagle starts from zero, tower from a default
that samples soon outweigh). Otherwise a fleet answering in 20 ms would look
alike for ``tau * ln(default / 20 ms)`` under a 0.5 s default, a 10x slower
replica included. :meth:`reset` puts the estimate back to a placeholder, for
an endpoint whose past no longer says anything (one back from an ejection).

Reading is pure (``cost(now)`` does not change the state), so how often the
balancer looks at an endpoint never changes its estimate.
"""

from __future__ import annotations

import math


class PeakEwma:
    """Time-decayed mean of latency samples in seconds, never below the latest one."""

    __slots__ = ("_last", "_mean", "_sampled", "_stamp", "_tau_s")

    def __init__(self, tau_s: float, initial_s: float, now: float) -> None:
        if tau_s <= 0:
            raise ValueError("tau_s must be positive")
        self._tau_s = tau_s
        self._mean = self._last = initial_s
        self._stamp = now
        self._sampled = False

    @property
    def sampled(self) -> bool:
        """Whether the estimate rests on at least one sample (not the placeholder)."""
        return self._sampled

    def reset(self, initial_s: float, now: float) -> None:
        """Forget every sample: ``initial_s`` until the next one replaces it."""
        self._mean = self._last = initial_s
        self._stamp = now
        self._sampled = False

    def cost(self, now: float) -> float:
        """The estimate at ``now``: max(mean, latest sample), each decayed toward zero.

        The mean decays with ``tau``; the latest sample with its own length
        (at most ``tau``): one answer that took a second is believed for
        about a second when nothing newer is heard.
        """
        dt = now - self._stamp
        if dt <= 0.0:
            return max(self._mean, self._last)
        mean = self._mean * math.exp(-dt / self._tau_s)
        last = self._last
        if last <= mean:  # it decays at least as fast as the mean
            return mean
        return max(mean, last * math.exp(-dt / min(last, self._tau_s)))

    def observe(self, sample_s: float, now: float) -> None:
        """Fold one latency sample (seconds) taken at ``now`` into the estimate."""
        if not self._sampled:
            self._sampled = True
            self._mean = sample_s
        else:
            dt = now - self._stamp
            w = math.exp(-dt / self._tau_s) if dt > 0.0 else 1.0
            self._mean = self._mean * w + sample_s * (1.0 - w)
        self._last = sample_s
        if now > self._stamp:
            self._stamp = now
