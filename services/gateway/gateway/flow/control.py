"""A gateway queue per model pool, used only while the pool is saturated.

::

    enter(request) ── flow off, or the pool has room and nobody waits ──▶ Ticket   (no await)
      └ otherwise: wait in the pool's FairQueue (flow.drr)
           a slot frees (a Ticket released) or the signals clear ──▶ Ticket
           its tenant already has queue_per_tenant waiting ───────▶ 429 + Retry-After
           the pool's queue holds queue_max ──────────────────────▶ 503 + Retry-After
           its deadline passes: its tenant at/over its share ────▶ 429 + Retry-After
                                 under its share (fleet full) ───▶ 503 + Retry-After
           the client leaves (the wait is cancelled) ────────────▶ out of the queue at once

A :class:`Ticket` is held from admission until the call ends (``Proxy.finish``);
releasing it hands the slot to the next request in the queue. While the
engine queue or TTFT signal says the pool is full, a released slot is still
handed on, one for one (the pool stays as busy as it was, never busier), and
the queue is re-examined every ``refresh_s``.

Decisions where the issue is silent:

- **Fair share** of a tenant in a pool: the pool's capacity (when slots are
  known, else what this replica has admitted) times the tenant's weight over
  the weights of the tenants active in it (with requests admitted or waiting,
  or seen within ``active_s``). It decides 429 (over share: the tenant should
  slow down) against 503 (the fleet is short for everybody), and the reserve.
- **Reserve**: the last ``reserve`` free slots go only to tenants under their
  share, so a quiet tenant does not wait for a slot to free up behind a noisy
  one. 0 (the default) is fully work-conserving; docs/flow-control.md has the
  measured trade-off.
- **Deadline**: ``max_wait_s``; a request may ask for less (or more, up to
  ``max_wait_limit_s``) with ``x-llmgw-max-wait-ms``. The request is refused
  when the deadline passes, not predicted to pass: a prediction from a
  departure rate would refuse requests that would have made it.
- ``Retry-After``: the time for the pool to serve what waits now, at the rate
  slots have been freeing (an EWMA), at least 1 s.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.balance.pool import Pool
from gateway.errors import GatewayError, Overloaded, RateLimited
from gateway.flow.config import PRIORITIES, FlowConfig
from gateway.flow.drr import Entry, FairQueue
from gateway.flow.metrics import FlowMetrics
from gateway.flow.saturation import Fleet, assess
from llmgw_common.logs import get_logger

log = get_logger("gateway.flow")

RATE_TAU_S = 5.0  # the departure rate's EWMA time constant


@dataclass(slots=True)
class FlowRequest:
    """What flow control needs of one request (built by the route)."""

    model: str
    tenant: str
    priority: int  # index in PRIORITIES
    weight: float
    cost: float  # estimated tokens: prompt + max_tokens
    max_wait_s: float


class Ticket:
    """A slot in a pool, held until :meth:`release`; releasing twice is harmless."""

    __slots__ = ("_flow", "_pool", "_released", "tenant")

    def __init__(self, flow: FlowControl, pool: _PoolFlow | None, tenant: str) -> None:
        self._flow = flow
        self._pool = pool
        self.tenant = tenant
        self._released = False

    def release(self) -> None:
        if not self._released and self._pool is not None:
            self._released = True
            self._flow._release(self._pool, self.tenant)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[Ticket]
    request: FlowRequest
    since: float


class _PoolFlow:
    __slots__ = (
        "admitted",
        "by_tenant",
        "counters",
        "fleet",
        "gauge",
        "model",
        "queue",
        "rate",
        "refresh_at",
        "seen",
    )

    def __init__(self, model: str, quantum: float, gauge: Any) -> None:
        self.model = model
        self.gauge = gauge  # gateway_flow_admitted_in_flight{model}
        self.counters: dict[tuple[int, str], tuple[Any, Any]] = {}
        self.queue: FairQueue[_Waiter] = FairQueue(quantum)
        self.admitted = 0
        self.by_tenant: dict[str, int] = {}
        self.fleet = Fleet(None, "")
        self.refresh_at = 0.0
        self.seen: dict[str, tuple[float, float]] = {}  # tenant -> (last seen, weight)
        self.rate = _Rate()


class _Rate:
    """Slots freed per second, as an EWMA over the gaps between releases."""

    __slots__ = ("last", "per_s")

    def __init__(self) -> None:
        self.last = 0.0
        self.per_s = 0.0

    def tick(self, now: float) -> None:
        if self.last:
            gap = max(now - self.last, 1e-6)
            self.per_s += (1.0 - math.exp(-gap / RATE_TAU_S)) * (1.0 / gap - self.per_s)
        self.last = now


class FlowControl:
    def __init__(
        self,
        config: FlowConfig,
        pool: Pool,
        metrics: FlowMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.active = config.active
        self._pool = pool
        self._metrics = metrics
        self._clock = clock
        self._pools: dict[str, _PoolFlow] = {}

    # -- admission ---------------------------------------------------------------

    def enter(self, req: FlowRequest) -> Ticket | None:
        """A ticket now (the pool has room and nobody waits), else None: :meth:`wait`.

        A model no endpoint serves is not counted (routing answers 404): client-chosen
        names must not grow the pools or the metrics' labels."""
        if not self._pool.has_model(req.model):
            return Ticket(self, None, req.tenant)
        pf, now = self._seen(req)
        if now >= pf.refresh_at:
            self._refresh(pf, now)
        if pf.queue or pf.fleet.full or not self._has_room(pf, req.tenant, now):
            return None
        ticket = self._admit(pf, req)
        self._metrics.admitted.labels(
            pf.model, PRIORITIES[req.priority], req.tenant, "direct"
        ).inc()
        return ticket

    async def wait(self, req: FlowRequest) -> Ticket:
        """Wait in the queue for a slot; raises RateLimited (429) or Overloaded (503)."""
        pf, now = self._seen(req)
        config = self.config
        if pf.queue.by_tenant.get(req.tenant, 0) >= config.queue_per_tenant:
            raise self._shed(pf, req, "tenant_queue_full", now)
        if len(pf.queue) >= config.queue_max:
            raise self._shed(pf, req, "queue_full", now)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), req, now)
        entry = Entry(waiter, req.tenant, req.priority, req.cost, req.weight)
        pf.queue.push(entry)
        self._depth(pf, req)
        if not pf.fleet.full:  # a reserved slot may be free for it (the others wait for
            self._dispatch(pf, now)  # slots the reserve keeps from them): it goes at once
        timer = loop.call_later(req.max_wait_s, self._expire, pf, entry)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()  # granted and cancelled at once: pass the slot on
            elif pf.queue.remove(entry):
                self._depth(pf, req)
                labels = (pf.model, PRIORITIES[req.priority], req.tenant)
                self._metrics.left.labels(*labels).inc()
                self._metrics.wait.labels(*labels).observe(self._clock() - waiter.since)
            raise
        finally:
            timer.cancel()

    def _seen(self, req: FlowRequest) -> tuple[_PoolFlow, float]:
        pf = self._pools.get(req.model)
        if pf is None:
            gauge = self._metrics.in_flight.labels(req.model)
            pf = self._pools[req.model] = _PoolFlow(req.model, self.config.quantum_tokens, gauge)
        now = self._clock()
        pf.seen[req.tenant] = (now, req.weight)
        return pf, now

    # -- slots ---------------------------------------------------------------------

    def _admit(self, pf: _PoolFlow, req: FlowRequest) -> Ticket:
        pf.admitted += 1
        pf.by_tenant[req.tenant] = pf.by_tenant.get(req.tenant, 0) + 1
        metrics = self._metrics
        metrics.in_flight.labels(pf.model).set(pf.admitted)
        metrics.admitted_tokens.labels(pf.model, PRIORITIES[req.priority], req.tenant).inc(req.cost)
        return Ticket(self, pf, req.tenant)

    def _release(self, pf: _PoolFlow, tenant: str) -> None:
        pf.admitted -= 1
        left = pf.by_tenant.get(tenant, 1) - 1
        if left > 0:
            pf.by_tenant[tenant] = left
        else:
            pf.by_tenant.pop(tenant, None)
        pf.gauge.set(pf.admitted)
        if not pf.queue:
            return
        now = self._clock()
        pf.rate.tick(now)
        if now >= pf.refresh_at:
            self._refresh(pf, now)
        self._dispatch(pf, now, handed_on=1)

    def _has_room(self, pf: _PoolFlow, tenant: str, now: float) -> bool:
        capacity = pf.fleet.capacity
        if capacity is None:
            return True
        free = capacity - pf.admitted
        if free > self.config.reserve:
            return True
        return free > 0 and pf.by_tenant.get(tenant, 0) < self.share(pf, tenant, now)

    def _dispatch(self, pf: _PoolFlow, now: float, handed_on: int = 0) -> None:
        """Grant slots to waiting requests while the pool has room (or, while a signal
        says it is full, ``handed_on`` slots: those just freed)."""
        reserve = self.config.reserve
        while pf.queue:
            capacity = pf.fleet.capacity
            if pf.fleet.full and handed_on <= 0:
                return
            if capacity is not None and pf.admitted >= capacity:
                return
            allowed = None
            if capacity is not None and reserve and capacity - pf.admitted <= reserve:
                allowed = self._under_share(pf, now)
            entry = pf.queue.pop(allowed)
            if entry is None:
                return
            handed_on -= 1
            waiter = entry.item
            req = waiter.request
            self._depth(pf, req)
            labels = (pf.model, PRIORITIES[req.priority], req.tenant)
            self._metrics.wait.labels(*labels).observe(now - waiter.since)
            self._metrics.admitted.labels(*labels, "queued").inc()
            waiter.future.set_result(self._admit(pf, req))

    def _under_share(self, pf: _PoolFlow, now: float) -> Callable[[str], bool]:
        return lambda tenant: pf.by_tenant.get(tenant, 0) < self.share(pf, tenant, now)

    def share(self, pf: _PoolFlow, tenant: str, now: float) -> float:
        """The tenant's fair share of the pool's slots (see the module docstring)."""
        horizon = now - self.config.active_s
        total = 0.0
        mine = 0.0
        for name, (seen, weight) in list(pf.seen.items()):
            if seen < horizon and name not in pf.by_tenant and not pf.queue.by_tenant.get(name):
                del pf.seen[name]
                continue
            total += weight
            if name == tenant:
                mine = weight
        slots = pf.fleet.capacity if pf.fleet.capacity is not None else pf.admitted
        return slots * mine / total if total else float(slots)

    # -- signals and deadlines -------------------------------------------------------

    def _refresh(self, pf: _PoolFlow, now: float) -> None:
        fleet = assess(self._pool.readings(pf.model), self.config)
        if (fleet.full != "") != (pf.fleet.full != ""):
            self._metrics.saturated.labels(pf.model).set(1 if fleet.full else 0)
        pf.fleet = fleet
        pf.refresh_at = now + self.config.refresh_s

    def _expire(self, pf: _PoolFlow, entry: Entry[_Waiter]) -> None:
        waiter = entry.item
        if waiter.future.done() or not pf.queue.remove(entry):
            return
        req, now = waiter.request, self._clock()
        self._depth(pf, req)
        over = pf.by_tenant.get(req.tenant, 0) >= self.share(pf, req.tenant, now)
        reason = "deadline_over_share" if over else "deadline_fleet_full"
        waiter.future.set_exception(self._shed(pf, req, reason, now))
        self._metrics.wait.labels(pf.model, PRIORITIES[req.priority], req.tenant).observe(
            now - waiter.since
        )

    def _shed(self, pf: _PoolFlow, req: FlowRequest, reason: str, now: float) -> GatewayError:
        self._metrics.shed.labels(pf.model, PRIORITIES[req.priority], req.tenant, reason).inc()
        wait = max(1.0, (len(pf.queue) + 1) / pf.rate.per_s) if pf.rate.per_s > 0 else 1.0
        wait = min(wait, self.config.max_wait_limit_s)
        if reason in ("tenant_queue_full", "deadline_over_share"):
            return RateLimited(
                f"Tenant {req.tenant!r} is over its share of model {pf.model!r}, which is"
                f" saturated ({reason.replace('_', ' ')}); retry later",
                retry_after=wait,
            )
        return Overloaded(
            f"The model {pf.model!r} is over capacity ({reason.replace('_', ' ')}); retry shortly",
            retry_after=wait,
        )

    def _depth(self, pf: _PoolFlow, req: FlowRequest) -> None:
        self._metrics.depth.labels(pf.model, PRIORITIES[req.priority], req.tenant).set(
            pf.queue.depth(req.priority, req.tenant)
        )

    async def run(self) -> None:
        """Re-read the signals of pools with requests waiting, and send what may go."""
        while True:
            await asyncio.sleep(self.config.refresh_s)
            now = self._clock()
            for pf in self._pools.values():
                if pf.queue:
                    try:
                        self._refresh(pf, now)
                        self._dispatch(pf, now)
                    except Exception as exc:  # a bug must not stop the queue for good
                        log.error("flow_refresh_error", model=pf.model, exc_info=exc)
