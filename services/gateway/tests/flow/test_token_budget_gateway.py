"""Token budgets through the gateway: every ending settles on the real usage or releases
all, exactly once; a stream's usage is asked for and hidden; a tenant over its tokens per
minute is refused within one request of the limit, with OpenAI's headers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_stream_endings import ENDINGS, _drive

from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.tenancy import hash_key
from gateway.tenancy.tokens import Reservation
from gwkit import MakeBackend, MakeGateway, backend, chat, events

KEY = "sk-budget-0123456789"


def budget_file(tmp_path: Path, tokens_per_min: int) -> Path:
    path = tmp_path / "budget.json"
    entry = {"name": "metered", "key_sha256": [hash_key(KEY)], "tokens_per_min": tokens_per_min}
    path.write_bytes(orjson.dumps({"tenants": [entry]}))
    return path


AUTH = {"authorization": f"Bearer {KEY}"}


@contextlib.asynccontextmanager
async def metered(url: str, keys: Path, **settings: Any) -> AsyncIterator[Any]:
    app = create_app(
        GatewaySettings(backends=[backend(url)], auth_enabled=True, api_keys_file=keys, **settings)
    )
    async with app.router.lifespan_context(app):
        yield app


# Endings before any token (nothing to charge) against those that produced some.
RELEASED = {"every replica 500"}


@pytest.mark.parametrize("name", list(ENDINGS))
async def test_every_ending_settles_or_releases_the_reservation_once(
    make_backend: MakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    settled: list[tuple[int, int]] = []
    original = Reservation.settle

    def spy(self: Reservation, used: int) -> None:
        if not self._done:  # a second call is a no-op; only the first one counts
            settled.append((self.reserved, used))
        original(self, used)

    monkeypatch.setattr(Reservation, "settle", spy)
    mock, gateway, drive, _, _ = ENDINGS[name]
    url = await make_backend(output_tokens=50, inter_token_ms=mock.pop("inter_token_ms", 5), **mock)
    drive = {**drive, "headers": {**drive.get("headers", {}), **AUTH}}
    async with metered(url, budget_file(tmp_path, 1_000_000), **gateway) as app:
        await _drive(app, **drive)
    assert len(settled) == 1, f"settled once, got {settled}"
    reserved, used = settled[0]
    if name in RELEASED:
        assert used == 0
    elif name in ("whole stream", "whole answer"):
        assert used > 50 and used < reserved  # the mock's usage: its prompt + 50 tokens
    else:
        assert 0 < used < reserved  # the prompt and the tokens sent before the end


async def test_a_stream_is_settled_on_usage_its_client_does_not_see(
    make_backend: MakeBackend, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gw = await make_gateway(
        [backend(await make_backend(output_tokens=20))],
        auth_enabled=True,
        api_keys_file=budget_file(tmp_path, 100_000),
    )
    plain = await gw.post("/v1/chat/completions", json=chat(stream=True), headers=AUTH)
    assert plain.status_code == 200
    assert not any('"usage":{' in e.replace(" ", "") for e in events(plain.text))
    assert events(plain.text)[-1] == "[DONE]"
    assert plain.headers["x-ratelimit-limit-tokens"] == "100000"
    assert int(plain.headers["x-ratelimit-remaining-tokens"]) < 100_000
    asked = chat(stream=True, stream_options={"include_usage": True})
    usage = await gw.post("/v1/chat/completions", json=asked, headers=AUTH)
    assert any('"usage":{' in e.replace(" ", "") for e in events(usage.text))


async def test_a_tenant_over_its_tokens_per_minute_is_refused_within_one_request(
    make_backend: MakeBackend, make_gateway: MakeGateway, tmp_path: Path
) -> None:
    limit = 2_000
    gw = await make_gateway(
        [backend(await make_backend(output_tokens=400))],
        auth_enabled=True,
        api_keys_file=budget_file(tmp_path, limit),
    )
    used, last_reserve = 0, 0
    for _ in range(20):
        reply = await gw.post("/v1/chat/completions", json=chat(max_tokens=300), headers=AUTH)
        if reply.status_code == 429:
            break
        assert reply.status_code == 200
        usage = reply.json()["usage"]
        used += usage["prompt_tokens"] + usage["completion_tokens"]
        last_reserve = usage["prompt_tokens"] + 300
    else:
        pytest.fail("never refused")
    body = reply.json()["error"]
    assert body["type"] == "rate_limit_error" and "tokens per min" in body["message"]
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.headers["x-ratelimit-limit-tokens"] == str(limit)
    refill = 10  # tokens per minute refill while the test runs (2,000 / 60 per second)
    assert used <= limit + refill  # never past the limit
    assert used > limit - 2 * last_reserve  # refused only when the next would pass it
