"""One endpoint's routing state, and the load that power of two choices compares.

Each endpoint keeps two Peak EWMA costs, one per kind of answer, because the
two measure different things and must not be compared with each other: the
**time to first token** of streamed requests, and the **whole-response
time** of non-streamed ones (a 32-token completion takes 5-10 times its first
token; as a "peak" it would swamp the TTFT estimate). A request is routed by
the cost of its own kind, which is also the latency its client waits for
before seeing anything.

The load of an endpoint for one more request is::

    load = cost * (waiting + decode_weight * decoding + 1 + engine_extra)

``waiting`` counts attempts that have not had their first token; ``decoding``
counts those past it. A non-streamed attempt's first token is never seen: it
counts as waiting until it is older than the endpoint's TTFT estimate.

A continuous-batching server (vLLM, SGLang, TGI, Ollama with parallel slots)
admits a new request alongside the streams it is decoding, which delay its
first token only a little, so those weigh ``decode_weight`` < 1; a server
that runs one request at a time (llama-cpp-python's server, which this
project runs as its real backend) makes a new request wait for every one of
them: there ``decode_weight = 1`` is right.

``cost`` is floored by how long the oldest attempt still owed an answer of
that kind has waited: an endpoint that went silent has already shown that it
is at least that slow, before any timeout says so.

When an ejection ends (breaker half-open), both costs are reset to zero
("unknown") and its prefix index is emptied: the endpoint is then preferred
by P2C for the few probe requests its breaker admits, instead of waiting
tens of seconds for a failure penalty to decay, and the first probe's answer
replaces the zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.balance.breaker import BreakerConfig, BreakerState, CircuitBreaker
from gateway.balance.config import CHAT_CONTINUATION, ContinuationConfig
from gateway.balance.engine import EngineConfig, EngineStats, extra_pending
from gateway.balance.peak_ewma import PeakEwma
from gateway.balance.prefix_index import BlockIndex
from gateway.balance.recent import RecentSamples


@dataclass(frozen=True)
class EndpointSpec:
    """One backend replica. ``url`` is the base URL without ``/v1``.

    ``server_hostname`` and ``host_header`` are set when ``url`` holds an
    address that stands for a host name (a ``dns+https`` replica): TLS sends
    and verifies the name (SNI, the certificate), and the ``Host`` header
    names it (with its port when not 443). Empty: the URL's host is used.
    ``continuation``: how it continues a partial answer (``proxy.continuation``).
    """

    url: str
    models: tuple[str, ...]
    name: str = ""
    server_hostname: str = ""
    host_header: str = ""
    continuation: ContinuationConfig = CHAT_CONTINUATION

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))
        object.__setattr__(self, "models", tuple(self.models))
        if not self.name:
            object.__setattr__(self, "name", self.url)


def _oldest_age(started: dict[object, float], now: float) -> float:
    return now - next(iter(started.values())) if started else 0.0


class Endpoint:
    """Mutable per-endpoint state; the pool is its only user."""

    __slots__ = (
        "_probing_after",
        "avoid_until",
        "breaker",
        "draining",
        "engine",
        "pending",
        "prefixes",
        "probe_after",
        "recent_ttft",
        "spec",
        "ttft",
        "unary",
        "waiting",
        "whole",
    )

    def __init__(
        self,
        spec: EndpointSpec,
        *,
        tau_s: float,
        default_rtt_s: float,
        breaker: BreakerConfig,
        now: float,
        prefix_capacity: int = 1,
    ) -> None:
        self.spec = spec
        self.prefixes = BlockIndex(prefix_capacity)  # prompt blocks probably cached there
        self.ttft = PeakEwma(tau_s, default_rtt_s, now)  # streams: time to first token
        self.recent_ttft = RecentSamples()  # the same samples, for the hedge delay
        self.probe_after = 0.0  # slow now: when a stream may next be routed here (hedged)
        self.whole = PeakEwma(tau_s, default_rtt_s, now)  # non-streamed: whole response
        self.breaker = CircuitBreaker(breaker, now)
        self.pending = 0  # attempts from acquire to release, of both kinds
        # Start times, oldest first, keyed by lease: streams still waiting for
        # their first token, and non-streamed attempts in flight.
        self.waiting: dict[object, float] = {}
        self.unary: dict[object, float] = {}
        self.draining = False
        self.avoid_until = 0.0
        self.engine: EngineStats | None = None
        self._probing_after = 0  # the ejection whose end last reset the costs

    def sync(self, now: float) -> None:
        """Apply what time alone changes: an ejection that ended resets the costs."""
        breaker = self.breaker
        if (
            breaker.ejections != self._probing_after
            and breaker.state(now) is BreakerState.HALF_OPEN
        ):
            self._probing_after = breaker.ejections
            self.ttft.reset(0.0, now)
            self.whole.reset(0.0, now)
            self.prefixes.clear()  # it was down: it may have restarted with an empty cache
            self.recent_ttft.clear()

    def eligible(self, now: float) -> bool:
        self.sync(now)
        return now >= self.avoid_until and self.breaker.allows(now)

    def cost(self, now: float, stream: bool = True) -> float:
        """The cost of the request kind, floored by the oldest attempt owed that answer.

        Any waiting stream bounds both kinds (no first token yet means no
        whole answer either); a non-streamed attempt's age bounds only the
        whole-response cost.
        """
        if stream:
            return max(self.ttft.cost(now), _oldest_age(self.waiting, now))
        waited = max(_oldest_age(self.waiting, now), _oldest_age(self.unary, now))
        return max(self.whole.cost(now), waited)

    def in_flight(self, now: float, decode_weight: float) -> float:
        """Attempts in flight, those past their first token weighted by ``decode_weight``.

        A non-streamed attempt's first token is not seen: it counts as
        waiting while younger than the endpoint's TTFT estimate, as decoding
        after that.
        """
        expected_first_token = now - self.ttft.cost(now)
        young = 0
        for started in reversed(self.unary.values()):  # newest first
            if started < expected_first_token:
                break
            young += 1
        blocking = len(self.waiting) + young
        return blocking + decode_weight * (self.pending - blocking)

    def load(
        self, now: float, *, stream: bool, decode_weight: float, engine: EngineConfig
    ) -> float:
        """The expected wait here: the cost times what is in flight, this request included.

        An endpoint never heard from (for this kind of request) that is idle
        (nothing pending, no engine queue) has no load, and the placeholder
        cost once an attempt is pending there (Finagle's rule): a replica added
        beside fast ones is tried at once, by one request at a time until it
        answers, instead of sitting idle until ``tau`` decays its placeholder.
        """
        extra = extra_pending(self.engine, now, engine) if self.engine else 0.0
        if not (extra or self.pending or (self.ttft if stream else self.whole).sampled):
            return 0.0
        return self.cost(now, stream) * (self.in_flight(now, decode_weight) + 1.0 + extra)
