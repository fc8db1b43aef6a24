"""The endpoint pool: the one object the proxy asks "where should this go?".

It owns the clock (injected) and the endpoints (:mod:`gateway.balance.endpoint`:
two Peak EWMA costs, the attempts in flight, a circuit breaker, a Retry-After
deadline and optional engine stats). ``acquire`` picks, with power of two
choices, the endpoint of lower ``load = cost * (waiting + decode_weight *
decoding + 1 + engine_extra)`` among those that serve the model and that the
breaker allows, and returns a :class:`Lease`. A streamed request is routed by
time to first token, a non-streamed one by whole-response time.

The proxy calls ``lease.first_token()`` when a stream's first token arrives,
which records the TTFT sample and moves the attempt from waiting to decoding,
and ``lease.release(outcome)`` in a ``finally`` when the response ends, which
drops it from the load (and, for a non-streamed answer, records the
whole-response sample).

No I/O, no logging: ``acquire`` runs once per request and usually looks at two
endpoints only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.balance import affinity
from gateway.balance.affinity import AffinityConfig
from gateway.balance.breaker import BreakerConfig, BreakerState
from gateway.balance.endpoint import Endpoint, EndpointSpec
from gateway.balance.engine import EngineConfig, EngineStats
from gateway.balance.errors import NoEndpoint, UnknownModel
from gateway.balance.outcome import Outcome
from gateway.balance.p2c import PowerOfTwoChoices, two_distinct
from gateway.balance.prefix import BLOCK_TOKENS, PromptPrefix
from gateway.balance.retry_budget import RetryBudget, RetryBudgetConfig

__all__ = ["EndpointSpec", "EndpointState", "Lease", "Pool", "PoolConfig"]

Clock = Callable[[], float]

DECODE_WEIGHT = 0.1  # see docs/routing.md, "decode weight"
# A TTFT sample keeps at least this share of itself when the expected prefill
# is taken off (a prefill rate set too high must not make an endpoint free).
PREFILL_FLOOR = 0.25


@dataclass(frozen=True)
class PoolConfig:
    tau_s: float = 10.0  # Peak EWMA decay time
    default_rtt_s: float = 0.5  # cost of an endpoint never heard from
    penalty_s: float = 5.0  # latency sample recorded for a failure
    # Weight in the load of a stream past its first token (one still waiting
    # for it weighs 1): low for continuous-batching servers, 1 for servers
    # that run one request at a time. See gateway.balance.endpoint.
    decode_weight: float = DECODE_WEIGHT
    ttft_failure_limit_s: float = 30.0  # a slower first token counts as a failure
    default_retry_after_s: float = 1.0  # a 429 without Retry-After
    max_retry_after_s: float = 60.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    affinity: AffinityConfig = field(default_factory=AffinityConfig)


@dataclass(frozen=True)
class EndpointState:
    """A read-only view of one endpoint for metrics and readiness."""

    name: str
    url: str
    models: tuple[str, ...]
    cost: float
    load: float
    pending: int
    breaker: str
    ejections: int
    draining: bool
    rate_limited: bool


class Lease:
    """One attempt on one endpoint. Release it exactly once, in a ``finally``."""

    __slots__ = (
        "_ep",
        "_owed",
        "_pool",
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
        pool: Pool,
        ep: Endpoint,
        start: float,
        panic: bool,
        stream: bool,
        prefill_s: float = 0.0,
    ) -> None:
        self._pool = pool
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
            now = self._pool._clock()
            self._ttft = now - self._start
            sample = max(self._ttft - self._prefill_s, PREFILL_FLOOR * self._ttft)
            self._ep.ttft.observe(sample, now)
            self._ep.waiting.pop(self, None)

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
        self._pool._finish(self, outcome, retry_after_s, defer_blame)

    def blame(self) -> None:
        """Charge the endpoint with the failure held back at release (once)."""
        if self._owed:
            self._owed = False
            self._pool._charge(self)

    def forgive(self) -> None:
        """Drop the failure held back at release: the endpoint is not charged."""
        self._owed = False


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        specs: Iterable[EndpointSpec] = (),
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._p2c = PowerOfTwoChoices(self._rng)
        self._budget = RetryBudget(config.retry_budget)
        self._endpoints: dict[str, Endpoint] = {}
        self._by_model: dict[str, list[Endpoint]] = {}
        self.update(specs)

    # -- discovery -----------------------------------------------------------

    def update(self, specs: Iterable[EndpointSpec]) -> None:
        """Make the pool match a discovery result.

        New endpoints are added at the default cost; endpoints that stay keep
        their cost, pending count and breaker (their spec is refreshed);
        vanished ones are drained: no new requests, removed once idle.
        """
        now = self._clock()
        wanted = {spec.name: spec for spec in specs}
        for name, spec in wanted.items():
            ep = self._endpoints.get(name)
            if ep is None:
                self._endpoints[name] = Endpoint(
                    spec,
                    tau_s=self._config.tau_s,
                    default_rtt_s=self._config.default_rtt_s,
                    breaker=self._config.breaker,
                    now=now,
                    prefix_capacity=self._config.affinity.capacity_blocks,
                )
            else:
                ep.spec = spec
                ep.draining = False
        for name, ep in list(self._endpoints.items()):
            if name not in wanted:
                ep.draining = True
                if ep.pending == 0:
                    del self._endpoints[name]
        self._reindex()

    def _reindex(self) -> None:
        by_model: dict[str, list[Endpoint]] = {}
        for ep in self._endpoints.values():
            if not ep.draining:
                for model in ep.spec.models:
                    by_model.setdefault(model, []).append(ep)
        self._by_model = by_model

    def set_engine_stats(self, name: str, waiting: float, kv_usage: float | None) -> None:
        """Engine queue figures for one endpoint, stamped with the pool's clock."""
        ep = self._endpoints.get(name)
        if ep is not None:
            ep.engine = EngineStats(waiting, kv_usage, self._clock())

    # -- queries -------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted(self._by_model)

    def has_model(self, model: str) -> bool:
        return model in self._by_model

    def ready(self) -> bool:
        """At least one live endpoint whose breaker is not open."""
        now = self._clock()
        return any(
            not ep.draining and ep.breaker.state(now) is not BreakerState.OPEN
            for ep in self._endpoints.values()
        )

    def snapshot(self) -> list[EndpointState]:
        """Per endpoint, as a stream would see it (its TTFT cost and load)."""
        now = self._clock()
        states = []
        for ep in sorted(self._endpoints.values(), key=lambda e: e.spec.name):
            ep.sync(now)
            states.append(
                EndpointState(
                    name=ep.spec.name,
                    url=ep.spec.url,
                    models=ep.spec.models,
                    cost=ep.ttft.cost(now),
                    load=self._load(ep, now, stream=True),
                    pending=ep.pending,
                    breaker=str(ep.breaker.state(now)),
                    ejections=ep.breaker.ejections,
                    draining=ep.draining,
                    rate_limited=now < ep.avoid_until,
                )
            )
        return states

    # -- the request path ------------------------------------------------------

    def acquire(
        self,
        model: str,
        exclude: Collection[str] = (),
        *,
        stream: bool = True,
        prefix: PromptPrefix | None = None,
    ) -> Lease:
        """Choose an endpoint for one attempt at ``model``.

        ``exclude`` names endpoints this request already tried; ``stream``
        says whether the answer is streamed (routed and sampled by time to
        first token) or not (by whole-response time); ``prefix``, the
        prompt's block hashes, turns on prefix affinity for prompts of at
        least ``affinity.min_blocks`` blocks (:mod:`gateway.balance.affinity`),
        the rest go by P2C. Raises
        :class:`UnknownModel` if no endpoint serves the model and
        :class:`NoEndpoint` if all that do are excluded. When every candidate
        is ejected (or rate limited) the least bad one is chosen and the
        lease says ``panic=True``.
        """
        candidates = self._by_model.get(model)
        if candidates is None:
            raise UnknownModel(model)
        now = self._clock()
        self._budget.record_request(now)
        panic = False
        ep = None
        blocks = prefix.blocks if prefix is not None and self._config.affinity.enabled else ()
        if prefix is not None and len(blocks) >= self._config.affinity.min_blocks:
            ep = self._pick_affine(candidates, exclude, now, stream, prefix)
        if ep is None:
            ep = self._pick_fast(candidates, exclude, now, stream)
        if ep is None:
            ep = self._pick_slow(candidates, exclude, now, stream)
        if ep is None:
            ep = self._least_bad(candidates, exclude, now, stream)
            panic = True
        if ep is None:
            raise NoEndpoint(model)
        ep.pending += 1
        ep.breaker.admit(now)
        prefill_s = 0.0
        if prefix is not None and blocks:
            held = ep.prefixes.match(blocks) * BLOCK_TOKENS
            prefill_s = max(0, prefix.tokens - held) * self._config.affinity.token_cost_s
            ep.prefixes.record(blocks)
        return Lease(self, ep, now, panic, stream, prefill_s)

    def can_retry(self) -> bool:
        """Whether the retry budget allows one more retry; counts it when it does."""
        return self._budget.try_retry(self._clock())

    def _load(self, ep: Endpoint, now: float, stream: bool) -> float:
        config = self._config
        return ep.load(now, stream=stream, decode_weight=config.decode_weight, engine=config.engine)

    def _pick_fast(
        self, candidates: Sequence[Endpoint], exclude: Collection[str], now: float, stream: bool
    ) -> Endpoint | None:
        """P2C over all candidates when both draws are usable (the common case).

        If either is not, the caller falls back to P2C over the usable ones;
        conditioned on both draws being usable the pair is uniform over usable
        pairs, so the mixture is as fair as filtering first.
        """
        n = len(candidates)
        if n == 1:
            only = candidates[0]
            usable = only.spec.name not in exclude and only.eligible(now)
            return only if usable else None
        i, j = two_distinct(n, self._rng)
        a, b = candidates[i], candidates[j]
        if a.spec.name in exclude or b.spec.name in exclude:
            return None
        if not (a.eligible(now) and b.eligible(now)):
            return None
        return b if self._load(b, now, stream) < self._load(a, now, stream) else a

    def _pick_affine(
        self,
        candidates: Sequence[Endpoint],
        exclude: Collection[str],
        now: float,
        stream: bool,
        prefix: PromptPrefix,
    ) -> Endpoint | None:
        """Expected time to first token with prefix affinity, within the bounded load."""
        usable = [e for e in candidates if e.spec.name not in exclude and e.eligible(now)]
        if len(usable) <= 1:
            return usable[0] if usable else None
        i = affinity.choose(
            [e.spec.name for e in usable],
            [self._load(e, now, stream) for e in usable],
            [e.pending for e in usable],
            [e.prefixes.match(prefix.blocks) for e in usable],
            (prefix.tokens, prefix.anchor),
            self._config.affinity,
        )
        return usable[i]

    def _pick_slow(
        self, candidates: Sequence[Endpoint], exclude: Collection[str], now: float, stream: bool
    ) -> Endpoint | None:
        usable = [e for e in candidates if e.spec.name not in exclude and e.eligible(now)]
        if not usable:
            return None
        return self._p2c.pick(usable, lambda e: self._load(e, now, stream))

    def _least_bad(
        self, candidates: Sequence[Endpoint], exclude: Collection[str], now: float, stream: bool
    ) -> Endpoint | None:
        """Panic choice: the endpoint that becomes eligible soonest, then the lightest."""
        best: Endpoint | None = None
        best_key = (0.0, 0.0)
        for ep in candidates:
            if ep.spec.name in exclude:
                continue
            blocked = max(ep.breaker.blocked_until(now), ep.avoid_until)
            key = (blocked, self._load(ep, now, stream))
            if best is None or key < best_key:
                best, best_key = ep, key
        return best

    def _finish(
        self, lease: Lease, outcome: Outcome, retry_after_s: float | None, defer: bool = False
    ) -> None:
        ep, now, config = lease._ep, self._clock(), self._config
        ep.pending -= 1
        if outcome.is_failure:
            lease._waited = now - lease._start if lease._ttft is None else 0.0
            if defer:
                lease._owed = True
                ep.breaker.neutral(now)  # gives a probe slot back; charged later, or never
            else:
                self._charge(lease)
        elif outcome is Outcome.SUCCESS:
            self._succeeded(ep, lease, now)
        else:
            if outcome is Outcome.RATE_LIMITED:
                wait = config.default_retry_after_s if retry_after_s is None else retry_after_s
                wait = min(max(wait, 0.0), config.max_retry_after_s)
                ep.avoid_until = max(ep.avoid_until, now + wait)
            ep.breaker.neutral(now)
        if ep.draining and ep.pending <= 0 and self._endpoints.get(ep.spec.name) is ep:
            del self._endpoints[ep.spec.name]

    def _charge(self, lease: Lease) -> None:
        """A failure counts against the endpoint: a latency penalty and the breaker."""
        ep, now = lease._ep, self._clock()
        penalty = max(self._config.penalty_s, lease._waited)
        ep.ttft.observe(penalty, now)
        ep.whole.observe(penalty, now)
        ep.breaker.failure(now)

    def _succeeded(self, ep: Endpoint, lease: Lease, now: float) -> None:
        """A complete answer: its latency sample, then success or a too-slow failure.

        A non-streamed answer is sampled as a whole response and never judged
        by the TTFT limit (a long completion may rightly take longer). A
        stream that ended without any token is sampled by its whole time.
        """
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
