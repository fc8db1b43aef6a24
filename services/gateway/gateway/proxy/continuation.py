"""Continuing a stream whose replica broke after the client had its first bytes.

When the upstream of a stream breaks (connection lost, idle timeout, a cut
without ``[DONE]``), the proxy can ask another replica to continue from the
text already sent, and splice that replica's tokens into the same client
stream (``proxy.stream``):

- **chat**: the conversation plus the partial answer as a last ``assistant``
  message, with vLLM's ``continue_final_message: true`` and
  ``add_generation_prompt: false``;
- **completions**: the prompt with the text so far appended;
- ``max_tokens`` (and ``max_completion_tokens``) reduced by the tokens
  already sent.

What the client sees stays one answer: every continued event gets the first
stream's ``id``, ``created``, ``model`` and ``system_fingerprint``; the
continuation's role chunk is dropped; its usage (when asked for) covers the
whole answer: the tokens sent before are moved from its prompt to its
completion count; one ``[DONE]``.

A stream that already had its ``finish_reason`` only lacked ``[DONE]``: that
is sent instead (``FINISH``; its usage, if asked for, was lost with the
broken upstream).

Not continued (the client gets today's final error event): ``n`` > 1,
log probabilities (the continuation's would not be the same tokens'), a
stream that had started a tool call (its arguments cannot be resumed
mid-way), a prompt that is not text, and an error event the backend sent
(it reached the client as it came).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.protocol.calls import Kind

_DONE = b"data: [DONE]"
FINISH = b"data: [DONE]\n\n"  # what ends a stream that only lacked its end marker


@dataclass(frozen=True, slots=True)
class Partial:
    """What the client has of the answer so far."""

    text: str
    tokens: int  # data events with text: one token each for vLLM, llama.cpp and the mock
    head: dict[str, Any]  # id, created, model, system_fingerprint of the first event
    finished: bool  # a finish_reason was sent: only [DONE] is missing
    tool_call: bool  # a tool call had started


def partial_answer(kind: Kind, raw: bytes) -> Partial:
    """The answer in the bytes of a stream so far (whole events only)."""
    text: list[str] = []
    tokens = 0
    head: dict[str, Any] = {}
    finished = tool_call = False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:") or line.startswith(_DONE):
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue  # the last line may be cut short
        if not isinstance(event, dict):
            continue
        if not head:
            head = {
                k: event[k] for k in ("id", "created", "model", "system_fingerprint") if k in event
            }
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {} if kind is Kind.CHAT else choice
            piece = delta.get("content") if kind is Kind.CHAT else delta.get("text")
            if piece:
                text.append(piece)
                tokens += 1
            tool_call = tool_call or bool(delta.get("tool_calls"))
            finished = finished or bool(choice.get("finish_reason"))
    return Partial("".join(text), tokens, head, finished, tool_call)


def continuation_body(kind: Kind, body: bytes, partial: Partial) -> bytes | None:
    """The request that continues ``partial``, or None when it cannot be continued."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, dict) or partial.tool_call or partial.finished:
        return None
    if (request.get("n") or 1) != 1 or request.get("logprobs") or request.get("top_logprobs"):
        return None
    for field in ("max_tokens", "max_completion_tokens"):
        limit = request.get(field)
        if isinstance(limit, int):
            if limit - partial.tokens < 1:
                return None
            request[field] = limit - partial.tokens
    if kind is Kind.CHAT:
        request["messages"] = [
            *request["messages"],
            {"role": "assistant", "content": partial.text},
        ]
        request["continue_final_message"] = True
        request["add_generation_prompt"] = False
    else:
        if not isinstance(request.get("prompt"), str):
            return None
        request["prompt"] += partial.text
    return orjson.dumps(request)


class Splicer:
    """Rewrites a continuation's SSE events into the first stream's (see the module)."""

    __slots__ = ("_head", "_kind", "_partial", "_tokens_before")

    def __init__(self, kind: Kind, partial: Partial) -> None:
        self._kind = kind
        self._head = partial.head
        self._tokens_before = partial.tokens
        self._partial = b""

    def feed(self, chunk: bytes) -> bytes:
        """The rewritten complete lines of ``chunk`` (a line cut short waits for the next)."""
        data = self._partial + chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._partial = data
            return b""
        self._partial = data[cut + 1 :]
        out = [self._line(line) for line in data[: cut + 1].split(b"\n")[:-1]]
        return b"".join(line + b"\n" for line in out if line is not None)

    def _line(self, line: bytes) -> bytes | None:
        if not line.startswith(b"data:") or line.startswith(_DONE):
            return line
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return line
        if not isinstance(event, dict) or "error" in event:
            return line
        choices = event.get("choices") or []
        if self._kind is Kind.CHAT and choices and all(_role_only(c) for c in choices):
            return None  # the continuation's own role chunk: the client had one
        event.update(self._head)
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            moved = min(self._tokens_before, int(usage.get("prompt_tokens") or 0))
            usage["prompt_tokens"] = int(usage.get("prompt_tokens") or 0) - moved
            usage["completion_tokens"] += self._tokens_before
        return b"data: " + orjson.dumps(event)


def _role_only(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    return not choice.get("finish_reason") and not delta.get("content") and "role" in delta
