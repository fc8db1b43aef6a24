"""What vLLM / the OpenAI API send: response bodies and SSE chunks.

Streamed chat: a first chunk with ``delta.role`` (and empty content), then one
chunk per token, ``finish_reason`` on the last content chunk, an optional usage
chunk (``choices: []``) when ``stream_options.include_usage`` is set, then
``data: [DONE]``. Streamed completions are the same without the role chunk.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from mockllm.errors import error_body
from mockllm.schema import Kind

DONE = b"data: [DONE]\n\n"
_END = b"}]}\n\n"
PING = b": ping\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Renderer:
    """Builds every body and chunk of one response, with one id and timestamp."""

    __slots__ = ("_token_head", "created", "id", "kind", "model")
    end = DONE  # the stream's last bytes

    def __init__(self, kind: Kind, model: str) -> None:
        self.kind = kind
        self.model = model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        # Token chunks differ only in the text and finish_reason: encode the rest once.
        # Byte-for-byte what orjson makes of the full dict (a unit test holds this).
        head = self._chunk([]).removesuffix(b'"choices":[]}\n\n')
        field = b'"delta":{"content":' if kind == "chat" else b'"text":'
        self._token_head = head + b'"choices":[{"index":0,' + field

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": choices,
                **extra,
            }
        )

    def role_chunk(self) -> bytes:
        """The chat stream's first chunk; completions have none."""
        if self.kind != "chat":
            return b""
        delta = {"role": "assistant", "content": ""}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def token_chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        close = b'},"logprobs":null,' if self.kind == "chat" else b',"logprobs":null,'
        reason = b"null" if finish_reason is None else orjson.dumps(finish_reason)
        return self._token_head + orjson.dumps(text) + close + b'"finish_reason":' + reason + _END

    def token_chunk_reference(self, text: str, finish_reason: str | None = None) -> bytes:
        """The same chunk built from a dict: what :meth:`token_chunk` must equal."""
        if self.kind == "chat":
            choice = {"index": 0, "delta": {"content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        return self._chunk([choice])

    def error(self, message: str) -> bytes:
        """A failure mid-stream: vLLM's error event, then the end."""
        return error_event(message) + DONE

    def usage_chunk(self, usage: Usage) -> bytes:
        return self._chunk([], usage=usage.as_dict())

    def response(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        """The non-streamed body."""
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage.as_dict(),
        }


def error_event(message: str, status: int = 500) -> bytes:
    """vLLM's mid-stream error: ``data: {"error": {...}}``."""
    return sse(error_body(message, status))
