"""A complete answer: assembled from a stream or a body, replayed as JSON or SSE.

The complete form of an answer is the non-streamed OpenAI object. The cache
stores an answer once, as the non-streamed OpenAI object
(``chat.completion`` or ``text_completion``), whichever way it was first
served: a streamed miss is assembled from the chunks the proxy copied. A hit is
replayed in the form the new request asks for, with a fresh id and ``created``
time: as JSON, or as SSE chunks in the backend's own format (role chunk,
content chunks, a final chunk with ``finish_reason``, a usage chunk when
``stream_options.include_usage`` asks for it, ``data: [DONE]``).

Only whole, successful answers are stored: every choice has a
``finish_reason`` (a stream cut off by the server, as llama.cpp does when
interrupted, has none).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from gateway.protocol.calls import Kind

_REPLAY_CHUNK_CHARS = 48


def from_body(body: bytes) -> bytes | None:
    """A non-streamed answer, kept if it is complete."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not _complete(data.get("choices")):
        return None
    return orjson.dumps(data)


def assemble(kind: Kind, *, stream: bool, raw: bytes) -> bytes | None:
    """The complete answer in a streamed or a non-streamed upstream body, or None
    when it is not one (an error, a cut stream, a choice without ``finish_reason``)."""
    return from_stream(kind, raw) if stream else from_body(raw)


def usage_of(body: bytes) -> tuple[int, int]:
    """``(prompt_tokens, completion_tokens)`` of a non-streamed answer; zeros when absent."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0, 0
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def from_stream(kind: Kind, raw: bytes) -> bytes | None:
    """Assemble a streamed answer's chunks into the non-streamed object."""
    choices: dict[int, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    usage = None
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or event.get("error"):
            return None
        head = head or event
        usage = event.get("usage") or usage
        for delta in event.get("choices") or ():
            _merge(kind, choices.setdefault(delta.get("index", 0), {}), delta)
    if not choices:
        return None
    answer = {
        "id": head.get("id", ""),
        "object": kind.object_name,
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [_finish(kind, i, c) for i, c in sorted(choices.items())],
    }
    if usage:
        answer["usage"] = usage
    return orjson.dumps(answer) if _complete(answer["choices"]) else None


def _merge(kind: Kind, acc: dict[str, Any], delta: dict[str, Any]) -> None:
    if kind is Kind.CHAT:
        d = delta.get("delta") or {}
        acc["role"] = d.get("role") or acc.get("role", "assistant")
        acc["content"] = acc.get("content", "") + (d.get("content") or "")
    else:
        acc["text"] = acc.get("text", "") + (delta.get("text") or "")
    if delta.get("finish_reason"):
        acc["finish_reason"] = delta["finish_reason"]


def _finish(kind: Kind, index: int, acc: dict[str, Any]) -> dict[str, Any]:
    reason = acc.get("finish_reason")
    if kind is Kind.CHAT:
        message = {"role": acc.get("role", "assistant"), "content": acc.get("content", "")}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
    return {"index": index, "text": acc.get("text", ""), "logprobs": None, "finish_reason": reason}


def _complete(choices: object) -> bool:
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    )


def _fresh_id(kind: Kind) -> str:
    return kind.id_prefix + uuid.uuid4().hex


def text_of(answer: bytes) -> str:
    """The generated text of a stored answer (first choice)."""
    data = orjson.loads(answer)
    choice = data["choices"][0]
    return str((choice.get("message") or {}).get("content") or choice.get("text") or "")


def replay_json(stored: bytes) -> bytes:
    data = orjson.loads(stored)
    data["id"] = _fresh_id(Kind.of_object(data.get("object")))
    data["created"] = int(time.time())
    return orjson.dumps(data)


def replay_sse(stored: bytes, *, include_usage: bool) -> bytes:
    """The whole stream in one buffer: a hit is sent in one write."""
    data = orjson.loads(stored)
    kind = Kind.of_object(data.get("object"))
    chat = kind is Kind.CHAT
    head = {
        "id": _fresh_id(kind),
        "object": kind.chunk_object,
        "created": int(time.time()),
        "model": data.get("model", ""),
    }
    usage_field = {"usage": None} if include_usage else {}
    out: list[bytes] = []
    for choice in data["choices"]:
        index = choice.get("index", 0)
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        pieces = _split(text or "")
        if chat:
            out.append(
                _event(
                    head, index, {"delta": {"role": "assistant", "content": ""}}, None, usage_field
                )
            )
        for piece in pieces:
            body = {"delta": {"content": piece}} if chat else {"text": piece}
            out.append(_event(head, index, body, None, usage_field))
        last: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
        out.append(_event(head, index, last, choice.get("finish_reason"), usage_field))
    if include_usage and data.get("usage"):
        out.append(
            b"data: " + orjson.dumps({**head, "choices": [], "usage": data["usage"]}) + b"\n\n"
        )
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def _event(
    head: dict[str, Any],
    index: int,
    body: dict[str, Any],
    finish: str | None,
    extra: dict[str, Any],
) -> bytes:
    choice = {"index": index, **body, "logprobs": None, "finish_reason": finish}
    return b"data: " + orjson.dumps({**head, "choices": [choice], **extra}) + b"\n\n"


def _split(text: str) -> list[str]:
    """Pieces of about ``_REPLAY_CHUNK_CHARS`` characters, cut after whitespace."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + _REPLAY_CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind(" ", start + 1, end)
            end = cut if cut > start else end
        pieces.append(text[start:end])
        start = end
    return pieces
