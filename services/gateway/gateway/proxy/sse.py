"""Watch an OpenAI SSE stream as it passes, without slowing it down.

The proxy forwards every upstream chunk untouched; :class:`StreamWatch` only
looks at it to learn what the router, the breaker, the cache and the metrics
need: when the first token arrived (a ``data:`` event, not a ``: ping``
comment), whether the terminal ``data: [DONE]`` marker was seen, whether an
error event came inside the 200 stream, and how many data events passed (the
token estimate when the backend sends no ``usage``).

Cheap substring tests run on every chunk; events are parsed only when a chunk
may hold an error or usage. Markers split across two chunks are caught by
keeping the tail of the previous chunk.
"""

from __future__ import annotations

import orjson

_DONE = b"data: [DONE]"
_ERROR_KEY = b'"error"'
_USAGE = b'"usage"'
_NULL_USAGE = (b'"usage":null', b'"usage": null')
_EMPTY = (b'"content":""', b'"content": ""', b'"text":""', b'"text": ""')
_TAIL = 24


class StreamWatch:
    """Incremental facts about one SSE stream."""

    __slots__ = (
        "_tail",
        "data_events",
        "done",
        "empty_events",
        "error",
        "first_token_seen",
        "usage",
    )

    def __init__(self) -> None:
        self.first_token_seen = False
        self.done = False
        self.error: dict[str, object] | None = None
        self.data_events = 0
        self.empty_events = 0  # role-only or finish-only chunks carry no token
        self.usage: dict[str, int] | None = None
        self._tail = b""

    def feed(self, chunk: bytes) -> bool:
        """Look at one chunk; True when it holds the stream's first token."""
        window = self._tail + chunk
        self._tail = chunk[-_TAIL:]
        first = False
        if not self.first_token_seen and b"data:" in window and _has_data_line(window):
            self.first_token_seen = first = True
        self.data_events += chunk.count(b"data:")
        if b'""' in chunk:
            self.empty_events += sum(map(chunk.count, _EMPTY))
        if not self.done and _DONE in window:
            self.done = True
            self.data_events -= 1
        if _ERROR_KEY in chunk:
            self._scan_events(chunk, errors=True)
        if _USAGE in chunk and chunk.count(_USAGE) > sum(map(chunk.count, _NULL_USAGE)):
            self._scan_events(chunk, errors=False)
        return first

    def _scan_events(self, chunk: bytes, *, errors: bool) -> None:
        for line in chunk.splitlines():
            if not line.startswith(b"data:") or line.endswith(b"[DONE]"):
                continue
            try:
                event = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            if errors and event.get("error") is not None:
                error = event["error"]
                self.error = error if isinstance(error, dict) else {"message": str(error)}
            usage = event.get("usage")
            if not errors and isinstance(usage, dict):
                self.usage = {k: v for k, v in usage.items() if isinstance(v, int)}

    @property
    def completed(self) -> bool:
        """The stream ended the way a successful one does."""
        return self.done and self.error is None

    @property
    def completion_tokens(self) -> int:
        """Tokens out: ``usage`` when the backend sent it, else one per data event with text.

        Counting chunks is exact for vLLM, llama.cpp and the mock (one token per
        chunk); servers that pack several tokens in a chunk are undercounted.
        """
        if self.usage and "completion_tokens" in self.usage:
            return self.usage["completion_tokens"]
        return max(0, self.data_events - self.empty_events - (1 if self.usage else 0))


def _has_data_line(window: bytes) -> bool:
    """A ``data:`` line that is not the terminal marker (comments start with ``:``)."""
    for line in window.split(b"\n"):
        if line.startswith(b"data:") and not line.startswith(_DONE):
            return True
    return False
