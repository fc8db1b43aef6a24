"""The Responses stream watcher: how a /v1/responses stream ends, fails and counts,
whatever the byte boundaries of the chunks it arrives in."""

from __future__ import annotations

import orjson
import pytest

from gateway.protocol.responses import ResponsesWatch, error_event, first_error
from mockllm.render import Usage
from mockllm.responses import ResponsesRenderer


def _stream(tokens: list[str], finish: str = "stop") -> bytes:
    render = ResponsesRenderer("m", Usage(5, len(tokens)))
    out = render.role_chunk()
    for i, token in enumerate(tokens):
        out += render.token_chunk(token, finish if i == len(tokens) - 1 else None)
    return out


def _watch(raw: bytes, cut: int | None = None) -> ResponsesWatch:
    watch = ResponsesWatch()
    if cut is None:
        watch.feed(raw)
    else:
        watch.feed(raw[:cut])
        watch.feed(raw[cut:])
    return watch


def test_a_whole_stream_is_completed_with_its_usage_and_id() -> None:
    raw = _stream(["a", " b", " c"])
    watch = _watch(raw)
    assert watch.completed and watch.first_token_seen
    assert watch.usage == {"prompt_tokens": 5, "completion_tokens": 3}
    assert watch.completion_tokens == 3
    assert watch.answer_id.startswith("resp_")
    assert watch.sequence == raw.count(b"event: ") - 1  # numbered from 0


@pytest.mark.parametrize("cut", range(0, 2000, 7))
def test_the_facts_do_not_depend_on_where_the_chunks_split(cut: int) -> None:
    raw = _stream(["one", " two", " three", " four"])
    whole = _watch(raw)
    split = _watch(raw, min(cut, len(raw)))
    assert (split.done, split.error, split.usage, split.answer_id, split.data_events) == (
        whole.done,
        whole.error,
        whole.usage,
        whole.answer_id,
        whole.data_events,
    )


def test_a_length_stop_is_a_whole_answer_too() -> None:
    watch = _watch(_stream(["a", " b"], finish="length"))
    assert watch.completed


def test_a_stream_cut_before_its_ending_event_is_not_done() -> None:
    raw = _stream(["a", " b", " c"])
    watch = _watch(raw[: raw.index(b"event: response.output_text.done")])
    assert not watch.done and watch.error is None and watch.first_token_seen


def test_response_failed_and_error_events_are_errors() -> None:
    render = ResponsesRenderer("m", Usage(1, 1))
    failed = _watch(render.role_chunk() + render.token_chunk("x") + render.error("boom"))
    assert failed.error is not None and failed.error["message"] == "boom"
    assert not failed.completed
    plain = b'event: error\ndata: {"type":"error","code":"server_error","message":"no"}\n\n'
    assert _watch(plain).error == {"message": "no", "code": "server_error"}


def test_an_error_before_any_token_is_found_in_the_first_chunk() -> None:
    render = ResponsesRenderer("m", Usage(1, 1))
    assert first_error(render.role_chunk()) is None
    early = first_error(render.role_chunk() + render.error("not now"))
    assert early is not None and orjson.loads(early)["error"]["message"] == "not now"
    late = render.role_chunk() + render.token_chunk("x") + render.error("late")
    assert first_error(late) is None  # a token went first: the client will see it


def test_the_gateways_error_event_is_typed_and_carries_the_openai_error() -> None:
    event = error_event({"message": "cut", "type": "upstream_error", "code": None}, 41)
    assert event.startswith(b"event: error\ndata: ")
    data = orjson.loads(event.split(b"data: ", 1)[1])
    assert data["type"] == "error" and data["sequence_number"] == 42
    assert data["message"] == "cut" and data["error"]["type"] == "upstream_error"
