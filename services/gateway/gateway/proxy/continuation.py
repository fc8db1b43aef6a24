"""Continuing a stream whose replica broke after the client had its first bytes.

When the upstream of a stream breaks (connection lost, idle timeout, a cut
without ``[DONE]``), the proxy can ask another replica to continue from the
text already sent, and splice that replica's tokens into the same client
stream (``proxy.stream``):

- **chat**, on a backend whose continuation is ``chat`` (vLLM, the mock,
  llama.cpp's ``llama-server``): the conversation plus the partial answer as a
  last ``assistant`` message, with vLLM's ``continue_final_message: true`` and
  ``add_generation_prompt: false``;
- **chat**, on a backend whose continuation is ``prompt`` (llama-cpp-python's
  server, whose chat route always opens a new assistant turn): the completions
  route, with the conversation rendered by that backend's chat template
  (``balance.config.ContinuationConfig``) and the partial answer appended;
  its completion events are rewritten as chat chunks;
- **completions**: the prompt with the text so far appended;
- ``max_tokens`` (and ``max_completion_tokens``) reduced by the tokens
  already sent.

What the client sees stays one answer: every continued event gets the first
stream's ``id``, ``created``, ``model`` and ``system_fingerprint``; the
continuation's role chunk is dropped; its usage (when asked for) covers the
whole answer: the tokens sent before are moved from its prompt to its
completion count; one ``[DONE]``.

A stream that already had its ``finish_reason`` only lacked ``[DONE]``: that
is sent (``FINISH``). If the client asked for usage and its event was lost
too, another endpoint is asked the same continuation for one token, and only
its usage event is kept, rewritten as above (``UsageOnly``); the answer had
a tool call or reasoning, or no endpoint answers: no usage.

Not continued (the client gets today's final error event): ``n`` > 1,
log probabilities (the continuation's would not be the same tokens'), a
stream that had started a tool call (its arguments cannot be resumed
mid-way), a stream that carried reasoning (the request that continues it
cannot carry the reasoning back: the model would reason again, and vLLM's
reasoning parsers would take continued text for reasoning), a prompt that
is not text, and an error event the backend sent (it reached the client as
it came).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.balance.config import CHAT_CONTINUATION, ContinuationConfig
from gateway.balance.endpoint import EndpointSpec
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
    reasoning: bool = False  # reasoning text was sent (``reasoning_content`` / ``reasoning``)
    usage: bool = False  # a usage event was sent


def partial_answer(kind: Kind, raw: bytes) -> Partial:
    """The answer in the bytes of a stream so far (whole events only)."""
    text: list[str] = []
    tokens = 0
    head: dict[str, Any] = {}
    finished = tool_call = reasoning = usage = False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:") or line.startswith(_DONE):
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue  # the last line may be cut short
        if not isinstance(event, dict):
            continue
        usage = usage or bool(event.get("usage"))
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
            reasoning = reasoning or bool(delta.get("reasoning_content") or delta.get("reasoning"))
            finished = finished or bool(choice.get("finish_reason"))
    return Partial("".join(text), tokens, head, finished, tool_call, reasoning, usage)


# Fields of a chat request that a completions request has no place for. A request
# with tools or a response format is not continued there: the chat route would
# have constrained the answer in a way a rendered prompt cannot.
_CHAT_ONLY = frozenset(
    ("messages", "max_completion_tokens", "parallel_tool_calls", "function_call", "modalities",
     "audio", "store", "metadata", "reasoning_effort", "prediction", "web_search_options")
)  # fmt: skip
_NOT_AS_PROMPT = ("tools", "functions", "response_format", "tool_choice")


@dataclass(frozen=True, slots=True)
class Plan:
    """One way to ask for the continuation: the route it goes to (which is also the
    shape of its events), its body, and the endpoints not to ask."""

    kind: Kind
    body: bytes
    exclude: tuple[str, ...]


def plans(
    kind: Kind,
    body: bytes,
    partial: Partial,
    specs: Iterable[EndpointSpec],
    broken: str,
    *,
    usage_only: bool = False,
) -> list[Plan]:
    """The continuation requests to try, one per way the model's other endpoints continue
    (most endpoints first); each plan excludes the endpoints that continue otherwise."""
    specs = list(specs)
    groups: dict[ContinuationConfig, list[str]] = {}
    for spec in specs:
        if spec.name != broken and spec.continuation.mode != "off":
            groups.setdefault(spec.continuation, []).append(spec.name)
    found = []
    for how, names in sorted(groups.items(), key=lambda group: -len(group[1])):
        made = continuation_body(kind, body, partial, how, usage_only=usage_only)
        if made is not None:
            others = tuple(spec.name for spec in specs if spec.name not in names)
            found.append(Plan(made[0], made[1], others))
    return found


def continuation_body(
    kind: Kind,
    body: bytes,
    partial: Partial,
    how: ContinuationConfig = CHAT_CONTINUATION,
    *,
    usage_only: bool = False,
) -> tuple[Kind, bytes] | None:
    """The request that continues ``partial`` on a backend that continues ``how``, and the
    route it goes to; None when it cannot be continued there. ``usage_only``: the
    answer is whole and only its usage is wanted (one token asked, then dropped)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, dict) or partial.tool_call or partial.reasoning:
        return None
    if partial.finished is not usage_only:
        return None
    if (request.get("n") or 1) != 1 or request.get("logprobs") or request.get("top_logprobs"):
        return None
    for field in ("max_tokens", "max_completion_tokens"):
        limit = request.get(field)
        if usage_only and (isinstance(limit, int) or field == "max_tokens"):
            request[field] = 1
        elif isinstance(limit, int):
            if limit - partial.tokens < 1:
                return None
            request[field] = limit - partial.tokens
    if kind is Kind.CHAT and how.mode == "prompt":
        return _as_prompt(request, partial, how)
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
    return kind, orjson.dumps(request)


def _as_prompt(
    request: dict[str, Any], partial: Partial, how: ContinuationConfig
) -> tuple[Kind, bytes] | None:
    """A chat request as a completions request: the rendered conversation + the partial."""
    messages = request.get("messages")
    if not isinstance(messages, list) or any(request.get(f) for f in _NOT_AS_PROMPT):
        return None
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        return None  # parts (images, text parts) or a null content: no faithful rendering
    try:
        prompt = how.render(messages)
    except (KeyError, IndexError, ValueError):  # a template with other fields than role/content
        return None
    limit = request.get("max_completion_tokens", request.get("max_tokens"))
    out = {k: v for k, v in request.items() if k not in _CHAT_ONLY and k not in _NOT_AS_PROMPT}
    out["prompt"] = prompt + partial.text
    # No limit is sent as null: the completions route's own default is 16 tokens
    # (OpenAI's, vLLM's, llama-cpp-python's), and null means none on the last two.
    out["max_tokens"] = limit
    return Kind.COMPLETION, orjson.dumps(out)


class Splicer:
    """Rewrites a continuation's SSE events into the first stream's (see the module);
    ``source``: the kind the continuation was asked on, when not the stream's own
    (completion events become chat chunks)."""

    __slots__ = ("_as_chat", "_head", "_kind", "_partial", "_tokens_before")

    def __init__(self, kind: Kind, partial: Partial, source: Kind | None = None) -> None:
        self._kind = kind
        self._as_chat = kind is Kind.CHAT and source is Kind.COMPLETION
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
        event = _data_event(line)
        if event is None or "error" in event:
            return line
        choices = event.get("choices") or []
        if self._as_chat:
            event["object"] = "chat.completion.chunk"
            event["choices"] = choices = [_chat_choice(c) for c in choices if isinstance(c, dict)]
        if self._kind is Kind.CHAT and choices and all(_role_only(c) for c in choices):
            return None  # the continuation's own role chunk: the client had one
        event.update(self._head)
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            moved = min(self._tokens_before, int(usage.get("prompt_tokens") or 0))
            usage["prompt_tokens"] = int(usage.get("prompt_tokens") or 0) - moved
            usage["completion_tokens"] += self._tokens_before
        return b"data: " + orjson.dumps(event)


class UsageOnly(Splicer):
    """For an answer that was whole but lost its usage event with the broken upstream:
    of a continuation asked for one token, only the usage event is kept (the
    tokens sent before moved from its prompt count to the completion count, its
    own token left out), then its ``[DONE]``."""

    __slots__ = ()

    def _line(self, line: bytes) -> bytes | None:
        if not line.startswith(b"data:") or line.startswith(_DONE):
            return line
        event = _data_event(line)
        usage = event.get("usage") if event is not None else None
        if event is None or not isinstance(usage, dict):
            return None
        if not isinstance(usage.get("prompt_tokens"), int):
            return None
        prompt = usage["prompt_tokens"] - min(self._tokens_before, usage["prompt_tokens"])
        usage.update(
            prompt_tokens=prompt,
            completion_tokens=self._tokens_before,
            total_tokens=prompt + self._tokens_before,
        )
        usage.pop("completion_tokens_details", None)  # they were the continuation's own
        chat = self._kind is Kind.CHAT
        event.update(
            self._head, object="chat.completion.chunk" if chat else "text_completion", choices=[]
        )
        return b"data: " + orjson.dumps(event)


def _data_event(line: bytes) -> dict[str, Any] | None:
    """The JSON object of a ``data:`` line; None for any other line, ``[DONE]`` included."""
    if not line.startswith(b"data:") or line.startswith(_DONE):
        return None
    try:
        event = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _role_only(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta") or {}
    return not choice.get("finish_reason") and not delta.get("content") and "role" in delta


def _chat_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """A completion event's choice as a chat chunk's."""
    text = choice.get("text")
    return {
        "index": choice.get("index", 0),
        "delta": {"content": text} if text else {},
        "logprobs": None,
        "finish_reason": choice.get("finish_reason"),
    }
