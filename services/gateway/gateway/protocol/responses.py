"""The Responses API (``/v1/responses``) as the proxy sees it pass.

A Responses stream is a sequence of typed events, each ``event: <type>`` and
``data: {"type": "<type>", ...}``, with no ``data: [DONE]``:

- it starts with ``response.created`` (the response object, its ``id``),
- the tokens come as ``response.output_text.delta`` (and other ``*.delta``
  events: reasoning, tool-call arguments),
- it ends with ``response.completed``, or ``response.incomplete`` (a length
  or content-filter stop: a whole answer all the same), whose ``response``
  carries ``usage`` as ``input_tokens`` / ``output_tokens``;
- it fails with ``response.failed`` (``response.error``) or an ``error``
  event (``code``, ``message`` at the top level).

:class:`ResponsesWatch` learns the same facts as the chat watcher
(``protocol.sse``) from these: the first token is the first ``*.delta``
event; ``done`` is an ending event (or a ``[DONE]``, which some servers add);
``error`` a failure event; ``usage`` in the chat names, so the proxy counts
tokens the same way; and the response's ``id`` (``answer_id``), by which
follow-ups are pinned to the replica that stored it. Only lines that may
hold one of these are parsed.

:func:`error_event` is the gateway's own final event for a Responses stream
it has to end (the model server cut it, timed out): an ``error`` event in
the Responses shape that also carries the OpenAI ``error`` object, because
that is what the openai SDKs raise on in a stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.protocol.sse import StreamWatch

_DELTA = b'.delta"'
_ENDS = (b"response.completed", b"response.incomplete")
_FAILS = (b"response.failed", b'"error"')
_CREATED = b"response.created"


class ResponsesWatch(StreamWatch):
    """:class:`StreamWatch` for a Responses stream (see the module's docstring)."""

    __slots__ = ("answer_id", "sequence")

    def __init__(self) -> None:
        super().__init__()
        self.answer_id = ""
        self.sequence = -1  # the last sequence_number seen

    def _complete_lines(self, lines: bytes) -> bool:
        if b"data:" not in lines:
            return False
        first = False
        for line in lines.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            if line.rstrip(b"\r") == b"data: [DONE]":
                self.done = True
                continue
            delta = _DELTA in line
            if delta:
                self.data_events += 1
                self.sequence += 1  # numbered consecutively; a delta is not parsed
                if not self.first_token_seen:
                    self.first_token_seen = first = True
            if not delta or b'"error"' in line:
                self._event(line)
        return first

    def _event(self, line: bytes) -> None:
        if not (
            any(end in line for end in _ENDS)
            or any(fail in line for fail in _FAILS)
            or (not self.answer_id and _CREATED in line)
            or b"sequence_number" in line
        ):
            return
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        number = event.get("sequence_number")
        if isinstance(number, int):
            self.sequence = max(self.sequence, number)
        kind = event.get("type")
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        if kind == "response.created" and isinstance(response.get("id"), str):
            self.answer_id = response["id"]
        elif kind in ("response.completed", "response.incomplete"):
            self.done = True
            self._usage(response.get("usage"))
        elif kind == "response.failed":
            error = response.get("error")
            self.error = error if isinstance(error, dict) else {"message": "response.failed"}
        elif kind == "error" or event.get("error") is not None:
            self.error = _error_of(event)

    def _usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.usage = {
                "prompt_tokens": int(usage.get("input_tokens") or 0),
                "completion_tokens": int(usage.get("output_tokens") or 0),
            }


def _error_of(event: dict[str, Any]) -> dict[str, object]:
    nested = event.get("error")
    if isinstance(nested, dict):
        return nested
    return {
        "message": str(event.get("message") or nested or "error"),
        "code": event.get("code"),
    }


def first_error(first: bytes) -> bytes | None:
    """The error of a stream whose first events fail before any token (as an OpenAI
    ``{"error": {...}}`` body, for the proxy to treat like an error answer), or None."""
    watch = ResponsesWatch()
    watch.feed(first if first.endswith(b"\n") else first + b"\n")
    if watch.error is None or watch.first_token_seen:
        return None
    return orjson.dumps({"error": watch.error})


def error_event(error: dict[str, Any], sequence: int) -> bytes:
    """The gateway's final ``error`` event of a Responses stream (see the module)."""
    event = {
        "type": "error",
        "code": error.get("code"),
        "message": error.get("message"),
        "param": None,
        "sequence_number": sequence + 1,
        "error": error,
    }
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


def created_id(chunk: bytes) -> str:
    """The response id of a ``response.created`` event in a stream's first bytes, or ``""``
    (the event split across reads is found later, by :class:`ResponsesWatch`)."""
    if _CREATED not in chunk:
        return ""
    for line in chunk.split(b"\n"):
        if line.startswith(b"data:") and _CREATED in line:
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return ""
            response = event.get("response") if isinstance(event, dict) else None
            found = response.get("id") if isinstance(response, dict) else None
            return found if isinstance(found, str) else ""
    return ""
