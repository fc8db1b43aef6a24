"""Who goes next out of a pool's queue: priority class first, then deficit round robin.

Pure (no clock, no I/O). Classes are strict: an ``interactive`` request always
goes before any ``batch`` one. Inside a class each tenant with requests
waiting is in a ring; on its turn a tenant is credited ``quantum * weight``
tokens and sends requests, oldest first, while its credit covers their
estimated cost (prompt + ``max_tokens``); what is left is kept for its next
turn, and dropped when its queue empties (Shreedhar and Varghese, 1995). Over
any stretch in which tenants stay backlogged, the tokens each is sent are in
proportion to its weight, whatever the size of its requests.

A tenant whose queue was empty (a quiet one, whose requests come slower than
its share) joins a list of new tenants served before the ring, with one
quantum of credit: its request goes with the next free slot instead of after
the turns of the tenants already backlogged. Once that credit is spent, or
cannot pay for its next request, it joins the ring like any other. This is
FQ-CoDel's new-flows list (RFC 8290, section 4.1); a tenant gains nothing by
it over time, since it has it only while it sends under its share.

When no tenant in the ring can pay for its oldest request, whole laps are
credited at once instead of one turn at a time, so a request far larger than
the quantum costs one pass over the ring, not thousands.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gateway.flow.config import PRIORITIES

T = TypeVar("T")


@dataclass(slots=True)
class Entry(Generic[T]):
    item: T
    tenant: str
    priority: int  # index in PRIORITIES
    cost: float  # estimated tokens
    weight: float
    seq: int = 0  # arrival order, set by the queue


@dataclass(slots=True)
class _Class(Generic[T]):
    queues: dict[str, deque[Entry[T]]] = field(default_factory=dict)
    fresh: deque[str] = field(default_factory=deque)  # tenants whose queue was empty: first
    ring: deque[str] = field(default_factory=deque)  # tenants with requests; the head has the turn
    deficit: dict[str, float] = field(default_factory=dict)
    credited: bool = False  # the head tenant had its credit for this turn


class FairQueue(Generic[T]):
    def __init__(self, quantum: float) -> None:
        self._quantum = quantum
        self._classes: list[_Class[T]] = [_Class() for _ in PRIORITIES]
        self._len = 0
        self._seq = 0
        self.by_tenant: dict[str, int] = {}

    def __len__(self) -> int:
        return self._len

    def push(self, entry: Entry[T]) -> None:
        self._seq += 1
        entry.seq = self._seq
        cls = self._classes[entry.priority]
        queue = cls.queues.get(entry.tenant)
        if queue is None:
            queue = cls.queues[entry.tenant] = deque()
            cls.fresh.append(entry.tenant)
            cls.deficit[entry.tenant] = self._quantum * entry.weight
        queue.append(entry)
        self._len += 1
        self.by_tenant[entry.tenant] = self.by_tenant.get(entry.tenant, 0) + 1

    def remove(self, entry: Entry[T]) -> bool:
        """Take a request out (its client left, its deadline passed); False if not queued."""
        cls = self._classes[entry.priority]
        queue = cls.queues.get(entry.tenant)
        if queue is None:
            return False
        try:
            queue.remove(entry)
        except ValueError:
            return False
        self._taken(cls, entry)
        return True

    def pop(self, allowed: Callable[[str], bool] | None = None) -> Entry[T] | None:
        """The next request to send, or None. ``allowed`` (when given) limits the choice
        to tenants it accepts; among them the oldest request of the highest class goes,
        outside the round robin (the reserve: ``flow.control``)."""
        for cls in self._classes:
            if not cls.queues:
                continue
            if allowed is not None:
                return self._first_allowed(cls, allowed)
            return self._next(cls)
        return None

    def _next(self, cls: _Class[T]) -> Entry[T]:
        while cls.fresh:
            tenant = cls.fresh[0]
            head = cls.queues[tenant][0]
            if cls.deficit[tenant] >= head.cost:
                cls.deficit[tenant] -= head.cost
                cls.queues[tenant].popleft()
                self._taken(cls, head)
                return head
            cls.fresh.popleft()  # its first turn is over: it joins the others
            cls.ring.append(tenant)
        quantum = self._quantum
        while True:
            tenant = cls.ring[0]
            head = cls.queues[tenant][0]
            if not cls.credited:
                cls.deficit[tenant] += quantum * head.weight
                cls.credited = True
            if cls.deficit[tenant] >= head.cost:
                cls.deficit[tenant] -= head.cost
                cls.queues[tenant].popleft()
                self._taken(cls, head)
                return head
            cls.ring.rotate(-1)  # its turn is over; the credit left is kept
            cls.credited = False
            self._skip_laps(cls)

    def _skip_laps(self, cls: _Class[T]) -> None:
        """Credit whole laps at once when every tenant needs more than one more turn."""
        laps = math.inf
        for tenant in cls.ring:
            head = cls.queues[tenant][0]
            short = head.cost - cls.deficit[tenant]
            laps = min(laps, math.ceil(short / (self._quantum * head.weight)) - 1)
        if laps >= 1 and laps != math.inf:
            for tenant in cls.ring:
                cls.deficit[tenant] += laps * self._quantum * cls.queues[tenant][0].weight

    def _first_allowed(self, cls: _Class[T], allowed: Callable[[str], bool]) -> Entry[T] | None:
        best: Entry[T] | None = None
        for tenant in (*cls.fresh, *cls.ring):
            if allowed(tenant):
                head = cls.queues[tenant][0]
                if best is None or head.seq < best.seq:
                    best = head
        if best is not None:
            cls.queues[best.tenant].popleft()
            self._taken(cls, best)
        return best

    def _taken(self, cls: _Class[T], entry: Entry[T]) -> None:
        self._len -= 1
        left = self.by_tenant[entry.tenant] - 1
        if left:
            self.by_tenant[entry.tenant] = left
        else:
            del self.by_tenant[entry.tenant]
        tenant = entry.tenant
        if not cls.queues[tenant]:  # an emptied queue leaves the ring and loses its credit
            del cls.queues[tenant]
            del cls.deficit[tenant]
            if tenant in cls.fresh:
                cls.fresh.remove(tenant)
                return
            if cls.ring[0] == tenant:
                cls.credited = False
            cls.ring.remove(tenant)

    def depth(self, priority: int, tenant: str) -> int:
        """Requests of ``tenant`` waiting in class ``priority``."""
        queue = self._classes[priority].queues.get(tenant)
        return len(queue) if queue is not None else 0

    def depths(self) -> dict[tuple[str, str], int]:
        """Requests waiting per (class, tenant), for the metrics."""
        return {
            (PRIORITIES[i], tenant): len(queue)
            for i, cls in enumerate(self._classes)
            for tenant, queue in cls.queues.items()
        }
