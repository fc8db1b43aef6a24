"""Token budgets across two gateway replicas that share nothing but a real Redis: a
tenant over its tokens per minute is refused within one request of the limit, whichever
replica its requests reach, and the unused part of each reservation comes back."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from deploy.local.harness import Stack, chat_body
from deploy.local.procs import Proc
from gateway.tenancy import hash_key

KEY = "sk-tokens-0123456789"
LIMIT = 3_000
MAX_TOKENS = 200


def test_two_replicas_share_one_token_budget(
    stack: Stack, redis_server: tuple[Proc, int], redis_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    entry = {"name": "metered", "key_sha256": [hash_key(KEY)], "tokens_per_min": LIMIT}
    keys.write_text(json.dumps({"tenants": [entry]}))
    _, mock = stack.mock(ttft_ms=5, inter_token_ms=0, output_tokens=MAX_TOKENS)
    settings = {
        "auth_enabled": "true",
        "api_keys_file": keys,
        "redis_url": redis_url,
        "redis_timeout_s": 0.5,  # a loaded test machine must not look like an outage
        "expected_replicas": 2,
    }
    gws = [stack.gateway([mock], **settings)[1] for _ in range(2)]
    headers = {"Authorization": f"Bearer {KEY}"}
    used, statuses, reserve = 0, [], 0
    for i in range(40):
        body = chat_body(f"request {i}", max_tokens=MAX_TOKENS, stream=i % 2 == 0)
        reply = httpx.post(f"{gws[i % 2]}/v1/chat/completions", json=body, headers=headers)
        statuses.append(reply.status_code)
        if reply.status_code == 429:
            assert reply.headers["x-ratelimit-limit-tokens"] == str(LIMIT)
            break
        assert reply.status_code == 200
        remaining = int(reply.headers["x-ratelimit-remaining-tokens"])
        assert remaining <= LIMIT
        prompt = len(json.dumps(body)) // 4  # the gateway's estimate (no usage asked here)
        reserve = prompt + MAX_TOKENS
        used += MAX_TOKENS + prompt  # an upper bound on what the mock reports
    assert statuses[-1] == 429, statuses
    assert 200 in statuses[1::2] and 200 in statuses[::2]  # both replicas served some
    refill = LIMIT / 60 * 5  # at most five seconds of refill while the test runs
    assert used <= LIMIT + refill + reserve  # never more than one request past the limit
    assert used >= LIMIT - 2 * reserve  # and not refused long before it
