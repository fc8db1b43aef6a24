"""Token budgets, pure: the bucket refuses before the limit is passed, gives back what a
request did not use, and says so the way OpenAI's headers do; usage asked and hidden."""

from __future__ import annotations

import orjson
import pytest

from gateway.tenancy.tokens import LocalBucket, duration
from gateway.tenancy.usage import ask_for_usage, hide_usage


def test_a_minute_of_tokens_then_refused_with_the_wait() -> None:
    bucket = LocalBucket(600)  # 10 tokens a second
    assert bucket.take(400, 0.0).allowed
    level = bucket.take(300, 0.0)
    assert not level.allowed
    assert level.remaining == 200
    assert level.wait_s == pytest.approx(10.0)  # 100 more tokens: 10 s
    assert bucket.take(200, 0.0).allowed  # refusals took nothing
    assert not bucket.take(1, 0.0).allowed
    assert bucket.take(100, 10.0).allowed


def test_giving_back_what_was_not_used_and_taking_what_was_short() -> None:
    bucket = LocalBucket(600)
    assert bucket.take(500, 0.0).allowed  # reserved: prompt + max_tokens
    assert bucket.take(-450, 0.0, force=True).remaining == 550  # used 50
    assert bucket.take(-10_000, 0.0, force=True).remaining == 600  # never above full
    assert bucket.take(600, 0.0).allowed
    forced = bucket.take(100, 0.0, force=True)  # the estimate was short: taken anyway
    assert forced.allowed and forced.remaining == -100
    assert not bucket.take(1, 5.0).allowed  # it is paid back before anything else


def test_reset_durations_read_as_openai_writes_them() -> None:
    assert duration(0.02) == "20ms"
    assert duration(1.0) == "1s"
    assert duration(59.2) == "1m0s"
    assert duration(90) == "1m30s"
    assert duration(360) == "6m0s"


def test_usage_is_asked_for_unless_the_client_did() -> None:
    asked = ask_for_usage(b'{"stream":true,"stream_options":{"other":1}}')
    assert asked is not None
    assert orjson.loads(asked)["stream_options"] == {"other": 1, "include_usage": True}
    assert ask_for_usage(b'{"stream":true,"stream_options":{"include_usage":true}}') is None


def test_only_the_usage_event_is_hidden() -> None:
    tokens = b'data: {"choices":[{"delta":{"content":"usage"}}],"usage":null}\n\n'
    usage = b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\n'
    done = b"data: [DONE]\n\n"
    assert hide_usage(tokens + usage + done) == tokens + done
    assert hide_usage(tokens) == tokens
    assert hide_usage(usage[:30]) == usage[:30]  # a split event passes as it came
