"""Serve one proxied call: open upstream, answer, account for it once.

Leases: ``proxy.upstream`` releases the attempts that fail before the client
saw a byte (and fails over); the attempt that answers is released here, when
its answer ends (:meth:`Proxy.answer`), or when a cache hit makes it
pointless (:func:`discard`).

A call is counted in flight from :meth:`Proxy.admit`; accounting (metrics, the
request's log line) happens exactly once per call in :meth:`Proxy.finish`,
whatever the path: a complete stream, a failed one, a non-streamed answer, an
error before anything was sent, or a cache hit (:meth:`Proxy.answered_locally`).

Opening (:meth:`Proxy.open`) and answering (:meth:`Proxy.answer`) are apart so
that the cache can race a lookup against the opening and, when its hit comes
first, stop the attempt (:meth:`Proxy.abandon`) before the client saw a byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from gateway.balance.lease import Lease
from gateway.balance.outcome import Outcome, classify
from gateway.errors import GatewayError
from gateway.flow import FlowControl
from gateway.metrics import GatewayMetrics
from gateway.protocol import answer, responses
from gateway.protocol.calls import Kind
from gateway.protocol.responses import ResponsesWatch
from gateway.protocol.sse import StreamWatch
from gateway.proxy.attempt import Opened
from gateway.proxy.call import Call, Completion
from gateway.proxy.resume import Resumer
from gateway.proxy.stream import StreamResponse
from gateway.proxy.upstream import Upstream
from gateway.responses import RawResponse
from gateway.tracing import Tracing
from llmgw_common.logs import get_logger

log = get_logger("gateway.request")

# Told how an upstream answer ended, after the proxy accounted for it (the cache
# stores a complete answer). It is asked to keep the answer: ``Completion.answer``.
Observer = Callable[[Call, Completion], None]


class Proxy:
    def __init__(
        self,
        upstream: Upstream,
        metrics: GatewayMetrics,
        *,
        log_requests: bool,
        tracing: Tracing | None = None,
        continuations: int = 0,
        flow: FlowControl | None = None,
    ) -> None:
        self._flow = flow  # waits for a slot first while the pool is saturated (gateway.flow)
        self._continuations = continuations  # per stream, after its first byte
        self._tracing = tracing or Tracing(None)
        self._upstream = upstream
        self._metrics = metrics
        self._resume = Resumer(upstream, metrics, self._count_attempt)
        self._log_requests = log_requests
        self._gap = metrics.inter_token.observe

    def admit(self, call: Call) -> None:
        """The call is being served: in flight until :meth:`finish`."""
        self._metrics.in_flight.inc()

    async def serve(
        self,
        call: Call,
        *,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        observe: Observer | None = None,
    ) -> StreamResponse | RawResponse:
        """Admit, open upstream and answer."""
        self.admit(call)
        return await self.answer(
            call, self.open(call), extra_headers=extra_headers, observe=observe
        )

    def open(self, call: Call) -> Coroutine[Any, Any, Opened]:
        """The upstream attempt(s), up to the first byte (see ``proxy.upstream``)."""
        call.upstream_span = self._tracing.start_inference(call.trace)  # "chat {model}"
        return self._open_unless_client_leaves(call)

    async def answer(
        self,
        call: Call,
        opening: Awaitable[Opened],
        *,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        observe: Observer | None = None,
    ) -> StreamResponse | RawResponse:
        """The response to an admitted call, once ``opening`` (from :meth:`open`) ends."""
        try:
            opened = await opening
        except ClientGone:
            self.finish(call, 499, Outcome.CANCELLED)
            self._metrics.client_disconnects.inc()
            return RawResponse(b"", 499, "text/plain")  # nobody is listening
        except GatewayError as exc:
            self.finish(call, exc.status, exc.code or exc.type)
            raise
        except BaseException as exc:  # cancelled (499), or a bug of ours (500)
            self.finish(call, *unexpected(exc))
            raise
        headers = [(b"x-request-id", call.request_id.encode()), *(extra_headers or ())]
        # The answer is kept for the cache and the prompt log: chat and completions only.
        keep = call.kind.generates and (observe is not None or call.prompt is not None)
        if opened.response is None:
            return self._whole(call, opened, headers, keep, observe)
        if call.kind is Kind.RESPONSES:  # known before the first byte goes out (pinning)
            call.answer_id = responses.created_id(opened.first_chunk)

        def done(
            outcome: Outcome, watch: StreamWatch, copy: list[bytes] | None, lease: Lease
        ) -> None:
            lease.release(outcome)  # first: pending drops whatever happens next
            if isinstance(watch, ResponsesWatch):
                call.answer_id = watch.answer_id
            whole = None
            if keep and copy is not None and outcome is Outcome.SUCCESS:  # (a copy kept only
                whole = answer.from_stream(call.kind, b"".join(copy))  # to continue: not read)
            self._completed(
                call,
                Completion(
                    outcome=outcome,
                    status=499 if outcome is Outcome.CANCELLED else 200,
                    tokens_in=(watch.usage or {}).get("prompt_tokens", 0),
                    tokens_out=watch.completion_tokens,
                    answer=whole,
                    upstream_s=max(0.0, call.upstream_ended - call.upstream_started),
                ),
                observe,
            )

        return StreamResponse(
            opened,
            call,
            done,
            extra_headers=headers[1:],
            keep_copy=keep,
            observe_gap=self._gap,
            resume=self._resume.stream(call)
            if self._continuations and call.kind.generates
            else None,
            max_continuations=self._continuations,
        )

    def _whole(
        self,
        call: Call,
        opened: Opened,
        headers: list[tuple[bytes, bytes]],
        keep: bool,
        observe: Observer | None,
    ) -> RawResponse:
        """A non-streamed answer (or an error status), already read in full."""
        outcome = classify(opened.status)
        opened.lease.release(outcome)
        body = opened.first_chunk
        success = outcome is Outcome.SUCCESS
        if success and call.kind is Kind.RESPONSES:
            call.answer_id = answer.id_of(body)
        tokens_in, tokens_out = answer.usage_of(body) if success else (0, 0)
        completion = Completion(
            outcome=outcome,
            status=opened.status,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            answer=answer.from_body(body) if keep and success else None,
            upstream_s=max(0.0, call.upstream_ended - call.upstream_started),
        )
        self._completed(call, completion, observe)
        return RawResponse(body, opened.status, opened.content_type, headers)

    def _completed(self, call: Call, completion: Completion, observe: Observer | None) -> None:
        """Account for an upstream answer that ended, once; then tell the observer."""
        self._count_attempt(call, completion.outcome)
        self.finish(call, completion.status, completion.outcome, completion)
        if observe is not None:
            observe(call, completion)

    async def _open_unless_client_leaves(self, call: Call) -> Opened:
        """Open upstream, but give up at once (and free the backend) if the client leaves.

        Until the first byte the client only waits, so nothing else would notice
        it going: a queued or long non-streamed request would run on for nobody.
        """
        if call.flow is not None and self._flow is not None and call.ticket is None:
            call.ticket = self._flow.enter(call.flow)  # None: it waits, below
        if call.receive is None:
            return await self._admitted(call)
        opening = asyncio.ensure_future(self._admitted(call))
        gone = asyncio.ensure_future(_disconnected(call.receive))
        stopped = False
        try:
            await asyncio.wait((opening, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this is cancelled (a cache hit, a shutdown): free the backend
            gone.cancel()
            if not opening.done():
                stopped = True
                await _stop(opening)
        if stopped:
            raise ClientGone
        return opening.result()

    async def _admitted(self, call: Call) -> Opened:
        """Wait for a slot in a saturated pool (cancelled when the client leaves), then open."""
        if call.ticket is None and call.flow is not None and self._flow is not None:
            call.ticket = await self._flow.wait(call.flow)
        return await self._upstream.open(call)

    async def abandon(self, call: Call, opening: asyncio.Future[Opened]) -> None:
        """A cache hit answers instead: stop the upstream attempt, blaming nobody.

        Its lease is released as cancelled (pending drops; the breaker and the
        latency estimate hear nothing) and its connection closed, so the model
        server stops generating. The call is not finished here: the hit is.
        An opening that already ended in an error (failed everywhere, client
        gone) was counted as such and is not a cancellation.
        """
        if opening.done() and (opening.cancelled() or opening.exception() is not None):
            return
        await _stop(opening)
        if not opening.cancelled() and opening.exception() is None:  # answered, thrown away
            self._metrics.upstream.labels(call.endpoint, Outcome.CANCELLED).inc()
        # (an attempt stopped before its answer was counted as cancelled by proxy.upstream)
        if call.attempts:
            call.cancelled_upstream_s = time.perf_counter() - call.upstream_started
            self._metrics.cache_cancelled_upstream.inc()
            self._metrics.cache_cancelled_upstream_seconds.inc(call.cancelled_upstream_s)
        Tracing.end(call.upstream_span, 499, cancelled_by="cache_hit")
        call.upstream_span = None

    def answered_locally(self, call: Call, status: int) -> None:
        """Account for an admitted call answered without an upstream (a cache hit)."""
        self.finish(call, status, "local")

    def _count_attempt(self, call: Call, outcome: Outcome) -> None:
        self._metrics.upstream.labels(call.endpoint, outcome).inc()
        if outcome.is_failure and call.first_token_at:
            self._metrics.stream_errors.labels(outcome).inc()
        elif outcome is Outcome.CANCELLED:
            self._metrics.client_disconnects.inc()

    def finish(
        self, call: Call, status: int, outcome: str, completion: Completion | None = None
    ) -> None:
        """Metrics and the log line for a call, once: ``completion`` when an upstream
        answer reached the client, else how it ended without one."""
        now = time.perf_counter()
        if call.ticket is not None:
            call.ticket.release()  # the next request waiting for this pool may go
        if call.budget is not None:  # the tenant's tokens: the real usage, or all back
            used = (completion.tokens_in, completion.tokens_out) if completion else (0, 0)
            call.budget.end(*used)
        m = self._metrics
        m.in_flight.dec()
        outcome = str(outcome)
        tokens_in, tokens_out = (
            (completion.tokens_in, completion.tokens_out) if completion else (0, 0)
        )
        m.requests.labels(call.route, call.model, str(status), call.cache).inc()
        m.duration.labels(call.route, "true" if call.stream else "false").observe(
            now - call.started
        )
        if call.first_token_at:
            m.first_token(call.model, call.cache, call.first_token_at - call.started)
        if call.upstream_started and call.upstream_ended:
            upstream = call.upstream_ended - call.upstream_started
            m.overhead.labels(call.route).observe(max(0.0, now - call.started - upstream))
        if tokens_out:
            m.tokens.labels(call.model, "out").inc(tokens_out)
        if tokens_in:
            m.tokens.labels(call.model, "in").inc(tokens_in)
        if call.span is not None:
            Tracing.end_inference(
                call.upstream_span,
                status,
                outcome,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                answer=completion.answer if completion else None,
                sent_at=call.upstream_started,
                first_chunk_at=call.first_token_at,
                endpoint=call.endpoint,
                attempts=call.attempts,
            )
            Tracing.end(call.span, status, cache=call.cache, outcome=outcome)
        if self._log_requests:
            log.info(
                "request_done",
                request_id=call.request_id,
                route=call.route,
                model=call.model,
                stream=call.stream,
                status=status,
                outcome=outcome,
                cache=call.cache,
                endpoint=call.endpoint,
                attempts=call.attempts,
                duration_ms=round((now - call.started) * 1000, 2),
                ttft_ms=round((call.first_token_at - call.started) * 1000, 2)
                if call.first_token_at
                else None,
                tokens_out=tokens_out,
                **_texts(call, completion),
                **_cancelled(call),
                **({"upstream_request_id": call.upstream_id} if call.upstream_id else {}),
            )


class ClientGone(Exception):
    """The client disconnected before the first byte of its answer."""


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def discard(opening: asyncio.Future[Opened]) -> None:
    """Cancel an opening nobody will serve. Cancelled, it releases its lease and closes
    its connection itself; one that had already ended is freed here: an answer thrown
    away unread, an error retrieved (it was counted where it happened)."""
    if opening.cancel() or opening.cancelled():
        return
    if opening.exception() is None:
        opened = opening.result()
        opened.lease.release(Outcome.CANCELLED)
        if opened.response is not None:
            opened.response.close()


async def _stop(opening: asyncio.Future[Opened]) -> None:
    """:func:`discard`, and wait until the opening has freed its lease and connection."""
    if opening.done():
        discard(opening)
        return
    opening.cancel()
    await asyncio.wait((opening,))
    discard(opening)  # it may have ended with an answer all the same


def _cancelled(call: Call) -> dict[str, float]:
    if not call.cancelled_upstream_s:
        return {}
    return {"upstream_cancelled_ms": round(call.cancelled_upstream_s * 1000, 2)}


def _texts(call: Call, completion: Completion | None) -> dict[str, str]:
    """Prompt and completion text: only present when GATEWAY_LOG_PROMPTS is on."""
    if call.prompt is None:
        return {}
    kept = completion.answer if completion is not None else None
    return {"prompt": call.prompt, "completion": answer.text_of(kept) if kept else ""}


def unexpected(exc: BaseException) -> tuple[int, str]:
    """The status and outcome of a call ended by an exception that is no gateway error."""
    return (499, "cancelled") if isinstance(exc, asyncio.CancelledError) else (500, "internal")
