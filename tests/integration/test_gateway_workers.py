"""Several uvicorn workers: metrics aggregate across them, whichever one is scraped."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx

from deploy.local.harness import Stack, chat_body


def requests_total(text: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^gateway_requests_total\{[^}]*status="200"[^}]*\} (\S+)$', text, re.MULTILINE
        )
    )


def worker_pids(text: str) -> set[str]:
    return set(
        re.findall(r'^gateway_backend_ewma_cost_seconds\{[^}]*pid="(\d+)"', text, re.MULTILINE)
    )


def test_two_workers_count_every_request_in_one_scrape(stack: Stack, tmp_path: Path) -> None:
    _, mock = stack.mock(output_tokens=4, ttft_ms=1, inter_token_ms=0)
    _, gw = stack.gateway([mock], workers=2, metrics_dir=tmp_path / "metrics")
    with httpx.Client(timeout=10) as client:
        for i in range(40):
            reply = client.post(
                f"{gw}/v1/chat/completions",
                json=chat_body("hi", stream=i % 2 == 0),
                headers={"Connection": "close"},
            )  # new connection: any worker
            assert reply.status_code == 200
        scrapes = [
            client.get(f"{gw}/metrics", headers={"Connection": "close"}).text for _ in range(4)
        ]
    assert all(requests_total(text) == 40 for text in scrapes)
    # Both workers' per-backend gauges reach every scrape, one series per worker pid
    # (each worker refreshes its gauges every second).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(worker_pids(scrapes[-1])) < 2:
        time.sleep(0.5)
        scrapes.append(httpx.get(f"{gw}/metrics").text)
    assert len(worker_pids(scrapes[-1])) == 2
