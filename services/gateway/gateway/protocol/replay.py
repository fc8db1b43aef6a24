"""A stored answer replayed as JSON or as SSE, with a fresh ``id`` and ``created``.

JSON is the stored object itself. SSE rebuilds the chunks a backend sends, per
choice in this order (vLLM's; OpenAI's has the same shapes):

1. the role: ``{"role": "assistant", "content": ""}`` (``null`` when the
   stored content is null: a tool call or a refusal without text);
2. reasoning (``reasoning_content`` and/or ``reasoning``, one delta carrying
   both names when both were sent with the same text), before the content, as
   vLLM streams it;
3. the content (or a completion's ``text``): pieces of about 48 characters cut
   after a space, or one token per chunk with its ``logprobs`` entry when the
   answer has log probabilities;
4. a refusal, the same way;
5. the legacy ``function_call``, then each tool call: a first delta with its
   ``index``, ``id``, ``type`` and function ``name`` (``arguments: ""``), then
   its arguments in pieces;
6. the last chunk: an empty delta, ``finish_reason`` (and vLLM's
   ``stop_reason``, SGLang's ``matched_stop``);

then, when ``stream_options.include_usage`` asks for it, the usage chunk, and
``data: [DONE]``. ``system_fingerprint`` and ``service_tier`` are on every chunk.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from gateway.protocol.calls import Kind
from gateway.protocol.fidelity import ENDING_FIELDS, chat_pieces, text_pieces

REPLAY_CHUNK_CHARS = 48
_CHUNK_FIELDS = ("system_fingerprint", "service_tier")


def _fresh_id(kind: Kind) -> str:
    return kind.id_prefix + uuid.uuid4().hex


def replay_json(stored: bytes) -> bytes:
    data = orjson.loads(stored)
    data["id"] = _fresh_id(Kind.of_object(data.get("object")))
    data["created"] = int(time.time())
    return orjson.dumps(data)


def replay_sse(stored: bytes, *, include_usage: bool) -> bytes:
    """The whole stream in one buffer: a hit is sent in one write."""
    data = orjson.loads(stored)
    kind = Kind.of_object(data.get("object"))
    head = {
        "id": _fresh_id(kind),
        "object": kind.chunk_object,
        "created": int(time.time()),
        "model": data.get("model", ""),
        **{f: data[f] for f in _CHUNK_FIELDS if data.get(f) is not None},
    }
    tail = {"usage": None} if include_usage else {}
    out: list[bytes] = []
    for choice in data["choices"]:
        index = choice.get("index", 0)
        bodies = _chat(choice) if kind is Kind.CHAT else _text(choice)
        for body, logprobs in bodies:
            out.append(_event(head, index, body, logprobs, None, tail))
        last: dict[str, Any] = {"delta": {}} if kind is Kind.CHAT else {"text": ""}
        last.update((f, choice[f]) for f in ENDING_FIELDS if choice.get(f) is not None)
        out.append(_event(head, index, last, None, choice.get("finish_reason"), tail))
    if include_usage and data.get("usage"):
        usage = {**head, "choices": [], "usage": data["usage"]}
        out.append(b"data: " + orjson.dumps(usage) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


Body = tuple[dict[str, Any], Any]  # a chunk's choice fields and its logprobs


def _chat(choice: dict[str, Any]) -> Iterator[Body]:
    message = choice.get("message") or {}
    logprobs = choice.get("logprobs") or {}
    content = message.get("content")
    yield (
        {"delta": {"role": message.get("role") or "assistant", "content": _opening(content)}},
        None,
    )
    yield from _reasoning(message)
    for field in ("content", "refusal"):
        pieces = chat_pieces(logprobs.get(field), message.get(field))
        if pieces:
            for piece, entry in zip(pieces, logprobs[field], strict=True):
                lp = {**dict.fromkeys(logprobs), field: [entry]}
                yield {"delta": {field: piece}}, lp
        else:
            for piece in split(message.get(field) or ""):
                yield {"delta": {field: piece}}, None
    legacy = message.get("function_call")
    if legacy:
        name = {"name": legacy.get("name", ""), "arguments": ""}
        yield {"delta": {"function_call": name}}, None
        for piece in split(legacy.get("arguments") or ""):
            yield {"delta": {"function_call": {"arguments": piece}}}, None
    for index, call in enumerate(message.get("tool_calls") or ()):
        yield from _tool_call(index, call)


def _opening(content: object) -> str | None:
    return None if content is None else ""


def _reasoning(message: dict[str, Any]) -> Iterator[Body]:
    old, new = message.get("reasoning_content"), message.get("reasoning")
    if old and old == new:
        for piece in split(old):
            yield {"delta": {"reasoning_content": piece, "reasoning": piece}}, None
        return
    for field, text in (("reasoning_content", old), ("reasoning", new)):
        for piece in split(text or ""):
            yield {"delta": {field: piece}}, None


def _tool_call(index: int, call: dict[str, Any]) -> Iterator[Body]:
    function = call.get("function") or {}
    first: dict[str, Any] = {"index": index}
    if call.get("id") is not None:
        first["id"] = call["id"]
    first["type"] = call.get("type") or "function"
    first["function"] = {"name": function.get("name", ""), "arguments": ""}
    yield {"delta": {"tool_calls": [first]}}, None
    for piece in split(function.get("arguments") or ""):
        yield {"delta": {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}}, None


def _text(choice: dict[str, Any]) -> Iterator[Body]:
    text = choice.get("text") or ""
    logprobs = choice.get("logprobs")
    tokens = text_pieces(logprobs, text)
    if not tokens:
        for piece in split(text):
            yield {"text": piece}, None
        return
    assert isinstance(logprobs, dict)
    for i, token in enumerate(tokens):
        lp = {k: (None if v is None else v[i : i + 1]) for k, v in logprobs.items()}
        yield {"text": token}, lp


def _event(
    head: dict[str, Any],
    index: int,
    body: dict[str, Any],
    logprobs: Any,
    finish: str | None,
    tail: dict[str, Any],
) -> bytes:
    choice = {"index": index, **body, "logprobs": logprobs, "finish_reason": finish}
    for field in ENDING_FIELDS:  # after finish_reason, as vLLM and SGLang order them
        if field in body:
            choice[field] = choice.pop(field)
    return b"data: " + orjson.dumps({**head, "choices": [choice], **tail}) + b"\n\n"


def split(text: str) -> list[str]:
    """Pieces of about ``REPLAY_CHUNK_CHARS`` characters, cut after whitespace."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + REPLAY_CHUNK_CHARS)
        if end < len(text):
            cut = text.rfind(" ", start + 1, end)
            end = cut if cut > start else end
        pieces.append(text[start:end])
        start = end
    return pieces
