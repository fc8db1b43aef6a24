"""Routing: Peak EWMA cost, power of two choices, circuit breakers, retry budget.

The proxy talks to :class:`Pool` only; the pure pieces underneath take ``now``
as an argument and a seeded ``random.Random`` so they can be tested with a fake
clock.
"""

from gateway.balance.endpoint import EndpointSpec
from gateway.balance.errors import BalanceError, NoEndpoint, UnknownModel
from gateway.balance.outcome import ErrorKind, Outcome, classify
from gateway.balance.pool import EndpointState, Lease, Pool, PoolConfig

__all__ = [
    "BalanceError",
    "EndpointSpec",
    "EndpointState",
    "ErrorKind",
    "Lease",
    "NoEndpoint",
    "Outcome",
    "Pool",
    "PoolConfig",
    "UnknownModel",
    "classify",
]
