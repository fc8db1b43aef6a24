"""The endpoint pool: the one object the proxy asks "where should this go?".

It owns the clock (injected) and the per-endpoint state: a Peak EWMA cost, a
pending count, a circuit breaker, a Retry-After deadline and optional engine
stats. ``acquire`` picks an endpoint with power of two choices over
``load = cost * (pending + 1 + engine_extra)`` among the endpoints that serve the
model and that the breaker allows, and returns a :class:`Lease`. ``cost`` is
the Peak EWMA estimate, floored by how long the endpoint's oldest unanswered
attempt has been waiting for its first token. The proxy
calls ``lease.first_token()`` when the first token (or the whole unary body)
arrives, which records the latency sample, and ``lease.release(outcome)`` in a
``finally`` when the response ends, which drops the pending count.

No I/O, no logging: ``acquire`` runs once per request and usually looks at two
endpoints only.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.balance.breaker import BreakerConfig, BreakerState, CircuitBreaker
from gateway.balance.engine import EngineConfig, EngineStats, extra_pending
from gateway.balance.errors import NoEndpoint, UnknownModel
from gateway.balance.outcome import Outcome
from gateway.balance.p2c import PowerOfTwoChoices, two_distinct
from gateway.balance.peak_ewma import PeakEwma
from gateway.balance.retry_budget import RetryBudget, RetryBudgetConfig

Clock = Callable[[], float]


@dataclass(frozen=True)
class EndpointSpec:
    """One backend replica. ``url`` is the base URL without ``/v1``."""

    url: str
    models: tuple[str, ...]
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))
        object.__setattr__(self, "models", tuple(self.models))
        if not self.name:
            object.__setattr__(self, "name", self.url)


@dataclass(frozen=True)
class PoolConfig:
    tau_s: float = 10.0  # Peak EWMA decay time
    default_rtt_s: float = 0.5  # cost of an endpoint never heard from
    penalty_s: float = 5.0  # latency sample recorded for a failure
    ttft_failure_limit_s: float = 30.0  # a slower first token counts as a failure
    default_retry_after_s: float = 1.0  # a 429 without Retry-After
    max_retry_after_s: float = 60.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)


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


class _Endpoint:
    __slots__ = (
        "avoid_until",
        "breaker",
        "draining",
        "engine",
        "ewma",
        "pending",
        "spec",
        "waiting",
    )

    def __init__(self, spec: EndpointSpec, config: PoolConfig, now: float) -> None:
        self.spec = spec
        self.ewma = PeakEwma(config.tau_s, config.default_rtt_s, now)
        self.breaker = CircuitBreaker(config.breaker, now)
        self.pending = 0
        self.draining = False
        self.avoid_until = 0.0
        self.engine: EngineStats | None = None
        # Start times of attempts still waiting for their first token, oldest first.
        self.waiting: OrderedDict[Lease, float] = OrderedDict()

    def cost(self, now: float) -> float:
        """The EWMA cost, but never less than the age of the oldest unanswered attempt.

        An endpoint that has gone silent (a hung engine) would otherwise keep its
        last good cost until its first slow answer or timeout arrives; how long
        it has kept a request waiting is already a lower bound on its latency.
        """
        cost = self.ewma.cost(now)
        if self.waiting:
            waited = now - next(iter(self.waiting.values()))
            if waited > cost:
                return waited
        return cost

    def eligible(self, now: float) -> bool:
        return now >= self.avoid_until and self.breaker.allows(now)


class Lease:
    """One attempt on one endpoint. Release it exactly once, in a ``finally``."""

    __slots__ = ("_ep", "_pool", "_released", "_start", "_ttft", "endpoint", "panic")

    def __init__(self, pool: Pool, ep: _Endpoint, start: float, panic: bool) -> None:
        self._pool = pool
        self._ep = ep
        self._start = start
        self._ttft: float | None = None
        self._released = False
        self.endpoint = ep.spec
        self.panic = panic

    def first_token(self) -> None:
        """Record the time to first token as the endpoint's latency sample (once)."""
        if self._ttft is None and not self._released:
            now = self._pool._clock()
            self._ttft = now - self._start
            self._ep.ewma.observe(self._ttft, now)
            self._ep.waiting.pop(self, None)

    def release(self, outcome: Outcome, retry_after_s: float | None = None) -> None:
        """End the attempt: pending drops, the breaker hears the outcome. Idempotent."""
        if self._released:
            return
        self._released = True
        self._ep.waiting.pop(self, None)
        self._pool._finish(self._ep, self._start, self._ttft, outcome, retry_after_s)


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
        self._endpoints: dict[str, _Endpoint] = {}
        self._by_model: dict[str, list[_Endpoint]] = {}
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
                self._endpoints[name] = _Endpoint(spec, self._config, now)
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
        by_model: dict[str, list[_Endpoint]] = {}
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
        now = self._clock()
        return [
            EndpointState(
                name=ep.spec.name,
                url=ep.spec.url,
                models=ep.spec.models,
                cost=ep.ewma.cost(now),
                load=self._load(ep, now),
                pending=ep.pending,
                breaker=str(ep.breaker.state(now)),
                ejections=ep.breaker.ejections,
                draining=ep.draining,
                rate_limited=now < ep.avoid_until,
            )
            for ep in sorted(self._endpoints.values(), key=lambda e: e.spec.name)
        ]

    # -- the request path ------------------------------------------------------

    def acquire(self, model: str, exclude: Collection[str] = ()) -> Lease:
        """Choose an endpoint for one attempt at ``model``.

        ``exclude`` names endpoints this request already tried. Raises
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
        ep = self._pick_fast(candidates, exclude, now)
        if ep is None:
            ep = self._pick_slow(candidates, exclude, now)
        if ep is None:
            ep = self._least_bad(candidates, exclude, now)
            panic = True
        if ep is None:
            raise NoEndpoint(model)
        ep.pending += 1
        ep.breaker.admit(now)
        lease = Lease(self, ep, now, panic)
        ep.waiting[lease] = now
        return lease

    def can_retry(self) -> bool:
        """Whether the retry budget allows one more retry; counts it when it does."""
        return self._budget.try_retry(self._clock())

    def _load(self, ep: _Endpoint, now: float) -> float:
        extra = extra_pending(ep.engine, now, self._config.engine) if ep.engine else 0.0
        return ep.cost(now) * (ep.pending + 1 + extra)

    def _pick_fast(
        self, candidates: Sequence[_Endpoint], exclude: Collection[str], now: float
    ) -> _Endpoint | None:
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
        return b if self._load(b, now) < self._load(a, now) else a

    def _pick_slow(
        self, candidates: Sequence[_Endpoint], exclude: Collection[str], now: float
    ) -> _Endpoint | None:
        usable = [e for e in candidates if e.spec.name not in exclude and e.eligible(now)]
        if not usable:
            return None
        return self._p2c.pick(usable, lambda e: self._load(e, now))

    def _least_bad(
        self, candidates: Sequence[_Endpoint], exclude: Collection[str], now: float
    ) -> _Endpoint | None:
        """Panic choice: the endpoint that becomes eligible soonest, then the lightest."""
        best: _Endpoint | None = None
        best_key = (0.0, 0.0)
        for ep in candidates:
            if ep.spec.name in exclude:
                continue
            key = (max(ep.breaker.blocked_until(now), ep.avoid_until), self._load(ep, now))
            if best is None or key < best_key:
                best, best_key = ep, key
        return best

    def _finish(
        self,
        ep: _Endpoint,
        start: float,
        ttft: float | None,
        outcome: Outcome,
        retry_after_s: float | None,
    ) -> None:
        now = self._clock()
        ep.pending -= 1
        config = self._config
        if outcome.is_failure:
            waited = now - start if ttft is None else 0.0
            ep.ewma.observe(max(config.penalty_s, waited), now)
            ep.breaker.failure(now)
        elif outcome is Outcome.SUCCESS:
            if ttft is None:
                ttft = now - start
                ep.ewma.observe(ttft, now)
            if ttft > config.ttft_failure_limit_s:
                ep.breaker.failure(now)
            else:
                ep.breaker.success(now)
        else:
            if outcome is Outcome.RATE_LIMITED:
                wait = config.default_retry_after_s if retry_after_s is None else retry_after_s
                wait = min(max(wait, 0.0), config.max_retry_after_s)
                ep.avoid_until = max(ep.avoid_until, now + wait)
            ep.breaker.neutral(now)
        if ep.draining and ep.pending <= 0 and self._endpoints.get(ep.spec.name) is ep:
            del self._endpoints[ep.spec.name]
