"""One attempt on one endpoint, and how its result is recorded there.

The pool (:mod:`gateway.balance.pool`) hands out a :class:`Lease` per
attempt; the proxy calls :meth:`Lease.first_token` and, in a ``finally``,
:meth:`Lease.release`. Releasing records the result on the endpoint: pending
drops; a success is a latency sample and a breaker success (or failure, when
the first token came later than ``ttft_failure_limit_s``); a failure is a
penalty sample and a breaker failure, now or, with ``defer_blame``, only
once another endpoint answered the same request (:meth:`Lease.blame`); a 429
keeps the endpoint avoided until its Retry-After.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.balance.config import PoolConfig
from gateway.balance.endpoint import Endpoint
from gateway.balance.outcome import Outcome
from gateway.balance.recent import RecentSamples

Clock = Callable[[], float]

# A TTFT sample keeps at least this share of itself when the expected prefill
# is taken off (a prefill rate set too high must not make an endpoint free).
PREFILL_FLOOR = 0.25


class Lease:
    """One attempt on one endpoint. Release it exactly once, in a ``finally``."""

    __slots__ = (
        "_clock",
        "_config",
        "_ep",
        "_on_drained",
        "_owed",
        "_pool_ttft",
        "_prefill_s",
        "_released",
        "_start",
        "_ttft",
        "_waited",
        "endpoint",
        "panic",
        "stream",
    )

    def __init__(
        self,
        ep: Endpoint,
        start: float,
        panic: bool,
        stream: bool,
        prefill_s: float = 0.0,
        *,
        clock: Clock,
        config: PoolConfig,
        on_drained: Callable[[Endpoint], None],
        pool_ttft: RecentSamples | None = None,
    ) -> None:
        self._pool_ttft = pool_ttft
        self._clock = clock
        self._config = config
        self._on_drained = on_drained
        # The expected prefill of the prompt's uncached part: taken off the TTFT
        # sample, so that the cost measures the endpoint, not the prompt's size.
        self._prefill_s = prefill_s
        self._ep = ep
        self._start = start
        self._ttft: float | None = None
        self._released = False
        self._owed = False  # a failure held back until the request's fate is known
        self._waited = 0.0
        self.endpoint = ep.spec
        self.panic = panic
        self.stream = stream
        (ep.waiting if stream else ep.unary)[self] = start

    def first_token(self) -> None:
        """A stream's first token: the TTFT sample, and the attempt is decoding now.

        Once per attempt; a no-op for a non-streamed attempt, whose first
        token is not seen (its sample is the whole response, at release).
        """
        if self.stream and self._ttft is None and not self._released:
            now = self._clock()
            self._ttft = now - self._start
            sample = max(self._ttft - self._prefill_s, PREFILL_FLOOR * self._ttft)
            self._ep.ttft.observe(sample, now)
            self._ep.recent_ttft.observe(sample)
            if self._pool_ttft is not None:
                self._pool_ttft.observe(sample)
            self._ep.waiting.pop(self, None)

    @property
    def prefill_s(self) -> float:
        """The prefill expected for the prompt's part this endpoint has not cached."""
        return self._prefill_s

    @property
    def started(self) -> float:
        return self._start

    def outrun(self) -> None:
        """Another endpoint answered this request first (a hedge race): this attempt
        had waited this long without a first token. That is a censored sample: its
        first token would have come later still. The cost is kept at least where it
        was and raised to the wait when that is longer (so an endpoint that keeps
        losing races does not look faster as its last real sample ages); the
        breaker hears nothing. Release the lease as cancelled after."""
        if not self.stream or self._ttft is not None or self._released:
            return
        now = self._clock()
        self._ep.ttft.observe(max(now - self._start, self._ep.ttft.cost(now)), now)

    def release(
        self, outcome: Outcome, retry_after_s: float | None = None, *, defer_blame: bool = False
    ) -> None:
        """End the attempt: pending drops, the breaker hears the outcome. Idempotent.

        With ``defer_blame`` a failure is held back: the endpoint is charged
        only when :meth:`blame` is called (another endpoint answered the same
        request, so this one was at fault), never if :meth:`forgive` is (the
        request fails everywhere: it is the request's fault, not the endpoint's).
        """
        if self._released:
            return
        self._released = True
        self._ep.waiting.pop(self, None)
        self._ep.unary.pop(self, None)
        self._record(outcome, retry_after_s, defer_blame)

    def blame(self) -> None:
        """Charge the endpoint with the failure held back at release (once)."""
        if self._owed:
            self._owed = False
            self._charge()

    def forgive(self) -> None:
        """Drop the failure held back at release: the endpoint is not charged."""
        self._owed = False

    def _record(self, outcome: Outcome, retry_after_s: float | None, defer: bool) -> None:
        """The attempt's result, on its endpoint: pending, breaker, latency, Retry-After."""
        lease, ep, now, config = self, self._ep, self._clock(), self._config
        ep.pending -= 1
        if outcome.is_failure:
            lease._waited = now - lease._start if lease._ttft is None else 0.0
            if defer:
                lease._owed = True
                ep.breaker.neutral(now)  # gives a probe slot back; charged later, or never
            else:
                self._charge()
        elif outcome is Outcome.SUCCESS:
            self._succeeded(now)
        else:
            if outcome is Outcome.RATE_LIMITED:
                wait = config.default_retry_after_s if retry_after_s is None else retry_after_s
                wait = min(max(wait, 0.0), config.max_retry_after_s)
                ep.avoid_until = max(ep.avoid_until, now + wait)
            ep.breaker.neutral(now)
        if ep.draining and ep.pending <= 0:
            self._on_drained(ep)

    def _charge(self) -> None:
        """A failure counts against the endpoint: a latency penalty and the breaker."""
        lease, ep, now = self, self._ep, self._clock()
        penalty = max(self._config.penalty_s, lease._waited)
        ep.ttft.observe(penalty, now)
        ep.whole.observe(penalty, now)
        ep.breaker.failure(now)

    def _succeeded(self, now: float) -> None:
        """A complete answer: its latency sample, then success or a too-slow failure.

        A non-streamed answer is sampled as a whole response and never judged
        by the TTFT limit (a long completion may rightly take longer). A
        stream that ended without any token is sampled by its whole time.
        """
        lease, ep = self, self._ep
        elapsed = now - lease._start
        if not lease.stream:
            ep.whole.observe(elapsed, now)
            ep.breaker.success(now)
            return
        ttft = lease._ttft
        if ttft is None:
            ttft = elapsed
            ep.ttft.observe(ttft, now)
        if ttft > self._config.ttft_failure_limit_s:
            ep.breaker.failure(now)
        else:
            ep.breaker.success(now)
