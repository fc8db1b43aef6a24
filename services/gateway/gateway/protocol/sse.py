"""Watch an OpenAI SSE stream as it passes, without slowing it down.

The proxy forwards every upstream chunk untouched; :class:`StreamWatch` only
looks at it to learn what the router, the breaker, the cache and the metrics
need: when the first token arrived (a ``data:`` event, not a ``: ping``
comment), whether the terminal ``data: [DONE]`` marker was seen, whether an
error event came inside the 200 stream, and how many data events passed (the
token estimate when the backend sends no ``usage``).

Events are read line by line: the bytes after a chunk's last newline are kept
and joined to the next chunk, so an event split across TCP reads (at any byte)
is seen exactly as if it had come whole. Cheap substring tests run on the
complete lines; events are parsed only when they may hold an error or usage.
A line with no newline yet counts only once its newline arrives (an event is
not complete before), except the terminal ``data: [DONE]``, which is known
from its bytes.
"""

from __future__ import annotations

import orjson

_DONE = b"data: [DONE]"
_ERROR_KEY = b'"error"'
_USAGE = b'"usage"'
_NULL_USAGE = (b'"usage":null', b'"usage": null')
_EMPTY = (b'"content":""', b'"content": ""', b'"text":""', b'"text": ""')
# A line longer than this without a newline is not an OpenAI event: it is
# dropped rather than buffered without bound.
_MAX_PARTIAL = 1 << 20


class StreamWatch:
    """Incremental facts about one SSE stream."""

    __slots__ = (
        "_partial",
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
        self._partial = b""  # the bytes after the last newline: a line still arriving

    def feed(self, chunk: bytes) -> bool:
        """Look at one chunk; True when it completes the stream's first token."""
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._partial += chunk
            if len(self._partial) > _MAX_PARTIAL:
                self._partial = b""
            elif not self.done and self._partial.rstrip(b"\r") == _DONE:
                self.done = True
            return False
        lines = self._partial + chunk[: cut + 1] if self._partial else chunk[: cut + 1]
        self._partial = chunk[cut + 1 :]
        first = self._complete_lines(lines)
        if not self.done and self._partial and self._partial.rstrip(b"\r") == _DONE:
            self.done = True
        return first

    def _complete_lines(self, lines: bytes) -> bool:
        """Facts from whole lines (``lines`` starts at a line start, ends with a newline)."""
        if b"data:" not in lines:
            return False
        events = lines.count(b"\ndata:") + lines.startswith(b"data:")
        first = False
        if not self.first_token_seen and _has_data_line(lines):
            self.first_token_seen = first = True
        if _DONE in lines and _has_done_line(lines):
            self.done = True  # (perhaps already known from the partial line)
            events -= 1
        self.data_events += events
        if b'""' in lines:
            self.empty_events += sum(map(lines.count, _EMPTY))
        if _ERROR_KEY in lines:
            self._scan_events(lines, errors=True)
        if _USAGE in lines and lines.count(_USAGE) > sum(map(lines.count, _NULL_USAGE)):
            self._scan_events(lines, errors=False)
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


def _has_data_line(lines: bytes) -> bool:
    """A ``data:`` line that is not the terminal marker (comments start with ``:``)."""
    for line in lines.split(b"\n"):
        if line.startswith(b"data:") and not line.startswith(_DONE):
            return True
    return False


def _has_done_line(lines: bytes) -> bool:
    """The terminal marker as a line of its own (not inside a token's text)."""
    return any(line.rstrip(b"\r") == _DONE for line in lines.split(b"\n"))
