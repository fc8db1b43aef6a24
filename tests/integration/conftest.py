"""Fixtures for tests that run the real processes on free local ports.

The processes are started by ``deploy.local.harness.Stack`` (its module
docstring lists what it starts and how long each may take to be ready).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.harness import Stack
from deploy.local.procs import Proc, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"


@pytest.fixture
def redis_server(log_dir: Path) -> Iterator[tuple[Proc, int]]:
    """A real redis-server on a free port, persistence off; stopped afterwards."""
    port = free_port()
    with Stack(log_dir) as redis:
        proc, _ = redis.redis(port=port)
        yield proc, port


@pytest.fixture
def redis_url(redis_server: tuple[Proc, int]) -> str:
    return f"redis://127.0.0.1:{redis_server[1]}/0"


@pytest.fixture
def stack(log_dir: Path) -> Iterator[Stack]:
    """Real processes on free ports, started as the test asks; all stopped afterwards."""
    with Stack(log_dir) as s:
        yield s
