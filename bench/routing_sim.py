"""Linkerd's "Beyond Round Robin" (2016) experiment, simulated, on the real Pool.

11 backends answer with a log-normal latency: median 167 ms, sigma 0.075 (a
narrow spread chosen so that the healthy p99 / p99.9 land near the 198 ms /
210 ms the post reports). Requests arrive as a Poisson stream at 1000/s for
60 s; from 15 s to 45 s one backend answers every request it receives in 2 s.
Backends are independent servers (latency does not depend on their load), as
in the original test servers.

Policies compared:

* round robin;
* least pending: power of two choices on in-flight count (Finagle's
  "least loaded", the post's middle contender);
* P2C Peak EWMA: the gateway's own ``gateway.balance.Pool``, driven by a
  simulated clock, once with the stuck backend and once without.

Every run is a discrete-event simulation: no sleeping, the same seed gives the
same table. Run with ``python -m bench.routing_sim``.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from bench.stats import summary
from gateway.balance import EndpointSpec, Lease, Outcome, Pool, PoolConfig

PUBLISHED = {  # Linkerd, "Beyond Round Robin: Load Balancing for Latency", 2016
    "round robin": (1.7, 1.86),
    "least pending (P2C)": (0.205, 1.72),
    "P2C Peak EWMA": (0.198, 0.210),
}
QUANTILES = (50, 90, 99, 99.9)  # nearest rank


@dataclass(frozen=True)
class Scenario:
    backends: int = 11
    median_s: float = 0.167
    sigma: float = 0.075
    rate_per_s: float = 1000.0
    duration_s: float = 60.0
    stuck: bool = True
    stuck_latency_s: float = 2.0
    stuck_from_s: float = 15.0
    stuck_until_s: float = 45.0
    seed: int = 1


class Policy(Protocol):
    def start(self) -> tuple[int, object]: ...  # (backend index, token for finish)
    def finish(self, token: object) -> None: ...


class RoundRobin:
    def __init__(self, n: int) -> None:
        self._n = n
        self._next = 0

    def start(self) -> tuple[int, object]:
        index = self._next
        self._next = (index + 1) % self._n
        return index, None

    def finish(self, token: object) -> None:
        return None


class LeastPending:
    """Two random distinct backends, the one with fewer requests in flight wins."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self._pending = [0] * n
        self._rng = rng

    def start(self) -> tuple[int, object]:
        i, j = self._rng.sample(range(len(self._pending)), 2)
        index = j if self._pending[j] < self._pending[i] else i
        self._pending[index] += 1
        return index, index

    def finish(self, token: object) -> None:
        assert isinstance(token, int)
        self._pending[token] -= 1


class PeakEwmaPool:
    """The gateway's Pool; a response's latency is its time to first token."""

    def __init__(self, n: int, clock: Callable[[], float], rng: random.Random) -> None:
        specs = [EndpointSpec(url=f"http://10.0.0.{i}:8000", models=("m",)) for i in range(n)]
        self._index = {spec.name: i for i, spec in enumerate(specs)}
        self._pool = Pool(PoolConfig(), specs, clock=clock, rng=rng)

    def start(self) -> tuple[int, object]:
        lease = self._pool.acquire("m")
        return self._index[lease.endpoint.name], lease

    def finish(self, token: object) -> None:
        assert isinstance(token, Lease)
        token.first_token()
        token.release(Outcome.SUCCESS)


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Result:
    latencies: list[float]
    to_stuck: int  # requests sent to the stuck backend while it was stuck


def simulate(scenario: Scenario, make_policy: Callable[[SimClock], Policy]) -> Result:
    clock = SimClock()
    policy = make_policy(clock)
    rng = random.Random(scenario.seed)
    mu = math.log(scenario.median_s)
    completions: list[tuple[float, int, object]] = []
    latencies: list[float] = []
    to_stuck = seq = 0
    arrival = rng.expovariate(scenario.rate_per_s)
    while arrival < scenario.duration_s:
        while completions and completions[0][0] <= arrival:
            clock.now, _, token = heapq.heappop(completions)
            policy.finish(token)
        clock.now = arrival
        index, token = policy.start()
        stuck = (
            scenario.stuck
            and index == 0
            and scenario.stuck_from_s <= arrival < scenario.stuck_until_s
        )
        latency = scenario.stuck_latency_s if stuck else rng.lognormvariate(mu, scenario.sigma)
        to_stuck += stuck
        latencies.append(latency)
        seq += 1
        heapq.heappush(completions, (arrival + latency, seq, token))
        arrival += rng.expovariate(scenario.rate_per_s)
    while completions:
        clock.now, _, token = heapq.heappop(completions)
        policy.finish(token)
    return Result(latencies, to_stuck)


def policies(scenario: Scenario) -> dict[str, tuple[Scenario, Callable[[SimClock], Policy]]]:
    n, seed = scenario.backends, scenario.seed
    return {
        "round robin": (scenario, lambda _: RoundRobin(n)),
        "least pending (P2C)": (scenario, lambda _: LeastPending(n, random.Random(seed + 1))),
        "P2C Peak EWMA": (scenario, lambda c: PeakEwmaPool(n, c, random.Random(seed + 1))),
        "P2C Peak EWMA, no fault": (
            replace(scenario, stuck=False),
            lambda c: PeakEwmaPool(n, c, random.Random(seed + 1)),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    args = parser.parse_args()
    base = Scenario(seed=args.seed, duration_s=args.duration)
    base = replace(base, stuck_from_s=base.duration_s / 4, stuck_until_s=base.duration_s * 3 / 4)
    print(
        f"{base.backends} backends, log-normal latency median {base.median_s * 1000:.0f} ms "
        f"sigma {base.sigma}; {base.rate_per_s:.0f} req/s for {base.duration_s:.0f} s; "
        f"backend 0 at {base.stuck_latency_s:.0f} s from {base.stuck_from_s:.0f} s "
        f"to {base.stuck_until_s:.0f} s; seed {base.seed}\n"
    )
    head = f"{'policy':<26}" + "".join(f"{f'p{q:g}':>9}" for q in QUANTILES)
    print(head + f"{'to stuck':>10}{'cpu s':>7}   published p99 / p99.9")
    p999: dict[str, float] = {}
    for name, (scenario, make) in policies(base).items():
        started = time.process_time()
        result = simulate(scenario, make)
        cpu = time.process_time() - started
        qs = list(summary(result.latencies, QUANTILES).values())
        p999[name] = qs[-1]
        published = PUBLISHED.get(name)
        ref = f"{published[0] * 1000:.0f} / {published[1] * 1000:.0f} ms" if published else "-"
        cells = "".join(f"{v * 1000:>6.0f} ms" for v in qs)
        print(f"{name:<26}{cells}{result.to_stuck:>10}{cpu:>7.1f}   {ref}")
    ratio = p999["P2C Peak EWMA"] / p999["P2C Peak EWMA, no fault"]
    verdict = "meets" if ratio <= 1.3 else "MISSES"
    print(f"\nPeak EWMA p99.9 / fault-free p99.9 = {ratio:.2f} ({verdict} the 1.3x target)")


if __name__ == "__main__":
    main()
