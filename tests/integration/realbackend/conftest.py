"""The gateway in front of llama.cpp serving a real model (SmolLM2-135M-Instruct).

Two ``llama_cpp.server`` replicas (one thread each: the machine has two
cores) and gateways run as real processes on free loopback ports, started once
for this whole directory and stopped at its end. The wheel and the GGUF come
from the machine's cache (``make llamacpp``); on a machine that has neither,
the harness builds them first (minutes, once).

llama.cpp runs one request at a time (no batching): a queued stream gets 200
and its headers at once, then only ``: ping`` comments until its turn. These
tests lean on that to make routing deterministic: a replica with a stream
running is busy for as long as the stream lasts. ``logit_bias`` bans the
end-of-sequence tokens so a generation lasts exactly ``max_tokens``.

The tests, by concern: ``test_stream.py`` (tokens as they come, pings),
``test_routing.py`` (busy and killed replicas), ``test_client_errors.py``
(what the gateway spares its clients and replicas), ``test_cache.py`` (the
semantic cache in front of a real model).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.local.harness import Stack
from tests.integration.realbackend.client import Background, llama_gateway


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every process these tests start; stopped in reverse order at the end."""
    with Stack(tmp_path_factory.mktemp("realbackend-logs")) as stack:
        yield stack


@pytest.fixture(scope="package")
def pair(cluster: Stack) -> tuple[str, str]:
    """Two replicas, shared by the tests that leave them running."""
    return cluster.llamacpp()[1], cluster.llamacpp()[1]


@pytest.fixture(scope="package")
def gateway(cluster: Stack, pair: tuple[str, str]) -> str:
    """A gateway over both replicas, without the cache (every request reaches a model)."""
    return llama_gateway(cluster, list(pair), cache_enabled="false")[1]


@pytest.fixture(scope="package")
def sidecars(cluster: Stack) -> tuple[str, str]:
    """The embedder's and the cache service's gRPC targets."""
    return cluster.embedder()[1], cluster.cache()[1]


@pytest.fixture(scope="package")
def cache_gateway(cluster: Stack, pair: tuple[str, str], sidecars: tuple[str, str]) -> str:
    """A gateway over both replicas with the cache."""
    return llama_gateway(
        cluster,
        list(pair),
        embedder_target=sidecars[0],
        cache_target=sidecars[1],
        cache_lookup_budget_ms=2000,  # a shared 2-core machine: a slow lookup is not the point
    )[1]


@pytest.fixture(autouse=True)
def _stop_streams() -> Iterator[None]:
    """A failed test leaves no long generation running on the shared replicas."""
    yield
    while Background.started:
        Background.started.pop().stop()
