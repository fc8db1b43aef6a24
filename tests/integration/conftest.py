"""Fixtures for tests that run the real processes on free local ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.procs import Proc, free_port, redis_proc, redis_ready


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
    proc = redis_proc(port, log_dir=log_dir).start()
    proc.wait_until(redis_ready(port), timeout=10)
    try:
        yield proc, port
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_server: tuple[Proc, int]) -> str:
    return f"redis://127.0.0.1:{redis_server[1]}/0"
