"""Helpers the gateway's tests share (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson

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
