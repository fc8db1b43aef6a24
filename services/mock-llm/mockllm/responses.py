"""``POST /v1/responses``: the Responses API, as vLLM serves it, over the chat generation.

A request is read as the chat request it amounts to (``instructions`` as the
system message, ``input`` as a string or a list of messages,
``max_output_tokens`` as ``max_tokens``), so the same prompt gives the same
deterministic tokens, timing, admission and faults as on
``/v1/chat/completions``. Only the rendering differs (:class:`ResponsesRenderer`):
typed events (``response.created`` ... ``response.output_text.delta`` ...
``response.completed``, or ``response.incomplete`` on a length stop) with
consecutive ``sequence_number`` and no ``[DONE]``; an injected error event is
``response.failed``.

Responses are stored in this process, as vLLM stores them (``store``, on by
default): ``GET /v1/responses/{id}`` returns one, and a request whose
``previous_response_id`` this replica did not store is a 404, as vLLM
answers. (The previous turns are not prepended to the prompt.) Not
implemented: tools and reasoning items.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

from mockllm.errors import BadRequest, NotFound, error_body
from mockllm.render import Usage


class Stored:
    """The responses this replica made (the newest ``size``)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._bodies: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def add(self, body: dict[str, Any]) -> None:
        self._bodies[body["id"]] = body
        if len(self._bodies) > self._size:
            self._bodies.popitem(last=False)

    def get(self, response_id: str) -> dict[str, Any]:
        found = self._bodies.get(response_id)
        if found is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return found

    async def retrieve(self, request: web.Request) -> web.Response:
        body = self.get(request.match_info["response_id"])
        return web.Response(body=orjson.dumps(body), content_type="application/json")


def as_chat_body(body: bytes, stored: Stored) -> tuple[bytes, bool]:
    """The chat request a Responses request amounts to (see the module), and whether
    its response is to be stored."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(request, dict) or not isinstance(request.get("model"), str):
        raise BadRequest("model: Field required")
    previous = request.get("previous_response_id")
    if isinstance(previous, str):
        stored.get(previous)  # a 404 when this replica does not have it
    messages: list[dict[str, Any]] = []
    if isinstance(request.get("instructions"), str):
        messages.append({"role": "system", "content": request["instructions"]})
    given = request.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages.extend(_message(item) for item in given if isinstance(item, dict))
    if not messages:
        raise BadRequest("input: Field required")
    chat: dict[str, Any] = {
        "model": request["model"],
        "messages": messages,
        "stream": bool(request.get("stream")),
    }
    if isinstance(request.get("max_output_tokens"), int):
        chat["max_tokens"] = request["max_output_tokens"]
    return orjson.dumps(chat), request.get("store", True) is not False


def _message(item: dict[str, Any]) -> dict[str, Any]:
    content = item.get("content")
    if isinstance(content, list):  # input_text / output_text parts
        content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return {"role": str(item.get("role") or "user"), "content": content or ""}


class ResponsesRenderer:
    """The events and the body of one response (the chat ``Renderer``'s interface)."""

    end = b""  # a Responses stream has no [DONE]

    def __init__(self, model: str, usage: Usage, stored: Stored | None = None) -> None:
        self.model = model
        self._stored = stored
        self.id = "resp_" + uuid.uuid4().hex
        self._item = "msg_" + uuid.uuid4().hex
        self._created = int(time.time())
        self._usage = usage
        self._sequence = 0
        self._text: list[str] = []

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "model": self.model,
            "output": output,
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **extra,
        }

    def _message(self, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [_part(text)]
        status = "in_progress" if text is None else "completed"
        return {
            "id": self._item,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def role_chunk(self) -> bytes:
        """The opening events, up to the (empty) text part the deltas fill."""
        return (
            self._event("response.created", response=self._response("in_progress", []))
            + self._event("response.in_progress", response=self._response("in_progress", []))
            + self._event("response.output_item.added", output_index=0, item=self._message(None))
            + self._event("response.content_part.added", **self._where(), part=_part(""))
        )

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._item, "output_index": 0, "content_index": 0}

    def token_chunk(self, text: str, finish_reason: str | None = None) -> bytes:
        self._text.append(text)
        chunk = self._event("response.output_text.delta", **self._where(), delta=text, logprobs=[])
        if finish_reason is None:
            return chunk
        whole = "".join(self._text)
        body = self.response(whole, finish_reason, self._usage)
        return (
            chunk
            + self._event("response.output_text.done", **self._where(), text=whole, logprobs=[])
            + self._event("response.content_part.done", **self._where(), part=_part(whole))
            + self._event("response.output_item.done", output_index=0, item=self._message(whole))
            + self._event(f"response.{body['status']}", response=body)
        )

    def usage_chunk(self, usage: Usage) -> bytes:
        return b""  # the usage is in response.completed

    def error(self, message: str) -> bytes:
        failed = self._response("failed", [], error=error_body(message, 500)["error"])
        return self._event("response.failed", response=failed)

    def response(self, text: str, finish_reason: str, usage: Usage) -> dict[str, Any]:
        """The whole response object (the non-streamed body and response.completed's)."""
        complete = finish_reason != "length"
        body = self._response(
            "completed" if complete else "incomplete",
            [self._message(text)],
            incomplete_details=None if complete else {"reason": "max_output_tokens"},
            usage={
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
        )
        if self._stored is not None:
            self._stored.add(body)
        return body


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}
