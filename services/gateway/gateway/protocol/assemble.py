"""A streamed answer assembled into the non-streamed OpenAI object, losing nothing.

What a stream carries and where it ends up (``protocol.fidelity`` lists the
same fields; a field met here that is not one of them is kept as it came, so
that the fidelity check refuses to store the answer rather than lose it):

- chunk: ``id``, ``created``, ``model`` from the first chunk; ``usage`` the
  last one sent (vLLM's ``continuous_usage_stats`` sends one per chunk);
  ``system_fingerprint``, ``service_tier`` as last seen; OpenAI's
  ``obfuscation`` (random padding, different in every chunk) and llama.cpp's
  ``timings`` (how fast that run was) are dropped;
- choice: ``finish_reason``, vLLM's ``stop_reason`` and SGLang's
  ``matched_stop`` (last non-null),
  ``logprobs`` concatenated list by list (chat: ``content``, ``refusal``;
  completions: ``tokens``, ``token_logprobs``, ``top_logprobs``,
  ``text_offset``);
- chat delta: ``content``, ``refusal`` and vLLM's ``reasoning_content`` /
  ``reasoning`` concatenated; ``tool_calls`` merged by ``index`` (``id`` and
  ``type`` as first sent, the function's ``name`` and ``arguments``
  concatenated; a name repeated as it was is not doubled); the legacy
  ``function_call`` the same way.

``content`` follows openai-python's own accumulation: the concatenated text
once any string was sent (vLLM's first chunk sends ``""``), else null (a
tool call or a refusal without text).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocol.calls import Kind
from gateway.protocol.fidelity import ENDING_FIELDS, MEASUREMENTS

_HANDLED_CHUNK_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage"})
_DROPPED_CHUNK_KEYS = frozenset({"obfuscation", *MEASUREMENTS})
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def from_stream(kind: Kind, raw: bytes) -> dict[str, Any] | None:
    """The non-streamed object of a stream's ``data:`` events, or None when the stream
    held an error event or an event that is not JSON. Completeness is the caller's."""
    choices: dict[int, _Choice] = {}
    head: dict[str, Any] = {}
    extra: dict[str, Any] = {}
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
        for key, value in event.items():
            if key not in _HANDLED_CHUNK_KEYS and key not in _DROPPED_CHUNK_KEYS and _some(value):
                extra[key] = value
        deltas = event.get("choices") or []
        if not isinstance(deltas, list):
            return None
        for delta in deltas:
            if not isinstance(delta, dict) or not isinstance(delta.get("index", 0), int):
                return None  # not an answer anyone could read back
            index = delta.get("index", 0)
            acc = choices.get(index)
            if acc is None:
                acc = choices[index] = _Choice(kind)
            acc.merge(delta)
    if not choices:
        return None
    answer: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": kind.object_name,
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [c.finish(i) for i, c in sorted(choices.items())],
        **extra,
    }
    if usage:
        answer["usage"] = usage
    return answer


def _some(value: object) -> bool:
    """A value that says something (null and empty containers say nothing)."""
    return value is not None and value != [] and value != {}


class _Choice:
    """One choice's deltas, merged as they come."""

    __slots__ = (
        "chat",
        "endings",
        "extra",
        "extra_message",
        "finish_reason",
        "function_call",
        "logprobs",
        "role",
        "texts",
        "tool_calls",
    )

    def __init__(self, kind: Kind) -> None:
        self.chat = kind is Kind.CHAT
        self.role = "assistant"
        self.texts: dict[str, list[str]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: Any = None
        self.endings: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.extra_message: dict[str, Any] = {}

    def merge(self, choice: dict[str, Any]) -> None:
        for key, value in choice.items():
            if key == "index":
                continue
            if key == "delta" and self.chat and isinstance(value, dict):
                self._merge_delta(value)
            elif key == "text" and not self.chat:
                self._text("content", value)
            elif key == "logprobs":
                self._merge_logprobs(value)
            elif key == "finish_reason":
                self.finish_reason = value if value is not None else self.finish_reason
            elif key in ENDING_FIELDS:
                if value is not None:
                    self.endings[key] = value
            elif _some(value):  # kept for the fidelity check, under a name no stored field has
                self.extra["stream_message" if key == "message" else key] = value

    def _text(self, field: str, value: object) -> None:
        if isinstance(value, str):
            self.texts.setdefault(field, []).append(value)
        elif _some(value):
            self.extra_message[field] = value

    def _merge_delta(self, delta: dict[str, Any]) -> None:
        for key, value in delta.items():
            if key in _TEXT_FIELDS:
                self._text(key, value)
            elif key == "role":
                self.role = value or self.role
            elif key == "tool_calls" and isinstance(value, list):
                for call in value:
                    self._merge_tool_call(call)
            elif key == "function_call" and isinstance(value, dict):
                self.function_call = _merge_function(self.function_call or {}, value)
            elif _some(value):
                self.extra_message[key] = value

    def _merge_tool_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            self.extra_message["tool_calls"] = call
            return
        index = call.get("index", len(self.tool_calls))
        if not isinstance(index, int):
            self.extra_message["tool_calls"] = call
            return
        acc = self.tool_calls.setdefault(index, {})
        for key, value in call.items():
            if key == "index" or value is None:
                continue
            if key in ("id", "type"):
                acc.setdefault(key, value)
            elif key == "function" and isinstance(value, dict):
                acc["function"] = _merge_function(acc.get("function") or {}, value)
            else:
                acc[key] = value  # not a field a replay knows: the fidelity check sees it

    def _merge_logprobs(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            self.extra["logprobs"] = value  # overrides the merged ones: the check sees it
            return
        acc = self.logprobs if self.logprobs is not None else {}
        self.logprobs = acc
        for key, part in value.items():
            current = acc.get(key)
            if isinstance(part, list) and isinstance(current, list):
                current.extend(part)
            elif isinstance(part, list) and current is None:
                acc[key] = list(part)
            elif part is not None:
                self.extra["logprobs"] = value  # a scalar cannot be merged
            else:
                acc.setdefault(key, None)

    def finish(self, index: int) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index}
        if self.chat:
            choice["message"] = self._message()
        else:
            choice["text"] = "".join(self.texts.get("content", ()))
            choice.update(self.extra_message)
        logprobs = self.logprobs or {}
        choice["logprobs"] = logprobs if any(_some(v) for v in logprobs.values()) else None
        choice["finish_reason"] = self.finish_reason
        choice.update(self.endings)
        choice.update(self.extra)
        return choice

    def _message(self) -> dict[str, Any]:
        content = self.texts.get("content")
        message: dict[str, Any] = {
            "role": self.role,
            "content": None if content is None else "".join(content),
        }
        for field in _TEXT_FIELDS[1:]:
            text = "".join(self.texts.get(field, ()))
            if text:
                message[field] = text
        if self.function_call is not None:
            message["function_call"] = self.function_call
        if self.tool_calls:
            message["tool_calls"] = [_tool_call(c) for _, c in sorted(self.tool_calls.items())]
        message.update(self.extra_message)
        return message


def _merge_function(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    for key, value in delta.items():
        if value is None:
            continue
        if key == "name" and isinstance(value, str):
            name = acc.get("name", "")
            acc["name"] = name if value == name else name + value
        elif key == "arguments" and isinstance(value, str):
            acc["arguments"] = acc.get("arguments", "") + value
        else:
            acc[key] = value
    acc.setdefault("name", "")
    acc.setdefault("arguments", "")
    return acc


def _tool_call(acc: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed form: no ``index``, ``type`` "function" unless another was sent."""
    call = {"id": acc.get("id"), "type": acc.get("type", "function")}
    call.update((k, v) for k, v in acc.items() if k not in call)
    return call
