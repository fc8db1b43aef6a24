"""One client request while it is served (:class:`Call`), and how its upstream
attempt ended (:class:`Completion`)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.balance.outcome import Outcome
from gateway.balance.prefix import PromptPrefix
from gateway.flow import FlowRequest, Ticket
from gateway.protocol.calls import Kind
from gateway.protocol.headers import CacheOutcome
from gateway.tenancy.tokens import Reservation

# Request headers never forwarded to a backend: hop-by-hop ones, those the
# upstream client sets itself, and credentials meant for the gateway.
_DROP = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "authorization",
        "accept-encoding",
        "cookie",
        "x-request-id",
        "expect",
    }
)


def upstream_request_id(request_id: str) -> str:
    """The id sent to backends: the client's when it is a UUID, else a new UUID.

    Some servers refuse any other form (llama-cpp-python answers 400); the
    client's own id stays in the gateway's answer and logs.
    """
    try:
        uuid.UUID(request_id)
    except ValueError:
        return uuid.uuid4().hex
    return request_id


def forwardable_headers(raw: list[tuple[bytes, bytes]], upstream_id: str) -> dict[str, str]:
    headers = {
        k: v.decode("latin-1")
        for key, v in raw
        if (k := key.decode("latin-1").lower()) not in _DROP
    }
    headers["x-request-id"] = upstream_id
    headers["accept-encoding"] = "identity"
    return headers


@dataclass(slots=True)
class Call:
    """One client request, from arrival to its last byte.

    The route sets what the request is (the fields up to ``started``, and
    ``receive``, ``span``, ``trace``, ``prefix``, ``prompt``); the rest is
    written while it is served, each by one part: ``cache`` by ``serving``;
    ``endpoint``, ``attempts`` and the upstream times by ``proxy.upstream``
    (``upstream_ended`` of a stream by ``proxy.stream``); ``first_token_at``
    by ``proxy.stream`` or, for a hit, ``serving``; ``cancelled_upstream_s``
    and ``upstream_span`` by ``proxy.handler``. How it ended is not kept
    here: it is the :class:`Completion`, or the status given to
    ``Proxy.finish``.
    """

    kind: Kind  # set once, by the route
    model: str
    stream: bool
    body: bytes
    headers: dict[str, str]
    request_id: str
    upstream_id: str = ""  # the id the backend saw, when it differs from request_id
    started: float = field(default_factory=time.perf_counter)
    cache: CacheOutcome = CacheOutcome.BYPASS
    endpoint: str = ""
    upstream_started: float = 0.0
    upstream_ended: float = 0.0
    first_token_at: float = 0.0
    attempts: int = 0
    cancelled_upstream_s: float = 0.0  # an attempt a cache hit cancelled had run this long
    receive: Any = None  # the ASGI receive channel, to notice a client that leaves
    span: Any = None  # tracing: the request's root span and its context (None: off)
    trace: Any = None
    upstream_span: Any = None
    prefix: PromptPrefix | None = None  # the prompt's block hashes, for prefix affinity
    prompt: str | None = None  # only when GATEWAY_LOG_PROMPTS is on
    flow: FlowRequest | None = None  # set by the route when flow control is on
    ticket: Ticket | None = None  # its slot in the pool, released by Proxy.finish
    budget: Reservation | None = None  # tokens reserved; settled by Proxy.finish
    hide_usage: bool = False  # usage asked for the budget, not by the client
    path: str = ""  # a PASSTHROUGH call's path (``/tokenize``...); others: the kind's route
    template: str = ""  # the route as metrics name it when the path holds an id
    method: str = "POST"
    answer_id: str = ""  # the id the upstream gave its answer (``/v1/responses`` pins by it)
    pinned: str = ""  # the only endpoint that may serve it (it stored what the call refers to)

    @property
    def route(self) -> str:
        """The route, as metrics, logs and traces name it (a bounded set)."""
        return self.template or self.path or self.kind.route

    @property
    def upstream_path(self) -> str:
        """The path sent to the model server."""
        return self.path or self.kind.route


@dataclass(frozen=True, slots=True)
class Completion:
    """What happened when the upstream answer a client received ended, built once.

    The proxy builds it when the answer ends, whatever ended it (the whole
    answer, an upstream cut or timeout, the client gone, the task cancelled,
    an exception while sending), and every part that cares observes the same
    value: metrics and the log line (``Proxy.finish``), the cache's store. The
    breaker and the latency estimate heard ``outcome`` through the lease.
    """

    outcome: Outcome
    status: int  # as the client saw it (a cancelled stream: 499)
    tokens_in: int
    tokens_out: int
    answer: bytes | None  # the complete answer (``protocol.answer``), when kept and whole
    upstream_s: float  # from the start of the attempt that answered to the end of its answer

    @property
    def succeeded(self) -> bool:
        return self.outcome is Outcome.SUCCESS
