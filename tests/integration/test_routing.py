"""The router against real processes: slow, killed, failing and hung replicas.

Every test starts real mock-llm replicas and a real gateway on free loopback
ports, drives a bounded concurrent load through the gateway, and reads what a
user or an operator would see: the client's answers and the gateway's
``/metrics`` (breaker state, attempts per endpoint, panic routings). Waits are
polls with deadlines; nothing asserts how fast anything was.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.harness import MOCK_MODEL, Stack, chat_body, wait_for
from deploy.local.procs import http_ok

FAST = {"ttft_ms": 20, "inter_token_ms": 5, "output_tokens": 16}
# The router's time constants scaled down so that a whole eject-probe-rejoin
# cycle takes seconds (defaults: 5 s ejection, doubled per failed probe, and a
# 5 s failure penalty that keeps a replica away until its breaker opens).
# Three failures eject: a kill cuts only the streams in flight.
SCALED: dict[str, Any] = {
    "ewma_tau_s": 1,
    "failure_penalty_s": 1,
    "breaker_base_ejection_s": 1,
    "breaker_consecutive_failures": 3,
}


def always(n: int) -> bool:
    return True


def never(n: int) -> bool:
    return False


# -- reading the gateway's metrics ----------------------------------------------


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> Samples:
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def breaker(samples: Samples, endpoint: str) -> str:
    for (name, labels), value in samples.items():
        lab = dict(labels)
        if name == "gateway_backend_breaker_state" and lab["endpoint"] == endpoint and value:
            return lab["state"]
    raise AssertionError(f"no breaker state for {endpoint}")


def successes(samples: Samples, endpoint: str) -> float:
    return total(samples, "gateway_upstream_attempts_total", endpoint=endpoint, outcome="success")


# -- a bounded closed-loop client ---------------------------------------------------


@dataclass(frozen=True)
class Answer:
    started: float  # time.monotonic()
    ended: float
    stream: bool
    status: int
    ok: bool  # a complete, well-formed answer
    detail: str

    @property
    def streaming_began(self) -> bool:
        """The gateway sends 200 only once the upstream's first token has arrived."""
        return self.stream and self.status == 200


async def ask(
    session: aiohttp.ClientSession,
    gw: str,
    n: int,
    *,
    stream: bool,
    model: str = MOCK_MODEL,
    headers: dict[str, str] | None = None,
) -> Answer:
    started = time.monotonic()
    status, ok, detail = 0, False, ""
    try:
        async with session.post(
            f"{gw}/v1/chat/completions",
            json=chat_body(f"request {n}", stream=stream, model=model),
            headers=headers,
        ) as reply:
            status = reply.status
            body = await reply.read()
        if stream:
            ok = status == 200 and b"data: [DONE]" in body and b'{"error"' not in body
        else:
            ok = status == 200 and bool(json.loads(body).get("choices"))
        detail = "" if ok else body[-300:].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError) as exc:
        detail = repr(exc)
    return Answer(started, time.monotonic(), stream, status, ok, detail)


async def drive(
    gw: str,
    *,
    workers: int,
    max_requests: int,
    max_seconds: float,
    stop: Callable[[], bool] = lambda: False,
    streams: Callable[[int], bool] = lambda n: n % 2 == 0,
    model: str = MOCK_MODEL,
    headers: dict[str, str] | None = None,
    client_timeout_s: float = 30,
) -> list[Answer]:
    """Closed loop until any bound; request ``n`` is streamed when ``streams(n)``."""
    answers: list[Answer] = []
    deadline = time.monotonic() + max_seconds
    counter = iter(range(max_requests))
    timeout = aiohttp.ClientTimeout(total=client_timeout_s)

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline and not stop():
            n = next(counter, None)
            if n is None:
                return
            answers.append(
                await ask(session, gw, n, stream=streams(n), model=model, headers=headers)
            )

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return answers


def failed(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if not a.ok]


# -- tests ------------------------------------------------------------------------------


def test_a_ten_times_slower_replica_gets_a_small_share(stack: Stack) -> None:
    urls = [stack.mock(f"fast{i}", **FAST)[1] for i in range(2)]
    _, slow = stack.mock("slow", **{**FAST, "ttft_ms": 200})
    # Every setting at its default: the cold cost gives way to the first
    # samples, and streams past their first token weigh the default decode
    # weight (continuous batching, as the mock does).
    _, gw = stack.gateway([*urls, slow])
    asyncio.run(drive(gw, workers=8, max_requests=150, max_seconds=15, streams=always))  # warm
    before = scrape(gw)
    answers = asyncio.run(drive(gw, workers=8, max_requests=400, max_seconds=15, streams=always))
    after = scrape(gw)
    assert failed(answers) == []
    served = {u: successes(after, u) - successes(before, u) for u in [*urls, slow]}
    assert sum(served.values()) == len(answers)
    share = served[slow] / len(answers)
    # The target. Typically 0-1 % here (3-8 % before the decode
    # weight); a tighter bound is not asserted because on a starved shared
    # host the "fast" replicas really are slow for seconds at a time, and
    # then the router rightly uses the slow one (up to 6 % measured, see
    # docs/routing.md).
    assert share < 0.10, f"slow replica share {share:.1%}: {served}"
    # The two healthy replicas share the rest roughly evenly.
    assert min(served[u] for u in urls) > 0.3 * len(answers)


def test_a_killed_replica_fails_over_then_is_probed_and_rejoins(stack: Stack) -> None:
    replicas = [stack.mock(f"r{i}", **{**FAST, "output_tokens": 32}) for i in range(3)]
    victim, victim_url = replicas[2]
    _, gw = stack.gateway([u for _, u in replicas], **SCALED)
    marks: dict[str, float] = {}
    at_restart: list[str] = []
    stop = False

    def state() -> str:
        return breaker(scrape(gw), victim_url)

    def outage() -> None:
        nonlocal stop
        try:
            time.sleep(2)
            marks["kill"] = time.monotonic()
            victim.kill()
            marks["open"] = wait_for(lambda: state() == "open", "breaker open", 15)
            time.sleep(3)  # dead through at least one failed probe
            marks["ejections"] = total(scrape(gw), "gateway_backend_ejections", endpoint=victim_url)
            victim.start().wait_until(lambda: http_ok(f"{victim_url}/health"))
            marks["restart"] = time.monotonic()
            at_restart.append(state())
            served = successes(scrape(gw), victim_url)
            marks["rejoin"] = wait_for(
                lambda: state() == "closed" and successes(scrape(gw), victim_url) > served + 5,
                "breaker closed and traffic back",
            )
        finally:
            stop = True

    async def scenario() -> list[Answer]:
        load = drive(gw, workers=9, max_requests=6000, max_seconds=60, stop=lambda: stop)
        answers, _ = await asyncio.gather(load, asyncio.to_thread(outage))
        return answers

    answers = asyncio.run(scenario())
    kill = marks["kill"]
    assert {"open", "rejoin"} <= marks.keys()
    assert marks["ejections"] >= 1
    # Ejected when it came back, closed later: probes to it succeeded.
    assert at_restart[0] in ("open", "half_open")
    after = [a for a in answers if a.started >= kill]
    assert len(after) > 100 and len([a for a in after if not a.stream]) > 50
    assert failed(after) == []
    # The only failures: streams cut mid-way by the kill (already streaming).
    for a in failed(answers):
        assert a.streaming_began and a.started < kill < a.ended, a


def test_a_replica_answering_503_is_ejected_and_no_request_fails(stack: Stack) -> None:
    urls = [stack.mock(f"ok{i}", **FAST)[1] for i in range(2)]
    _, bad = stack.mock("bad", **FAST, fault="status:503")
    _, gw = stack.gateway([*urls, bad], **SCALED)
    # 150 requests, then on, 50 at a time, until the bad replica is ejected
    # (bounded): how many of the first 150 it draws depends on timing (after
    # each 503 the failure penalty keeps it away about a second), so a fixed
    # count made the ejection a matter of luck on a loaded machine.
    answers = asyncio.run(drive(gw, workers=6, max_requests=150, max_seconds=30))
    deadline = time.monotonic() + 30
    while not total(scrape(gw), "gateway_backend_ejections", endpoint=bad):
        assert time.monotonic() < deadline, "the replica answering 503 was never ejected"
        answers += asyncio.run(drive(gw, workers=6, max_requests=50, max_seconds=30))
    assert len(answers) >= 150
    assert failed(answers) == []
    m = scrape(gw)
    assert total(m, "gateway_backend_ejections", endpoint=bad) >= 1
    assert successes(m, bad) == 0
    tried_bad = total(m, "gateway_upstream_attempts_total", endpoint=bad)
    assert 3 <= tried_bad < 0.15 * len(answers)
    assert total(m, "gateway_retries_total") == tried_bad


def test_a_hung_replica_times_out_is_ejected_and_clients_see_no_errors(stack: Stack) -> None:
    urls = [stack.mock(f"ok{i}", **FAST)[1] for i in range(2)]
    _, hung = stack.mock("hung", **FAST, fault="hang")
    _, gw = stack.gateway([*urls, hung], **SCALED, ttft_timeout_s=0.5)
    stop = False

    def ejected() -> None:
        nonlocal stop
        try:
            wait_for(
                lambda: total(scrape(gw), "gateway_backend_ejections", endpoint=hung) >= 1,
                "the hung replica ejected",
                30,
            )
        finally:
            stop = True

    async def scenario() -> list[Answer]:
        # Streams only: a non-streamed request sent to a hung replica is not
        # bounded by the TTFT timeout (see the xfail test below). Once its
        # first timeouts have made it costly, the hung replica is only tried
        # again when that cost has decayed, so load runs until it is ejected.
        load = drive(
            gw, workers=6, max_requests=5000, max_seconds=40, stop=lambda: stop, streams=always
        )
        answers, _ = await asyncio.gather(load, asyncio.to_thread(ejected))
        return answers

    answers = asyncio.run(scenario())
    assert answers and failed(answers) == []
    m = scrape(gw)
    timeouts = total(m, "gateway_upstream_attempts_total", endpoint=hung, outcome="timeout")
    assert timeouts >= 3
    assert successes(m, hung) == 0


def test_when_every_replica_fails_the_gateway_still_tries_and_answers_cleanly(
    stack: Stack,
) -> None:
    _, erring = stack.mock("erring", **FAST, fault="status:503")
    _, hung = stack.mock("hung", **FAST, fault="hang")
    _, gw = stack.gateway([erring, hung], **SCALED, ttft_timeout_s=0.5)
    # Streams only: a non-streamed request to a hung replica is not bounded
    # by the TTFT timeout (see the xfail test below).
    answers = asyncio.run(
        drive(gw, workers=2, max_requests=16, max_seconds=60, streams=always, client_timeout_s=10)
    )
    assert len(answers) == 16
    for a in answers:
        assert a.status in (502, 504), a
        error = json.loads(a.detail)["error"]
        assert error["type"] == "upstream_error" and error["message"], error
    m = scrape(gw)
    assert {breaker(m, erring), breaker(m, hung)} != {"closed"}
    assert total(m, "gateway_panic_routings_total") > 0
    assert total(m, "gateway_upstream_attempts_total", endpoint=erring) > 0
    assert total(m, "gateway_upstream_attempts_total", endpoint=hung) > 0


@pytest.mark.xfail(
    strict=True,
    reason="gateway: a non-streamed attempt has no first-token bound, only "
    "GATEWAY_UNARY_TIMEOUT_S (120 s), so a request sent to a hung replica waits that long "
    "before failing over (docs/routing.md, where it falls short)",
)
def test_a_non_streamed_request_sent_to_a_hung_replica_fails_over(stack: Stack) -> None:
    _, ok = stack.mock("ok", **FAST)
    _, hung = stack.mock("hung", **FAST, fault="hang")
    gateway, gw = stack.gateway([ok, hung], ttft_timeout_s=0.5)
    # Four at once on a cold pool: P2C spreads them over both replicas.
    try:
        answers = asyncio.run(
            drive(gw, workers=4, max_requests=4, max_seconds=10, streams=never, client_timeout_s=3)
        )
    finally:
        gateway.kill()  # it would drain the hung upstream calls for 10 s on SIGTERM
    assert failed(answers) == []


def requests_seen(mock_url: str) -> float:
    m = scrape(mock_url)
    return total(m, "mockllm_requests_total", endpoint="/v1/chat/completions")


def test_each_model_goes_only_to_replicas_serving_it(stack: Stack) -> None:
    _, url_a = stack.mock("a", **FAST, models="model-a")
    _, url_b = stack.mock("b", **FAST, models="model-b")
    # Empty model lists: the gateway reads each backend's /v1/models.
    backends = [{"url": url_a, "models": []}, {"url": url_b, "models": []}]
    _, gw = stack.gateway(backends)
    for model in ("model-a", "model-b"):
        answers = asyncio.run(drive(gw, workers=4, max_requests=20, max_seconds=20, model=model))
        assert len(answers) == 20 and failed(answers) == []
    assert requests_seen(url_a) == 20
    assert requests_seen(url_b) == 20
    listed = httpx.get(f"{gw}/v1/models").json()["data"]
    assert sorted(m["id"] for m in listed) == ["model-a", "model-b"]
    reply = httpx.post(
        f"{gw}/v1/chat/completions", json=chat_body("x", stream=False, model="model-c"), timeout=10
    )
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"
    assert requests_seen(url_a) + requests_seen(url_b) == 40
