"""A llama.cpp replica killed mid-stream under load: every stream completes, and the
text after the cut is the model's own continuation.

llama-cpp-python's chat route cannot continue a partial answer (it renders a
last assistant message as a closed turn and opens a new one), so its backends
continue on the completions route with the conversation rendered by the
model's chat template (``llamacpp.CONTINUATION``; ``proxy.continuation``).

Load: 6 concurrent streams on two replicas of one thread each, which serve
one request at a time: three per replica, the later ones waiting their turn
(a few seconds on this 2-core machine). More would only queue longer behind
the one that decodes; the mock's test carries 30. The first stream (192
tokens) is the one cut: its replica is killed once the other five (48
tokens; the router sends most of them to the idle replica) are streaming.

A model's continuation is not the uninterrupted answer token for token: the
text already sent is evaluated in one batch instead of one token at a time,
and a near tie between two tokens can go the other way. So the check is the
one that holds: the text after the cut equals what the surviving replica
generates, asked directly, for the conversation plus the text before the cut
(the gateway's log says where each cut fell).
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from deploy.local import llamacpp
from deploy.local.harness import Stack, wait_for
from deploy.local.procs import Proc
from gateway.balance.config import ContinuationConfig
from tests.integration.realbackend.client import (
    MODEL,
    NO_EOS,
    Background,
    chat,
    content,
    llama_gateway,
    pending,
)

pytestmark = pytest.mark.realbackend

STREAMS = 6
TOKENS = 48
TEMPLATE = ContinuationConfig(**llamacpp.CONTINUATION)  # type: ignore[arg-type]
FLUSH = TEMPLATE.render([{"role": "user", "content": "0"}])


def question(n: int) -> dict[str, object]:
    # Each starts with its own token: a replica's prompt cache then reuses the same
    # prefix (the system message) for the gateway's continuation and the check below
    # (see flush).
    return chat(f"{n + 3}. What should a beginner know about topic {uuid.uuid4().hex[:4]}?",
                temperature=0, max_tokens=TOKENS, logit_bias=NO_EOS)  # fmt: skip


def flush(url: str) -> None:
    """One token for a conversation that shares only the system message with ours.

    llama-cpp-python keeps the previous prompt's tokens evaluated and evaluates
    only what differs. Asked the same prompt twice in a row, it evaluates just
    the last token again, alone, where the first time it was part of a batch:
    a near tie can then go the other way. After this, each prompt is evaluated
    from the same place (the end of the shared prefix) in one batch."""
    httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": FLUSH, "max_tokens": 1},
               timeout=120).raise_for_status()  # fmt: skip


def completion(url: str, prompt: str, tokens: int) -> str:
    flush(url)
    body = {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": tokens}
    reply = httpx.post(f"{url}/v1/completions", json={**body, "logit_bias": NO_EOS}, timeout=120)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["text"])


def continued(proc: Proc) -> dict[str, dict[str, object]]:
    """The gateway's ``stream_continued`` log lines, by request id."""
    found = {}
    for line in proc.log_path.read_text().splitlines():
        if '"stream_continued"' in line:
            event = json.loads(line)
            found[str(event["request_id"])] = event
    return found


def test_the_template_renders_what_the_chat_route_renders(pair: tuple[str, str]) -> None:
    """The completions route given the rendered conversation answers as the chat route."""
    asked = question(0)
    flush(pair[0])
    chat_reply = httpx.post(f"{pair[0]}/v1/chat/completions", json=asked, timeout=120).json()
    whole = chat_reply["choices"][0]["message"]["content"]
    rendered = TEMPLATE.render(asked["messages"])  # type: ignore[arg-type]
    assert completion(pair[0], rendered, TOKENS) == whole


def test_streams_on_a_killed_replica_end_with_the_models_own_continuation(
    cluster: Stack,
) -> None:
    procs = dict(cluster.llamacpp() for _ in range(2))
    by_url = {url: proc for proc, url in procs.items()}
    gw_proc, gw = llama_gateway(cluster, list(by_url), cache_enabled="false")
    asked = {uuid.uuid4().hex: question(n) for n in range(STREAMS)}
    anchor, *others = asked
    asked[anchor]["max_tokens"] = 4 * TOKENS  # under way for seconds: the one to cut
    streams = {
        anchor: Background(f"{gw}/v1/chat/completions", {**asked[anchor], "stream": True}, anchor)
    }
    assert streams[anchor].first_data.wait(60), streams[anchor].lines
    (victim,) = [name for name, n in pending(gw).items() if n == 1]  # the anchor's replica
    for rid in others:  # the load: some wait behind the anchor, some go to the other
        streams[rid] = Background(f"{gw}/v1/chat/completions", {**asked[rid], "stream": True}, rid)
    # Killed once the load flows (a second stream has tokens), the anchor well under way.
    wait_for(lambda: any(streams[rid].first_data.is_set() for rid in others), "the load", 60)
    by_url[victim].kill()
    (survivor,) = set(by_url) - {victim}
    results = {rid: s.result() for rid, s in streams.items()}
    for rid, lines in results.items():
        assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1, lines[-3:]
        assert not any('"error"' in line for line in lines), lines[-3:]
        assert content(lines), rid
    cuts = continued(gw_proc)
    assert int(cuts[anchor]["sent_tokens"]) > 0, cuts  # type: ignore[call-overload]
    for rid, cut in cuts.items():
        assert cut["endpoint"] == survivor and cut["route"] == "/v1/completions", cut
        text = content(results[rid])
        sent, sent_tokens = int(cut["sent_chars"]), int(cut["sent_tokens"])  # type: ignore[call-overload]
        messages = asked[rid]["messages"]
        left = int(asked[rid]["max_tokens"]) - sent_tokens  # type: ignore[call-overload]
        own = completion(survivor, TEMPLATE.render(messages) + text[:sent], left)  # type: ignore[arg-type]
        assert text[sent:] == own, f"{rid}: after the cut at {sent} chars"
