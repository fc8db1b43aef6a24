"""The SSE watcher: the same facts however the stream is cut into reads.

Recorded-shape streams (vLLM's chat chunks with a final usage event,
llama.cpp's completion chunks, an error event inside a 200 stream, ping
comments, CRLF line ends) are fed whole, then split at every byte, then in
random pieces (hypothesis); every split must give what the whole gives.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol.sse import StreamWatch


def _event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat_chunk(content: str | None, finish: str | None = None) -> dict[str, object]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


VLLM = (
    _event(
        {
            **_chat_chunk(""),
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
        }
    )
    + b"".join(_event(_chat_chunk(t)) for t in ["Hel", "lo", " data:", " wor", "ld"])
    + _event(_chat_chunk(None, "stop"))
    + _event(
        {
            "id": "chatcmpl-1",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        }
    )
    + b"data: [DONE]\n\n"
)
LLAMACPP = (
    b": ping\n\n"
    + b"".join(
        _event({"id": "cmpl-1", "object": "text_completion", "choices": [{"text": t, "index": 0}]})
        for t in ["The", " cat", " sat"]
    )
    + b"data: [DONE]\n\n"
).replace(b"\n", b"\r\n")
ERROR_IN_200 = _event(_chat_chunk("Hi")) + _event(
    {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}
)
NO_FINAL_NEWLINE = _event(_chat_chunk("one")) + _event(_chat_chunk("two")) + b"data: [DONE]"
STREAMS = {
    "vllm": VLLM,
    "llamacpp": LLAMACPP,
    "error": ERROR_IN_200,
    "no-final-newline": NO_FINAL_NEWLINE,
}


def facts(chunks: list[bytes]) -> tuple[object, ...]:
    watch = StreamWatch()
    firsts = [i for i, chunk in enumerate(chunks) if watch.feed(chunk)]
    assert len(firsts) <= 1, "the first token is reported once"
    return (
        bool(firsts),
        watch.first_token_seen,
        watch.done,
        watch.error,
        watch.usage,
        watch.data_events,
        watch.completion_tokens,
        watch.completed,
    )


def test_whole_streams_give_the_expected_facts() -> None:
    # (first token, seen, done, error, usage, data events, tokens, completed)
    assert facts([VLLM]) == (
        True,
        True,
        True,
        None,
        {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        8,
        5,
        True,
    )
    assert facts([LLAMACPP]) == (True, True, True, None, None, 3, 3, True)
    error = {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}
    assert facts([ERROR_IN_200]) == (True, True, False, error, None, 2, 2, False)
    assert facts([NO_FINAL_NEWLINE])[2] is True, "[DONE] without a newline still ends the stream"


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_a_split_at_any_byte_changes_nothing(name: str) -> None:
    stream = STREAMS[name]
    whole = facts([stream])
    for cut in range(1, len(stream)):
        assert facts([stream[:cut], stream[cut:]]) == whole, f"split at byte {cut}"


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_one_byte_at_a_time_changes_nothing(name: str) -> None:
    stream = STREAMS[name]
    assert facts([stream[i : i + 1] for i in range(len(stream))]) == facts([stream])


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(STREAMS)), cuts=st.lists(st.integers(min_value=1), max_size=30))
def test_random_reads_change_nothing(name: str, cuts: list[int]) -> None:
    stream = STREAMS[name]
    points = sorted({c % len(stream) for c in cuts} - {0})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert b"".join(chunks) == stream
    assert facts(chunks) == facts([stream])


def test_the_first_token_is_when_its_event_completes_not_a_ping() -> None:
    watch = StreamWatch()
    assert not watch.feed(b": ping\n\n")
    assert not watch.feed(b'data: {"choices": [{"delta": {"content": "x"')
    assert watch.feed(b"}}]}\n\n")


def test_a_line_without_newline_is_bounded() -> None:
    watch = StreamWatch()
    for _ in range(40):
        watch.feed(b"x" * 65536)
    assert len(watch._partial) <= 1 << 20
