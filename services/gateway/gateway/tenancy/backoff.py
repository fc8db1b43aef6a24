"""When to try Redis again after it failed: exponential back-off, one probe at a time.

Pure: every method takes ``now``. While Redis is healthy every caller may use
it. After a failure nobody may until the back-off has passed; then exactly one
caller (the probe) tries, the others keep using their fallback until the probe
reports back, so a dead Redis costs one timeout per back-off period rather than
one per request.
"""

from __future__ import annotations


class Backoff:
    __slots__ = ("_base", "_cap", "_delay", "_probing", "_retry_at", "healthy")

    def __init__(self, base_s: float, cap_s: float) -> None:
        self._base = base_s
        self._cap = max(cap_s, base_s)
        self._delay = 0.0
        self._retry_at = 0.0
        self._probing = False
        self.healthy = True

    def try_acquire(self, now: float) -> bool:
        """True when the caller may use Redis now (healthy, or it is the probe).

        A caller that got True while ``healthy`` was False is the probe: if it
        is cancelled it calls :meth:`abandoned`.
        """
        if self.healthy:
            return True
        if self._probing or now < self._retry_at:
            return False
        self._probing = True
        return True

    def succeeded(self) -> bool:
        """Record a success; True when this ends an outage."""
        recovered = not self.healthy
        self.healthy = True
        self._probing = False
        self._delay = 0.0
        return recovered

    def failed(self, now: float) -> bool:
        """Record a failure; True when this starts an outage."""
        if not self.healthy and not self._probing:
            return False  # a call that began before the outage: already counted
        started = self.healthy
        self.healthy = False
        self._probing = False
        self._delay = self._base if self._delay == 0 else min(self._cap, self._delay * 2)
        self._retry_at = now + self._delay
        return started

    def abandoned(self) -> None:
        """The probe was cancelled before it said anything: let another caller probe."""
        self._probing = False
