"""A complete answer: assembled from a stream or a body, replayed as JSON or SSE.

The complete form of an answer is the non-streamed OpenAI object. The cache
stores an answer once, as the non-streamed OpenAI object
(``chat.completion`` or ``text_completion``), whichever way it was first
served: a streamed miss is assembled from the chunks the proxy copied
(``protocol.assemble``: everything the stream carried, tool calls, refusal,
reasoning, log probabilities, fingerprint and usage included). A hit is
replayed in the form the new request asks for (``protocol.replay``), with a
fresh id and ``created`` time: as JSON, or as SSE chunks in the backend's own
format. ``unreplayable`` names what a replay could not give back
(``protocol.fidelity``); such an answer is not stored.

Only whole, successful answers are stored: every choice has a
``finish_reason`` (a stream cut off by the server, as llama.cpp does when
interrupted, has none).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocol import assemble, fidelity
from gateway.protocol.calls import Kind
from gateway.protocol.replay import replay_json, replay_sse

__all__ = [
    "from_body",
    "from_stream",
    "replay_json",
    "replay_sse",
    "text_of",
    "unreplayable",
    "usage_of",
]


def from_body(body: bytes) -> bytes | None:
    """A non-streamed answer, kept as it came (but for ``fidelity.MEASUREMENTS``) if
    it is complete."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not _complete(data.get("choices")):
        return None
    for field in fidelity.MEASUREMENTS.intersection(data):
        del data[field]
    return orjson.dumps(data)


def from_stream(kind: Kind, raw: bytes) -> bytes | None:
    """Assemble a streamed answer's chunks into the non-streamed object, if complete."""
    answer = assemble.from_stream(kind, raw)
    if answer is None or not _complete(answer["choices"]):
        return None
    return orjson.dumps(answer)


def unreplayable(stored: bytes) -> str | None:
    """The first field of a complete answer that a replay would not give back as it
    was (for the log line), or None when the answer may be stored."""
    try:
        data = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return "json"
    return fidelity.unreplayable(data) if isinstance(data, dict) else "json"


def usage_of(body: bytes) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a non-streamed answer (a response
    object's ``input_tokens`` / ``output_tokens``); zeros when absent."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0, 0
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    tokens_in = usage.get("prompt_tokens") or usage.get("input_tokens")  # (/v1/responses)
    tokens_out = usage.get("completion_tokens") or usage.get("output_tokens")
    return int(tokens_in or 0), int(tokens_out or 0)


def id_of(body: bytes) -> str:
    """The ``id`` of a whole answer (a response object's, for pinning), or ``""``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    answer_id = data.get("id") if isinstance(data, dict) else None
    return answer_id if isinstance(answer_id, str) else ""


def text_of(answer: bytes) -> str:
    """The generated text of a stored answer (first choice)."""
    data = orjson.loads(answer)
    choice = data["choices"][0]
    return str((choice.get("message") or {}).get("content") or choice.get("text") or "")


def _complete(choices: Any) -> bool:
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    )
