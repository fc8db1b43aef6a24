"""Chunks: the fast token encoder is byte-for-byte the OpenAI-shaped dict."""

import orjson
import pytest

from mockllm.render import Renderer, Usage


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("text", ["word", ' quote " back\\ slash', "line\nbreak", "ünï 😀", ""])
@pytest.mark.parametrize("finish_reason", [None, "length", "stop"])
def test_token_chunk_equals_the_dict_encoding(
    kind: str, text: str, finish_reason: str | None
) -> None:
    render = Renderer(kind, 'model "with" quotes')  # type: ignore[arg-type]
    assert render.token_chunk(text, finish_reason) == render.token_chunk_reference(
        text, finish_reason
    )


def test_chunks_are_sse_events_with_openai_fields() -> None:
    render = Renderer("chat", "m")
    chunk = render.token_chunk(" hi", "stop")
    assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n")
    body = orjson.loads(chunk[6:])
    assert body["id"] == render.id and body["object"] == "chat.completion.chunk"
    assert body["choices"][0] == {
        "index": 0,
        "delta": {"content": " hi"},
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage = orjson.loads(render.usage_chunk(Usage(3, 4))[6:])
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert Renderer("completion", "m").role_chunk() == b""


def test_ids_are_unique_per_response() -> None:
    assert Renderer("chat", "m").id != Renderer("chat", "m").id
    assert Renderer("completion", "m").id.startswith("cmpl-")
