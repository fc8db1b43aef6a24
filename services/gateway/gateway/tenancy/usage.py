"""A stream's real usage for token budgets, when its client did not ask for it.

A streamed answer says how many tokens it used only when the request has
``stream_options.include_usage``. For a tenant with a token budget the gateway
asks for it (:func:`ask_for_usage`) and, since that client did not,
takes the usage event out of what the client receives (:func:`hide_usage`):
the event with ``"choices":[]`` and a ``usage`` object that vLLM, SGLang, TGI
and OpenAI send last, before ``data: [DONE]``. The stream's watcher still sees
it (it reads chunks before they are filtered), so the budget is settled on it.

An event split across two reads is passed on as it came (the filter keeps no
bytes back: it must not delay a token); a client then sees the usage event
it did not ask for, which OpenAI's SDKs read without complaint.
"""

from __future__ import annotations

import orjson

_USAGE = b'"usage"'
_EVENT_END = b"\n\n"


def ask_for_usage(body: bytes) -> bytes | None:
    """The request body with ``stream_options.include_usage`` set, or None when it already
    asks for usage (or is not a JSON object: the route has validated it already)."""
    data = orjson.loads(body)
    if not isinstance(data, dict):
        return None
    options = data.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return None
    given = options if isinstance(options, dict) else {}
    data["stream_options"] = {**given, "include_usage": True}
    return orjson.dumps(data)


def hide_usage(chunk: bytes) -> bytes:
    """``chunk`` without its complete usage-only events."""
    if _USAGE not in chunk:
        return chunk
    kept = [event for event in chunk.split(_EVENT_END) if not _usage_only(event)]
    return _EVENT_END.join(kept)


def _usage_only(event: bytes) -> bool:
    line = event.strip()
    if not line.startswith(b"data:") or _USAGE not in line:
        return False
    try:
        data = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("choices") == [] and data.get("usage") is not None
