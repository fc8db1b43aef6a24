"""Hostile and generated input against the running gateway, judged by its own OpenAPI document.

A real gateway (with the real embedder, the cache service on its embedded
store and a mock model server behind it) is started once for the module.
``schemathesis`` reads ``/openapi.json`` from it and sends, per operation, a
bounded number of schema-valid and schema-invalid requests; each answer must

- not be a server error (5xx),
- have a status code, content type and body the document declares,
- reject schema-invalid input (4xx),
- and, whenever it is an error, be in the OpenAI shape
  ``{"error": {"message", "type", "param", "code"}}`` (the document declares
  no error bodies, so this check of ours carries that part).

The check ``positive_data_acceptance`` (a schema-valid request must be
accepted) is not run: the document gives field types, while the gateway also
enforces deployment limits (``GATEWAY_MAX_TOKENS_LIMIT``, ``GATEWAY_MAX_MESSAGES``),
the embedder refuses blank texts, and the backend its own rules (the mock serves
``n == 1`` only); those 400s are right. Nothing else is tolerated. The tests
after the fuzz run pin gaps it found once (the document's references, content
types, admin statuses; headers limits on every route; integers beyond 64 bits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deploy.local.harness import Stack, chat_body

MODEL = "mock-llama-3-8b"
EMBED_MODEL = "all-MiniLM-L6-v2"
ADMIN_KEY = "fuzz-admin-key"
MAX_BODY = 65536  # small, so that generated bodies can reach it
MAX_HEADERS = 16384
# Per operation and generation mode; the whole run takes well under a minute.
EXAMPLES = 150
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
COMPLETION_ROUTES = {"POST /v1/chat/completions", "POST /v1/completions"}
ADMIN_ROUTES = {"GET /admin/cache/stats", "POST /admin/cache/invalidate"}


# -- the processes ------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with Stack(tmp_path_factory.mktemp("fuzz-logs")) as stack:
        _, embedder = stack.embedder()
        _, cache = stack.cache()
        _, mock = stack.mock(ttft_ms=0, inter_token_ms=0, output_tokens=8)
        _, url = stack.gateway(
            [mock],
            embedder_target=embedder,
            cache_target=cache,
            admin_key=ADMIN_KEY,
            max_body_bytes=MAX_BODY,
            max_header_bytes=MAX_HEADERS,
            log_requests="false",
        )
        probe = httpx.post(f"{url}/v1/embeddings", json={"model": EMBED_MODEL, "input": "hi"})
        assert probe.status_code == 200, probe.text  # the steered embeddings cases need the name
        yield url


def served_document(gw: str) -> dict[str, Any]:
    reply = httpx.get(f"{gw}/openapi.json", timeout=10)
    assert reply.status_code == 200
    return dict(reply.json())


# -- the fuzz run -------------------------------------------------------------------------


@dataclass
class Findings:
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)

    def add(self, label: str, title: str, detail: str) -> None:
        self.failures.setdefault((label, title), detail)

    def count(self, label: str, status: int) -> None:
        seen = self.statuses.setdefault(label, {})
        seen[status] = seen.get(status, 0) + 1


def openai_error_problem(reply: Any) -> str | None:
    """What is wrong with an error answer's shape, or None."""
    if reply.status_code < 400:
        return None
    try:
        error = json.loads(reply.content)["error"]
    except (ValueError, KeyError, TypeError):
        return "not an OpenAI error object"
    if not (isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys()):
        return "error object lacks message/type/param/code"
    if not (isinstance(error["message"], str) and error["message"]):
        return "error message is empty"
    if not isinstance(error["type"], str):
        return "error type is not a string"
    return None


def steer(label: str, case: Any, n: int) -> dict[str, str] | None:
    """Send every other positive case the served model name, and the admin key to admin routes.

    Random model names stop at 404 before the cache, the proxy and the
    embedder; random keys stop at 401. Half of the cases go further.
    """
    if n % 2:
        return None
    if label in ADMIN_ROUTES:
        return {"Authorization": f"Bearer {ADMIN_KEY}"}
    if isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = EMBED_MODEL if label == "POST /v1/embeddings" else MODEL
    return None


def fuzz(gw: str, operation: Any, mode: GenerationMode, findings: Findings) -> None:
    label = operation.label
    counter = iter(range(10**6))

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # no wall-clock judgement; each call has a client timeout
        database=None,  # nothing written to the work tree
        derandomize=True,  # the same inputs on every CI run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        headers = steer(label, case, next(counter)) if mode == GenerationMode.POSITIVE else None
        reply = case.call(base_url=gw, headers=headers, timeout=15)
        findings.count(label, reply.status_code)
        detail = f"{reply.status_code} {reply.text[:300]!r} for {case.as_curl_command()[:600]}"
        problem = openai_error_problem(reply)
        if problem:
            findings.add(label, f"OpenAI error shape: {problem}", detail)
        try:
            case.validate_response(reply, checks=CHECKS, headers=headers)
        except (Failure, FailureGroup) as exc:
            for failure in getattr(exc, "exceptions", [exc]):
                title = getattr(failure, "title", type(failure).__name__)
                findings.add(label, title, detail)

    one()


def test_fuzzing_the_documented_api_finds_no_server_error_and_no_undocumented_answer(
    gw: str,
) -> None:
    schema = schemathesis.openapi.from_dict(served_document(gw))
    findings = Findings()
    operations = []
    for result in schema.get_all_operations():
        # An operation schemathesis cannot read is a finding, not something to skip.
        assert isinstance(result, Ok), result.err()
        operations.append(result.ok())
    for operation in operations:
        fuzz(gw, operation, GenerationMode.POSITIVE, findings)
        # Negative cases need something to make invalid: the GET routes take
        # no parameters, so hypothesis could not generate one (Unsatisfiable).
        if operation.body or operation.query or operation.headers:
            fuzz(gw, operation, GenerationMode.NEGATIVE, findings)
    labels = {op.label for op in operations}
    assert COMPLETION_ROUTES | {"POST /v1/embeddings"} <= labels
    # The steering reached the real path: some answers of every POST route were 200.
    for label in COMPLETION_ROUTES | {"POST /v1/embeddings"}:
        assert findings.statuses[label].get(200, 0) > 0, findings.statuses[label]
    report = "\n".join(
        f"{lab}: {title}: {detail}" for (lab, title), detail in findings.failures.items()
    )
    assert not findings.failures, f"{len(findings.failures)} distinct findings:\n{report}"


# -- hand-made hostile input through real uvicorn -------------------------------------------------


def _chat(**extra: Any) -> dict[str, object]:
    return chat_body("hi", **extra)


def _chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // 16384):
        yield b" " * 16384


POST_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
HOSTILE: list[tuple[str, dict[str, Any], int]] = [
    ("body over the limit (declared)", {"content": b"{" + b" " * MAX_BODY + b"}"}, 413),
    ("body over the limit (chunked, no length)", {"content": "chunks"}, 413),
    ("not JSON", {"content": b"{"}, 400),
    ("not UTF-8", {"content": b'{"model": "\xff\xfe"}'}, 400),
    ("a lone surrogate", {"content": b'{"model": "\\ud800"}'}, 400),
    ("nested 30000 deep", {"content": b"[" * 30_000 + b"]" * 30_000}, 400),
    ("a JSON array", {"content": b"[]"}, 400),
    ("an integer of 5000 digits", {"content": b'{"seed": 1' + b"0" * 5000 + b"}"}, 400),
    ("NaN", {"content": b'{"model": "m", "temperature": NaN}'}, 400),
]
LIMITS: list[tuple[str, dict[str, Any], int]] = [
    ("513 messages", _chat(messages=[{"role": "user", "content": "x"}] * 513), 400),
    ("max_tokens over the limit", _chat(max_tokens=32769), 400),
    ("max_completion_tokens over the limit", _chat(max_completion_tokens=32769), 400),
    ("an unknown model", _chat(model="no-such-model"), 404),
    ("n out of range", _chat(n=17), 400),
    ("a role that does not exist", _chat(messages=[{"role": "robot", "content": "x"}]), 400),
    ("no messages", _chat(messages=[]), 400),
]


def test_hostile_bodies_and_limits_get_the_right_status_in_the_openai_shape(gw: str) -> None:
    problems: list[str] = []

    def judge(what: str, reply: httpx.Response, status: int) -> None:
        shape = openai_error_problem(reply)
        if reply.status_code != status or shape:
            problems.append(f"{what}: {reply.status_code} ({shape}) {reply.text[:200]!r}")

    with httpx.Client(base_url=gw, timeout=30) as client:
        for route in POST_ROUTES:
            for what, kwargs, status in HOSTILE:
                sent = dict(kwargs)
                if sent["content"] == "chunks":
                    sent["content"] = _chunks(3 * MAX_BODY)
                judge(f"{route} {what}", client.post(route, **sent), status)
        for what, body, status in LIMITS:
            judge(what, client.post("/v1/chat/completions", json=body), status)
        judge("GET on a POST route", client.get("/v1/chat/completions"), 405)
        judge("an unknown path", client.get("/v1/nothing-here"), 404)
        big = {"X-Padding": "a" * (MAX_HEADERS + 1)}
        for route in ("/v1/chat/completions", "/v1/completions"):
            judge(
                f"{route} headers over the limit",
                client.post(route, json=_chat(), headers=big),
                431,
            )
    assert problems == [], "\n".join(problems)


# -- what the fuzzer found once, pinned -------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_the_openapi_document_resolves_every_reference(gw: str) -> None:
    doc = served_document(gw)
    missing = []
    for ref in set(_refs(doc)):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(ref)
    assert missing == []


def test_the_openapi_document_declares_the_content_types_served(gw: str) -> None:
    paths = served_document(gw)["paths"]
    for path in ("/v1/chat/completions", "/v1/completions"):
        assert "text/event-stream" in paths[path]["post"]["responses"]["200"]["content"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


def test_the_openapi_document_describes_the_admin_routes(gw: str) -> None:
    paths = served_document(gw)["paths"]
    for path, method in (("/admin/cache/stats", "get"), ("/admin/cache/invalidate", "post")):
        assert {"401", "403", "503"} <= paths[path][method]["responses"].keys()
    invalidate = paths["/admin/cache/invalidate"]["post"]
    assert {"400", "413"} <= invalidate["responses"].keys()
    assert "application/json" in invalidate["requestBody"]["content"]


def test_every_post_route_refuses_headers_over_the_limit(gw: str) -> None:
    big = {"X-Padding": "a" * (MAX_HEADERS + 1), "Authorization": f"Bearer {ADMIN_KEY}"}
    for route, body in (
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": "hi"}),
        ("/admin/cache/invalidate", {"all": True}),
    ):
        reply = httpx.post(f"{gw}{route}", json=body, headers=big, timeout=10)
        assert reply.status_code == 431, (route, reply.status_code, reply.text[:200])


def test_integers_beyond_64_bits_get_a_clean_answer_not_a_500(gw: str) -> None:
    huge = 2**70
    cases = [
        ("/v1/chat/completions", _chat(temperature=0, seed=huge)),
        ("/v1/chat/completions", _chat(temperature=0, top_k=huge)),
        ("/v1/completions", {"model": MODEL, "temperature": 0, "prompt": [huge]}),
    ]
    for route, body in cases:
        reply = httpx.post(f"{gw}{route}", json=body, timeout=10)
        assert reply.status_code < 500, (route, body, reply.text[:200])
