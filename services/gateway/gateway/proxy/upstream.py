"""Open a request to a model server, failing over until the first byte.

Each attempt's HTTP mechanics are :mod:`gateway.proxy.attempt`; here, which
endpoint, failover, blame, and hedging (:mod:`gateway.proxy.hedging`).

:meth:`Upstream.open` picks an endpoint from the pool and tries it. Anything
that goes wrong before the client has seen a byte (connect error, 5xx, 429,
no first chunk in time, a stream that closes empty) is retried on another
endpoint, while the pool's retry budget allows. What it returns is either an
opened stream (status 200 and its first chunk already read) or a complete
non-streamed answer. After that, nothing is retried: see ``proxy.stream``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection

from gateway.balance.errors import NoEndpoint, UnknownModel
from gateway.balance.outcome import Outcome
from gateway.balance.pool import EndpointSpec, Lease, Pool
from gateway.errors import (
    GatewayError,
    ModelNotFound,
    NoBackendAvailable,
    RequestFailedEverywhere,
    StoredElsewhere,
)
from gateway.metrics import GatewayMetrics
from gateway.proxy.attempt import REQUEST_FAULT_STATUSES, Attempts, Opened, Retryable
from gateway.proxy.backend_errors import (
    Failures,
)
from gateway.proxy.call import Call
from gateway.proxy.hedging import Race
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing


class Upstream(Attempts):
    """Endpoints chosen, attempts failed over and hedged, over :class:`Attempts`."""

    def __init__(self, settings: GatewaySettings, pool: Pool, metrics: GatewayMetrics) -> None:
        super().__init__(settings)
        self._pool = pool
        self._metrics = metrics

    def can_retry(self) -> bool:
        """Whether the retry budget allows one more attempt (counted when it does)."""
        return self._pool.can_retry()

    def endpoints(self, model: str) -> list[EndpointSpec]:
        """The endpoints serving ``model`` now."""
        return self._pool.specs(model)

    async def open(self, call: Call, exclude: Collection[str] = ()) -> Opened:
        """Try endpoints until one answers; if none does, raise what :class:`Failures` says.

        A 500 is held against its endpoint only when another endpoint then
        answers the same request (the first was at fault). When a second
        endpoint also answers 500, the request is at fault: neither is
        charged, it is not retried again, and the client gets a 502 that tells
        SDKs not to retry. With no second opinion (no other endpoint, no retry
        budget, the client left) nobody is charged: blame needs evidence.

        A stream whose first token is late is hedged (:meth:`_answer`).
        """
        tried: list[str] = list(exclude)  # endpoints not to try (a stream's broken one)
        if call.pinned:  # only the endpoint that holds what the call refers to
            others = self._pool.others(call.model, call.pinned)
            if len(others) == len(self._pool.specs(call.model)):  # it has left the pool
                raise StoredElsewhere(
                    "The model server that stored the response this request refers to has"
                    " left the pool; the response is lost with it"
                )
            tried += others
        suspects: list[Lease] = []
        failures = Failures(NoBackendAvailable(f"no backend available for model {call.model!r}"))
        for attempt in range(self._settings.max_attempts):
            if attempt and not self._pool.can_retry():
                self._metrics.retry_budget_exhausted.inc()
                failures.refused = True
                break
            lease = self._acquire(call, tried)
            if lease is None:
                break
            tried.append(lease.endpoint.name)
            call.attempts += 1
            try:
                opened = await self._answer(lease, call, tried, suspects)
            except Retryable as failure:
                failures.add(failure.error)
                if self._failed(failure, suspects):
                    raise _request_failed(failure.error) from None
                self._metrics.retries.labels(failure.outcome).inc()
                continue
            if opened.status < 400:  # another endpoint answered: the earlier 5xx were theirs
                for suspect in suspects:
                    suspect.blame()
            spec = opened.lease.endpoint
            Tracing.server(call.upstream_span, spec.url, spec.server_hostname)
            return opened
        raise failures.final(tried=len(tried))

    def _failed(self, failure: Retryable, suspects: list[Lease]) -> bool:
        """Release a failed attempt; True when the request itself is at fault (a second
        endpoint failed it the way the first did: neither is charged)."""
        lease = failure.lease
        assert lease is not None
        deferred = failure.status in REQUEST_FAULT_STATUSES
        lease.release(failure.outcome, failure.retry_after, defer_blame=deferred)
        self._metrics.upstream.labels(lease.endpoint.name, failure.outcome).inc()
        if deferred and suspects:  # never charged: their held failures are dropped
            return True
        if deferred:
            suspects.append(lease)
        return False

    async def _answer(
        self, lease: Lease, call: Call, tried: list[str], suspects: list[Lease]
    ) -> Opened:
        """One attempt on ``lease``, hedged when it is a stream whose first token is late.

        Past the pool's hedge delay (``balance.hedge``), and within the hedge
        budget, a second attempt starts on another endpoint; the first of the
        two to produce its first chunk answers and the other is cancelled (its
        connection closed, so the server stops; a lower bound on its time to
        first token is kept, see ``Lease.outrun``). An attempt that fails
        while the other runs is released as any failed attempt is; when the
        last one fails, its failure is raised for :meth:`open` to fail over.
        Nothing is hedged once the client has a byte: this all happens
        before the first chunk is returned.
        """
        delay = self._pool.hedge_delay(lease) if call.stream else None
        if delay is None:
            try:
                return await self._attempt(lease, call)
            except Retryable:
                raise
            except BaseException:
                await self._stop(lease, lease.endpoint.name, outrun=False)
                raise
        name, started = lease.endpoint.name, time.perf_counter()
        race: Race[Opened] = Race(lambda: self._hedge(call, tried))
        timer = asyncio.get_running_loop().call_later(delay, race.fire)
        try:
            opened = await self._attempt(lease, call)
        except asyncio.CancelledError:
            race.settled = True
            if race.interrupted():  # the hedge answered first
                assert race.task is not None
                await self._stop(lease, name)
                self._metrics.hedges.labels("hedge").inc()
                return race.task.result()
            await self._stop_hedge(race, suspects)
            await self._stop(lease, name, outrun=False)
            raise
        except Retryable as failure:
            race.settled = True
            if race.task is None:
                raise
            return await self._hedge_answers(race, failure, suspects)
        except BaseException:
            race.settled = True
            await self._stop_hedge(race, suspects)
            await self._stop(lease, name, outrun=False)
            raise
        finally:
            timer.cancel()
        race.settled = True
        if race.task is not None:  # the first attempt answered first
            await self._stop_hedge(race, suspects)
            call.upstream_started, call.endpoint = started, name
            self._metrics.hedges.labels("first").inc()
        return opened

    async def _hedge_answers(
        self, race: Race[Opened], failure: Retryable, suspects: list[Lease]
    ) -> Opened:
        """The first attempt failed while its hedge runs: the hedge may still answer."""
        assert race.task is not None
        if self._failed(failure, suspects):
            await self._stop_hedge(race, suspects)
            raise _request_failed(failure.error) from None
        try:
            await asyncio.wait((race.task,))
        except BaseException:
            await self._stop_hedge(race, suspects)
            raise
        outcome = race.task.exception()
        if outcome is None:
            self._metrics.hedges.labels("hedge").inc()
            return race.task.result()
        self._metrics.hedges.labels("none").inc()
        if not isinstance(outcome, Retryable):
            race.lease.release(Outcome.CANCELLED)
        raise outcome  # a failed hedge fails over as any attempt does (open() releases it)

    async def _stop(self, lease: Lease, name: str, *, outrun: bool = True) -> None:
        """An attempt stopped before its first byte (it lost a hedge race, or the request
        was cancelled: the client left, a cache hit answered): free its endpoint, blame
        nobody, count it as cancelled."""
        if outrun:
            lease.outrun()
        lease.release(Outcome.CANCELLED)
        self._metrics.upstream.labels(name, Outcome.CANCELLED).inc()

    async def _stop_hedge(self, race: Race[Opened], suspects: list[Lease]) -> None:
        """Cancel a hedge nobody needs; one that failed already is released as failed."""
        task, held = race.task, race.lease
        if task is None or held is None:
            return
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
        failure = None if task.cancelled() else task.exception()
        if isinstance(failure, Retryable):
            self._failed(failure, suspects)
            return
        if failure is None and not task.cancelled():
            opened = task.result()
            if opened.response is not None:
                opened.response.close()
        await self._stop(held, held.endpoint.name)

    def _hedge(self, call: Call, tried: list[str]) -> tuple[Lease, Awaitable[Opened]] | None:
        """A hedge's attempt on another endpoint, if the budget and the pool allow one."""
        if not self._pool.can_hedge():
            self._metrics.hedge_budget_exhausted.inc()
            return None
        first = call.endpoint
        second = self._acquire(call, tried, hedge=True)
        if second is None:
            return None
        call.endpoint = first  # the first attempt's, until the hedge answers
        tried.append(second.endpoint.name)
        call.attempts += 1
        return second, self._hedge_attempt(second, call)

    async def _hedge_attempt(self, lease: Lease, call: Call) -> Opened:
        opened = await self._attempt(lease, call)
        call.endpoint = lease.endpoint.name  # it answered: the request is its
        return opened

    def _acquire(self, call: Call, tried: list[str], *, hedge: bool = False) -> Lease | None:
        try:
            lease = self._pool.acquire(call.model, tried, stream=call.stream, prefix=call.prefix)
        except UnknownModel as exc:
            raise ModelNotFound(f"The model {call.model!r} does not exist") from exc
        except NoEndpoint:
            return None
        if lease.panic:
            if hedge:  # a hedge goes to a healthy endpoint or nowhere
                lease.release(Outcome.CANCELLED)
                return None
            self._metrics.panic_routings.labels(call.model).inc()
        call.endpoint = lease.endpoint.name
        return lease


def _request_failed(error: GatewayError) -> RequestFailedEverywhere:
    return RequestFailedEverywhere(
        f"The request failed on two model servers ({error.message}); it is not retried"
    )
