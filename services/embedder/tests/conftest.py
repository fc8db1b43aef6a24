"""A fake model behind the model protocol: instant, deterministic, and holdable.

``FakeModel.hold()`` makes the next model run wait until ``release()``, so a
test can pile callers up behind a busy model and see how they are batched.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from embedder.metrics import Metrics
from embedder.model import ModelInfo, TokenizedText, Vectors


def fake_vector(text: str, dimension: int) -> Vectors:
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    vector = rng.normal(size=dimension).astype(np.float32)
    return vector / np.linalg.norm(vector)


class FakeModel:
    """One token per word; ``max_tokens`` words at most."""

    def __init__(self, *, dimension: int = 8, max_tokens: int = 16) -> None:
        self.info = ModelInfo("fake-minilm", dimension, max_tokens, "fake")
        self.batches: list[list[str]] = []
        self.fail_next = False
        self._gate = threading.Event()
        self._gate.set()
        self.running = threading.Event()
        self.active = 0  # model runs in progress
        self._lock = threading.Lock()
        self.tokenized_on: list[int] = []  # thread ids

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def seen(self) -> list[str]:
        return [text for batch in self.batches for text in batch]

    def vector_for(self, text: str) -> Vectors:
        return fake_vector(text, self.info.dimension)

    def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
        self.tokenized_on.append(threading.get_ident())
        out = []
        for text in texts:
            words = text.split()
            ids = [zlib.crc32(word.encode()) % 30000 for word in words][: self.info.max_tokens]
            out.append(TokenizedText(text, ids, truncated=len(words) > self.info.max_tokens))
        return out

    def embed(self, batch: Sequence[TokenizedText]) -> Vectors:
        with self._lock:
            self.active += 1
        self.running.set()
        assert self._gate.wait(10), "test never released the fake model"
        with self._lock:
            self.active -= 1
            if not self.active:
                self.running.clear()
        self.batches.append([item.text for item in batch])
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("fake model failure")
        return np.stack([self.vector_for(item.text) for item in batch])


@pytest.fixture
def fake_model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


async def _until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


@pytest.fixture
def until() -> Callable[..., Awaitable[None]]:
    """``await until(lambda: ...)``: poll a condition without blocking the loop."""
    return _until
