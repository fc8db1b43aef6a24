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
whole-response sample): how an attempt's result is recorded on its endpoint
is :mod:`gateway.balance.lease`; the pool's config, :mod:`gateway.balance.config`.

No I/O, no logging: ``acquire`` runs once per request and usually looks at two
endpoints only.
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from gateway.balance import affinity
from gateway.balance.breaker import BreakerState
from gateway.balance.config import DECODE_WEIGHT, PoolConfig
from gateway.balance.endpoint import Endpoint, EndpointSpec
from gateway.balance.engine import EngineStats
from gateway.balance.errors import NoEndpoint, UnknownModel
from gateway.balance.hedge import hedge_delay, slow_now
from gateway.balance.lease import Clock, Lease
from gateway.balance.p2c import PowerOfTwoChoices, two_distinct
from gateway.balance.prefix import BLOCK_TOKENS, PromptPrefix
from gateway.balance.recent import RecentSamples
from gateway.balance.retry_budget import RetryBudget

# Added to the load of an endpoint with all its slots taken: any endpoint with one free
# compares lower, whatever its cost.
FULL = 1e9

__all__ = [
    "DECODE_WEIGHT",
    "EndpointSpec",
    "EndpointState",
    "Lease",
    "Pool",
    "PoolConfig",
    "Reading",
]


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


@dataclass(frozen=True, slots=True)
class Reading:
    """One endpoint as flow control's saturation check sees it (``gateway.flow``)."""

    pending: int
    waiting: float | None  # the engine's own queue, from a fresh reading; None: unknown
    ttft_cost: float


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
        self._hedge_budget = RetryBudget(config.hedge.budget)
        # every endpoint's first tokens, for hedging: asked on every stream, resorted every 16
        self._pool_ttft = RecentSamples(256, resort_after=16)
        self._endpoints: dict[str, Endpoint] = {}
        self._by_model: dict[str, list[Endpoint]] = {}
        # Requests an endpoint runs at once, when known (flow control's slots): a full
        # endpoint is chosen only when every candidate is full (0: not known).
        self.slots = 0
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

    def spec(self, name: str) -> EndpointSpec | None:
        """The spec of the endpoint ``name`` (None: not in the pool)."""
        ep = self._endpoints.get(name)
        return ep.spec if ep is not None else None

    def others(self, model: str, name: str) -> list[str]:
        """The endpoints serving ``model`` other than ``name``: excluded, they keep a
        request on ``name`` (a follow-up of a response only ``name`` stored)."""
        return [ep.spec.name for ep in self._by_model.get(model, ()) if ep.spec.name != name]

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

    def readings(self, model: str) -> list[Reading]:
        """The live endpoints of ``model`` that the breaker allows, for flow control."""
        now = self._clock()
        stale = self._config.engine.stale_after_s
        readings = []
        for ep in self._by_model.get(model, ()):
            if ep.eligible(now):
                engine = ep.engine
                fresh = engine is not None and now - engine.at <= stale
                waiting = engine.waiting if engine is not None and fresh else None
                readings.append(Reading(ep.pending, waiting, ep.ttft.cost(now)))
        return readings

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
        self._hedge_budget.record_request(now)
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
        if stream and not panic:
            ep = self._unless_slow(ep, candidates, exclude, now)
        ep.pending += 1
        ep.breaker.admit(now)
        prefill_s = 0.0
        if prefix is not None and blocks:
            held = ep.prefixes.match(blocks) * BLOCK_TOKENS
            prefill_s = max(0, prefix.tokens - held) * self._config.affinity.token_cost_s
            ep.prefixes.record(blocks)
        return Lease(
            ep,
            now,
            panic,
            stream,
            prefill_s,
            clock=self._clock,
            config=self._config,
            on_drained=self._drop_drained,
            pool_ttft=self._pool_ttft,
        )

    def _unless_slow(
        self, ep: Endpoint, candidates: Sequence[Endpoint], exclude: Collection[str], now: float
    ) -> Endpoint:
        """A stream goes to an endpoint that is slow now only as a hedged probe
        (``balance.hedge``): at most one per probe interval, while the hedge budget
        has room; otherwise to the best of the others, if any."""
        config = self._config.hedge
        if not slow_now(config, ep.recent_ttft, ep.ttft.cost(now), self._pool_ttft):
            return ep
        if now >= ep.probe_after and self._hedge_budget.has_room(now):
            ep.probe_after = now + config.probe_interval_s
            return ep
        others = [*exclude, ep.spec.name]
        other = self._pick_fast(candidates, others, now, True)
        other = other or self._pick_slow(candidates, others, now, True)
        return other if other is not None else ep

    def specs(self, model: str) -> list[EndpointSpec]:
        """The live endpoints serving ``model`` (a stream's continuation is planned per
        way they continue, ``proxy.continuation``)."""
        return [ep.spec for ep in self._by_model.get(model, ())]

    def can_retry(self) -> bool:
        """Whether the retry budget allows one more retry; counts it when it does."""
        return self._budget.try_retry(self._clock())

    def hedge_delay(self, lease: Lease) -> float | None:
        """How long ``lease``'s stream may wait for a first token before a hedge
        (:mod:`gateway.balance.hedge`); None: never."""
        if not lease.stream:
            return None
        ep = lease._ep
        cost = ep.ttft.cost(self._clock())
        return hedge_delay(
            self._config.hedge, ep.recent_ttft, cost, self._pool_ttft, lease.prefill_s
        )

    def can_hedge(self) -> bool:
        """Whether the hedge budget allows one more hedge; counts it when it does."""
        return self._hedge_budget.try_retry(self._clock())

    def _load(self, ep: Endpoint, now: float, stream: bool) -> float:
        config = self._config
        load = ep.load(now, stream=stream, decode_weight=config.decode_weight, engine=config.engine)
        return load + FULL if self.slots and ep.pending >= self.slots else load

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

    def _drop_drained(self, ep: Endpoint) -> None:
        """A drained endpoint's last attempt ended: it leaves the pool."""
        if self._endpoints.get(ep.spec.name) is ep:
            del self._endpoints[ep.spec.name]
