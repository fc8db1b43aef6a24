"""Continuing a stream whose upstream broke: the attempts (``proxy.continuation``
builds the requests and rewrites the events; ``proxy.stream`` splices them in).

The broken attempt is released as its failure and counted; a stream that only
lacked ``[DONE]`` is ended; otherwise the model's other endpoints are asked,
one way of continuing at a time (``continuation.plans``), each continuation
built from the client's own request, within the retry budget. A
``stream_continued`` log line says where the cut fell.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from gateway.balance.lease import Lease
from gateway.balance.outcome import Outcome, classify
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.proxy.attempt import Opened
from gateway.proxy.call import Call
from gateway.proxy.continuation import (
    FINISH,
    Partial,
    Plan,
    Splicer,
    UsageOnly,
    partial_answer,
    plans,
)
from gateway.proxy.stream import Resume, Resumed
from gateway.proxy.upstream import Upstream
from llmgw_common.logs import get_logger

log = get_logger("gateway.request")


class Resumer:
    """Continues the broken streams of one proxy."""

    def __init__(
        self,
        upstream: Upstream,
        metrics: GatewayMetrics,
        count: Callable[[Call, Outcome], None],  # an attempt's outcome, in the proxy's metrics
    ) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._count = count

    def stream(self, call: Call) -> Resume:
        """How a stream of ``call`` whose upstream broke is continued (``proxy.continuation``):
        on the model's other endpoints, asked the way each continues."""
        original = call.body  # each continuation is planned from the client's request

        async def resume(broken: Outcome, lease: Lease, sent: bytes) -> Resumed:
            partial = partial_answer(call.kind, sent)
            failed = lease.endpoint.name
            lease.release(broken)  # the replica broke the stream: its failure
            self._count(call, broken)
            if partial.finished:  # the whole answer is out; only the end marker is missing
                self._metrics.continuations.labels("finished").inc()
                if partial.usage or not _usage_asked(original):
                    return FINISH
                found = await self._usage_of(call, partial, failed)  # the usage was lost too
                return found or FINISH
            specs = self._upstream.endpoints(call.model)
            tries = plans(call.kind, original, partial, specs, failed)
            if not tries or not self._upstream.can_retry():
                self._metrics.continuations.labels("not_continuable").inc()
                return None
            for plan in tries:
                opened = await self._continue(call, plan)
                if opened is not None:
                    self._metrics.continuations.labels("continued").inc()
                    # where the cut fell: what the client had, and who continues it
                    log.info(
                        "stream_continued",
                        request_id=call.request_id,
                        broken=failed,
                        endpoint=opened.lease.endpoint.name,
                        route=plan.kind.route,
                        sent_tokens=partial.tokens,
                        sent_chars=len(partial.text),
                    )
                    return opened, Splicer(call.kind, partial, plan.kind)
            self._metrics.continuations.labels("failed").inc()
            return None

        return resume

    async def _usage_of(self, call: Call, partial: Partial, failed: str) -> Resumed | None:
        """A whole answer's lost usage: asked of another endpoint (one token, dropped)."""
        specs = self._upstream.endpoints(call.model)
        tries = plans(call.kind, call.body, partial, specs, failed, usage_only=True)
        if not tries or not self._upstream.can_retry():
            return None
        for plan in tries:
            opened = await self._continue(call, plan)
            if opened is not None:
                return opened, UsageOnly(call.kind, partial, plan.kind)
        return None

    async def _continue(self, call: Call, plan: Plan) -> Opened | None:
        """Open ``plan``'s continuation (its body, on its route); None if none answered."""
        body, path = call.body, call.path
        call.body, call.path = plan.body, "" if plan.kind is call.kind else plan.kind.route
        try:
            opened = await self._upstream.open(call, exclude=plan.exclude)
        except GatewayError:
            return None
        finally:
            call.body, call.path = body, path
        if opened.response is None:  # an error answer: nothing to splice
            opened.lease.release(classify(opened.status))
            return None
        return opened


def _usage_asked(body: bytes) -> bool:
    """Whether a stream's request asked for a usage event (``stream_options.include_usage``)."""
    try:
        options = orjson.loads(body).get("stream_options")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return isinstance(options, dict) and options.get("include_usage") is True
