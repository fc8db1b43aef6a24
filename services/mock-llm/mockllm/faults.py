"""Fault injection: the syntax shared by ``MOCKLLM_FAULT`` and the ``X-Mock-Fault`` header.

status:<code>        answer <code> (400..599) with an OpenAI error body (429 adds Retry-After: 1)
slow:<ms>            add <ms> to the time to first token
hang                 accept the request and never answer (until the client goes away)
hang-after-headers   send 200 and the headers, then nothing
error-event:<n>      stream n tokens, then a vLLM mid-stream error event
cut:<n>              stream n tokens, then close the connection without [DONE]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FaultSyntaxError(ValueError):
    """The fault string does not follow the syntax above."""


class FaultKind(enum.Enum):
    STATUS = "status"
    SLOW = "slow"
    HANG = "hang"
    HANG_AFTER_HEADERS = "hang-after-headers"
    ERROR_EVENT = "error-event"
    CUT = "cut"


_NEEDS_ARG = {FaultKind.STATUS, FaultKind.SLOW, FaultKind.ERROR_EVENT, FaultKind.CUT}


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    arg: int = 0


def parse_fault(text: str | None) -> Fault | None:
    """Parse a fault spec; empty or None means no fault."""
    if text is None or not text.strip():
        return None
    name, sep, raw_arg = text.strip().partition(":")
    try:
        kind = FaultKind(name.strip().lower())
    except ValueError:
        raise FaultSyntaxError(f"unknown fault {name!r}") from None
    if kind not in _NEEDS_ARG:
        if sep:
            raise FaultSyntaxError(f"fault {kind.value!r} takes no argument")
        return Fault(kind)
    try:
        arg = int(raw_arg.strip())
    except ValueError:
        raise FaultSyntaxError(f"fault {kind.value!r} needs an integer: {text!r}") from None
    if arg < 0:
        raise FaultSyntaxError(f"fault {kind.value!r} needs a non-negative integer")
    if kind is FaultKind.STATUS and not 400 <= arg <= 599:
        raise FaultSyntaxError(f"status fault needs a code in 400..599, got {arg}")
    return Fault(kind, arg)
