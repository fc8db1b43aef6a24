"""Helpers the gateway's tests share (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import httpx
import orjson

from gateway.balance.config import PoolConfig
from gateway.balance.lease import Lease
from gateway.balance.pool import Pool

MODEL = "mock-llama-3-8b"
MakeBackend = Callable[..., Awaitable[str]]
MakeGateway = Callable[..., Awaitable[httpx.AsyncClient]]


def backend(url: str, *models: str) -> dict[str, Any]:
    return {"url": url, "models": list(models or (MODEL,))}


def chat(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def events(body: str) -> list[str]:
    """The data payloads of an SSE body, in order (comments dropped)."""
    return [line[5:].strip() for line in body.split("\n") if line.startswith("data:")]


def content(body: str) -> str:
    """The generated text of an SSE body (chat deltas or completion text)."""
    text = ""
    for data in events(body):
        if data == "[DONE]":
            continue
        for choice in orjson.loads(data).get("choices", []):
            text += (choice.get("delta") or {}).get("content") or choice.get("text") or ""
    return text


class FakeClock:
    """A clock the test moves by hand (for the pure algorithms: no sleeps)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in a /metrics page whose labels include
    ``labels`` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', match[1] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(match[2])
    return total


class FirstTry(Pool):
    """A pool whose first attempt at a request goes to ``first`` (the rest as usual):
    a race or a failover made deterministic, everything after it the gateway's own."""

    def __init__(self, first: str, config: PoolConfig | None = None) -> None:
        super().__init__(config or PoolConfig())
        self.first = first

    def acquire(self, model: str, exclude: Collection[str] = (), **kw: Any) -> Lease:
        if not exclude:
            others = [s.name for s in self.snapshot() if s.name != self.first]
            return super().acquire(model, others, **kw)
        return super().acquire(model, exclude, **kw)


# Tenants for the tests of keys and limits (the tenants file: the keys_file fixture).
KEYS = {
    "alice": "sk-alice-0123456789",
    "bob": "sk-bob-0123456789",
    "ops": "sk-ops-0123456789",
    "carol": "sk-carol-0123456789",
}


def as_(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}
