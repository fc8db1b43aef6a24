"""Circuit breaker for one endpoint: closed -> open -> half-open -> closed.

Envoy calls this per-host ejection *outlier detection* and keeps *circuit
breaking* for in-flight limits; the name stays "circuit breaker" here because
it is that pattern (Nygard's, resilience4j's) in full: a half-open state that
admits a bounded number of probes before closing, which Envoy's outlier
detection has not (an ejected host simply returns when its time is up), and
because ``GATEWAY_BREAKER_*`` and ``gateway_backend_breaker_state`` are public
names. The gateway's in-flight limit, Envoy's circuit breaking, is
``GATEWAY_MAX_IN_FLIGHT`` (``tenancy.limits``).

Vocabulary (as in electrical circuits): **closed** means traffic flows,
**open** means the endpoint is ejected, **half-open** means a few probe
requests are let through to test it.

* closed -> open: ``consecutive_failures`` failures in a row, or a failure rate
  of at least ``failure_rate`` over at least ``min_requests`` outcomes in the
  last ``window_s`` seconds;
* open -> half-open: when the ejection time has passed. The ejection time
  doubles with each ejection in a row (``base_ejection_s * 2**(n-1)``), capped at
  ``max_ejection_s``; an endpoint that then stays closed for ``reset_after_s``
  starts again from the base time;
* half-open: admits ``probes`` requests at a time; ``probes`` successes close
  it, one failure opens it again with the next, longer ejection.

The breaker only decides eligibility; whether a response was a failure is
decided by :func:`gateway.balance.outcome.classify`. Results that are neither
(a client disconnect, a 4xx) are recorded with :meth:`neutral` so that a probe
slot is given back. Results that arrive while open (panic-mode traffic) change
nothing: the ejection timer rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.balance.window import SlidingCounts


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 10.0
    base_ejection_s: float = 5.0
    max_ejection_s: float = 120.0
    reset_after_s: float = 300.0
    probes: int = 2


class CircuitBreaker:
    __slots__ = (
        "_closed_since",
        "_config",
        "_consecutive",
        "_counts",
        "_in_flight",
        "_level",
        "_open_until",
        "_probe_successes",
        "_state",
        "ejections",
    )

    def __init__(self, config: BreakerConfig, now: float) -> None:
        self._config = config
        self._state = BreakerState.CLOSED
        self._counts = SlidingCounts(config.window_s)  # a = successes, b = failures
        self._consecutive = 0
        self._level = 0
        self._open_until = 0.0
        self._closed_since = now
        self._in_flight = 0
        self._probe_successes = 0
        self.ejections = 0

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (an open breaker whose time is up is half-open)."""
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._state = BreakerState.HALF_OPEN
            self._in_flight = 0
            self._probe_successes = 0
        return self._state

    def allows(self, now: float) -> bool:
        """Whether a new request may go to this endpoint at ``now``."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._in_flight < self._config.probes

    def blocked_until(self, now: float) -> float:
        """When the endpoint becomes eligible again (``now`` unless open)."""
        return self._open_until if self.state(now) is BreakerState.OPEN else now

    def admit(self, now: float) -> None:
        """A request was sent; in half-open it takes a probe slot."""
        if self.state(now) is BreakerState.HALF_OPEN:
            self._in_flight += 1

    def success(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            self._consecutive = 0
            self._counts.add(now, a=1)
        elif state is BreakerState.HALF_OPEN:
            self._in_flight = max(0, self._in_flight - 1)
            self._probe_successes += 1
            if self._probe_successes >= self._config.probes:
                self._close(now)

    def failure(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.CLOSED:
            self._consecutive += 1
            self._counts.add(now, b=1)
            if self._consecutive >= self._config.consecutive_failures or self._rate_tripped(now):
                self._trip(now)
        elif state is BreakerState.HALF_OPEN:
            self._trip(now)

    def neutral(self, now: float) -> None:
        """An outcome that says nothing about the endpoint's health."""
        if self.state(now) is BreakerState.HALF_OPEN:
            self._in_flight = max(0, self._in_flight - 1)

    def _rate_tripped(self, now: float) -> bool:
        successes, failures = self._counts.totals(now)
        total = successes + failures
        cfg = self._config
        return total >= cfg.min_requests and failures >= cfg.failure_rate * total

    def _trip(self, now: float) -> None:
        cfg = self._config
        if self._state is BreakerState.CLOSED and now - self._closed_since >= cfg.reset_after_s:
            self._level = 0
        self._level += 1
        self.ejections += 1
        ejection = min(cfg.base_ejection_s * 2.0 ** (self._level - 1), cfg.max_ejection_s)
        self._state = BreakerState.OPEN
        self._open_until = now + ejection
        self._consecutive = 0
        self._counts.clear()

    def _close(self, now: float) -> None:
        self._state = BreakerState.CLOSED
        self._closed_since = now
        self._consecutive = 0
        self._counts.clear()
