"""Prefix affinity with bounded load: send a prompt where its prefix is cached, within limits.

For a prompt of ``tokens`` tokens whose first ``matched`` blocks an endpoint
probably holds (:mod:`gateway.balance.prefix_index`), the expected time to
first token there is::

    score = load + (tokens - matched * BLOCK_TOKENS) * token_cost_s

``load`` is the pool's Peak EWMA load (the queueing this endpoint's recent
first tokens measure, times what is in flight there), the second term the
prefill of the part of the prompt it does not hold. Three rules keep
affinity from hurting:

* **Bounded load.** An endpoint whose load is above ``load_factor`` times the
  mean load of the eligible endpoints, or which has more than ``load_factor``
  times its fair share of the requests in flight (counting this one), is not
  a candidate (the bounded-load idea of consistent hashing, Mirrokni et al.
  2018): a hot prefix spills to the next endpoint instead of piling onto one,
  and a slow replica, whose load is its slow first token, is out as long as
  it is slow.
* **A miss is spread.** When no candidate holds any block, the prompt goes,
  among the candidates whose load is at most about the mean, to the one ranked
  first by rendezvous hashing (highest random weight) of the prefix's anchor
  block and the endpoint's name: different prefixes land on different
  endpoints, the same prefix on the same one, and never on a busy one.
* **Agreement without shared state.** Rendezvous ranks depend only on the
  prefix and the endpoint names, so gateway replicas in front of one pool
  send a new conversation to the same endpoint (while it is within bounds),
  and each then learns it from what it sent.

Pure: the caller passes loads already computed at ``now``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.balance.prefix import BLOCK_TOKENS

# A miss goes to an endpoint no busier than this multiple of the mean load:
# just above 1, so that the noise between equal endpoints does not decide.
MISS_TOLERANCE = 1.1


@dataclass(frozen=True)
class AffinityConfig:
    enabled: bool = True
    capacity_tokens: int = 262_144  # an endpoint's prefix cache, in tokens
    token_cost_s: float = 0.00005  # prefill time per uncached prompt token (20k tokens/s)
    load_factor: float = 1.25  # affinity only below this multiple of the mean load
    min_blocks: int = 2  # shorter prompts are routed by load alone (P2C)

    @property
    def capacity_blocks(self) -> int:
        return max(1, self.capacity_tokens // BLOCK_TOKENS)


def rendezvous_weight(anchor: int, name: str) -> int:
    """The endpoint's weight for this prefix; the highest weight is the first choice."""
    digest = hashlib.blake2b(
        name.encode(), digest_size=8, key=anchor.to_bytes(8, "little")
    ).digest()
    return int.from_bytes(digest, "little")


def choose(
    names: Sequence[str],
    loads: Sequence[float],
    pending: Sequence[int],
    matched: Sequence[int],
    prefix: tuple[int, int],
    config: AffinityConfig,
) -> int:
    """The index of the endpoint to use (``names`` not empty, all eligible).

    ``prefix`` is the prompt's (tokens, anchor hash).
    """
    tokens, anchor = prefix
    n = len(loads)
    mean = sum(loads) / n
    cap = config.load_factor * mean
    slots = math.ceil(config.load_factor * (sum(pending) + 1) / n)
    allowed = [i for i in range(n) if loads[i] <= cap and pending[i] < slots]
    allowed = allowed or [_argmin(loads)]
    if not any(matched[i] for i in allowed):
        # A miss: among the endpoints no busier than the mean, the prefix's own.
        light = [i for i in allowed if loads[i] <= MISS_TOLERANCE * mean] or allowed
        return max(light, key=lambda i: rendezvous_weight(anchor, names[i]))
    best, best_score = allowed[0], float("inf")
    for i in allowed:
        uncached = max(0, tokens - matched[i] * BLOCK_TOKENS)
        score = loads[i] + uncached * config.token_cost_s
        if score < best_score:
            best, best_score = i, score
    return best


def _argmin(values: Sequence[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)
