from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from gateway.balance import EndpointSpec, Pool, PoolConfig
from gwkit import FakeClock

# FakeClock and the ``clock`` fixture come from gwkit and the parent conftest.


def spec(name: str, *models: str) -> EndpointSpec:
    return EndpointSpec(url=f"http://{name}:8000", models=models or ("m",), name=name)


PoolFactory = Callable[..., Pool]


@pytest.fixture
def make_pool(clock: FakeClock) -> PoolFactory:
    def make(*specs: EndpointSpec, config: PoolConfig | None = None, seed: int = 7) -> Pool:
        return Pool(config or PoolConfig(), specs, clock=clock, rng=random.Random(seed))

    return make
