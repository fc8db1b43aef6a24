"""Answers with more than text, shaped as vLLM sends them: reasoning, tool calls, logprobs.

Asked the way vLLM is asked:

- **reasoning**: vLLM with a ``--reasoning-parser`` sends the model's thinking
  apart from its answer, as ``reasoning`` and (the older name, still sent
  beside it) ``reasoning_content``. The mock's "model" thinks for its first
  ``MOCKLLM_REASONING_TOKENS`` tokens (or the ``X-Mock-Reasoning-Tokens``
  header's number); the rest is the content.
- **tool calls**: a chat request with ``tools`` and a ``tool_choice`` other
  than ``"none"`` calls the named function (or the first one) with the
  arguments ``{"text": <the generated text>}``. Streamed, the first delta
  carries the call's ``id``, ``type`` and ``name`` with empty arguments, and
  each token adds an arguments fragment (vLLM's way); the answer ends with
  ``finish_reason: "tool_calls"``.
- **logprobs**: chat ``logprobs: true`` (with ``top_logprobs: k``) gives every
  token ``{"token", "logprob", "bytes", "top_logprobs"}`` under
  ``logprobs.content``; completions ``logprobs: k`` give ``text_offset``,
  ``token_logprobs``, ``tokens`` and ``top_logprobs``. The numbers are a hash
  of the token and its position: the same request, the same logprobs.

:class:`RichRenderer` renders these (the plain ``Renderer`` stays the fast
path for text alone).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mockllm.render import Renderer, Usage
from mockllm.schema import AnyRequest, ChatCompletionRequest, Kind
from mockllm.tokens import VOCABULARY

REASONING_HEADER = "X-Mock-Reasoning-Tokens"


@dataclass(frozen=True, slots=True)
class Features:
    reasoning: int = 0  # the first this many tokens are reasoning
    tool: str | None = None  # the function the answer calls
    logprobs: int | None = None  # None: off; else the top alternatives per token

    @property
    def any(self) -> bool:
        return bool(self.reasoning) or self.tool is not None or self.logprobs is not None


def features(
    kind: Kind, request: AnyRequest, headers: Mapping[str, str], reasoning: int
) -> Features:
    """What the request asks for beyond text (see the module)."""
    extra = request.model_extra or {}
    raw = headers.get(REASONING_HEADER)
    if raw is not None and raw.isdigit():
        reasoning = int(raw)
    if kind != "chat" or not isinstance(request, ChatCompletionRequest):
        asked = extra.get("logprobs")
        top = asked if isinstance(asked, int) and not isinstance(asked, bool) else None
        return Features(logprobs=top)
    tool = _tool(extra.get("tools"), extra.get("tool_choice"))
    top = extra.get("top_logprobs")
    logprobs = (top if isinstance(top, int) else 0) if extra.get("logprobs") is True else None
    return Features(reasoning=0 if tool else reasoning, tool=tool, logprobs=logprobs)


def _tool(tools: Any, choice: Any) -> str | None:
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        if isinstance(named, str):
            return named
    first = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = first.get("name") if isinstance(first, dict) else None
    return name if isinstance(name, str) else None


def logprob(token: str, position: int, rank: int = 0) -> float:
    """A deterministic logprob (more negative for lower ranks)."""
    digest = hashlib.blake2b(f"{position}\x00{token}".encode(), digest_size=2).digest()
    return -round(int.from_bytes(digest, "big") / 65535 * 2 + 3 * rank, 4)


class RichRenderer(Renderer):
    """A :class:`Renderer` whose tokens may be reasoning, tool-call arguments or carry
    logprobs (see the module). It keeps count of the tokens it rendered."""

    __slots__ = ("_call_id", "_done", "_features", "_offset")

    def __init__(self, kind: Kind, model: str, wanted: Features) -> None:
        super().__init__(kind, model)
        self._features = wanted
        self._done = 0
        self._offset = 0
        self._call_id = "chatcmpl-tool-" + uuid.uuid4().hex

    def token_chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        position = self._done
        self._done += 1
        last = finish_reason is not None
        choice: dict[str, Any] = {"index": 0}
        if self.kind == "chat":
            choice["delta"] = self._delta(text, position, last)
        else:
            choice["text"] = text
        choice["logprobs"] = self._logprobs([text], position)
        choice["finish_reason"] = finish_reason
        return self._chunk([choice])

    def _delta(self, text: str, position: int, last: bool) -> dict[str, Any]:
        wanted = self._features
        if wanted.tool is not None:
            piece = orjson.dumps(text).decode()[1:-1]
            arguments = ('{"text": "' if position == 0 else "") + piece + ('"}' if last else "")
            call: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
            if position == 0:
                call = {
                    "index": 0,
                    "id": self._call_id,
                    "type": "function",
                    "function": {"name": wanted.tool, "arguments": arguments},
                }
            return {"tool_calls": [call]}
        if position < wanted.reasoning:
            return {"reasoning": text, "reasoning_content": text}
        return {"content": text}

    def _logprobs(self, tokens: list[str], start: int) -> dict[str, Any] | None:
        top = self._features.logprobs
        if top is None:
            return None
        if self.kind == "chat":
            return {"content": [_entry(t, start + i, top) for i, t in enumerate(tokens)]}
        offsets = []
        for token in tokens:
            offsets.append(self._offset)
            self._offset += len(token)
        return {
            "text_offset": offsets,
            "token_logprobs": [logprob(t, start + i) for i, t in enumerate(tokens)],
            "tokens": tokens,
            "top_logprobs": [
                {alt: logprob(alt, start + i, r) for r, alt in enumerate(_alternatives(t, top))}
                for i, t in enumerate(tokens)
            ],
        }

    def response_of(self, tokens: tuple[str, ...], finish_reason: str, usage: Usage) -> bytes:
        """The non-streamed body (the tokens, not only their text, decide it here)."""
        text = "".join(tokens)
        body = self.response(text, finish_reason, usage)
        choice = body["choices"][0]
        self._offset = 0
        choice["logprobs"] = self._logprobs(list(tokens), 0)
        if self.kind != "chat":
            return orjson.dumps(body)
        message = choice["message"]
        wanted = self._features
        if wanted.tool is not None:
            arguments = '{"text": ' + orjson.dumps(text).decode() + "}"  # as streamed
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": self._call_id,
                    "type": "function",
                    "function": {"name": wanted.tool, "arguments": arguments},
                }
            ]
        elif wanted.reasoning:
            thought = "".join(tokens[: wanted.reasoning])
            message["reasoning"] = message["reasoning_content"] = thought
            message["content"] = "".join(tokens[wanted.reasoning :])
        return orjson.dumps(body)


def _entry(token: str, position: int, top: int) -> dict[str, Any]:
    return {
        "token": token,
        "logprob": logprob(token, position),
        "bytes": list(token.encode()),
        "top_logprobs": [
            {"token": alt, "logprob": logprob(alt, position, r), "bytes": list(alt.encode())}
            for r, alt in enumerate(_alternatives(token, top))
        ],
    }


def _alternatives(token: str, top: int) -> list[str]:
    """``top`` candidates, the token itself first (as the sampled token usually is)."""
    others = [w for w in VOCABULARY[: top + 1] if w != token.strip()]
    return [token, *others][:top]
