"""One sidecar connection: a gRPC channel, a short-lived breaker, error counts.

Channels use the ``round_robin`` policy, so a ``dns:///name:port`` target (a
Kubernetes headless Service) spreads calls over every replica instead of
pinning one HTTP/2 connection to one pod.

Every call carries a gRPC deadline. A sidecar that keeps failing (errors or
deadlines) is not called at all for a short while: the breaker is the same
pure class the router uses, with a short ejection. Callers see one exception,
:class:`SidecarUnavailable`, and treat it as a cache miss (fail open).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.balance.breaker import BreakerConfig, CircuitBreaker
from gateway.errors import DependencyUnavailable, InvalidRequest
from gateway.metrics import GatewayMetrics
from gateway.tracing import current_trace_headers

Reply = TypeVar("Reply")

CHANNEL_OPTIONS = [
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.dns_min_time_between_resolutions_ms", 5_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]

# Codes that say the request was wrong, not that the sidecar is unwell.
_CALLER_FAULTS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND})


class SidecarUnavailable(DependencyUnavailable):
    """The sidecar failed, timed out, or is being skipped by its breaker."""


class SidecarRejected(InvalidRequest):
    """The sidecar refused the input (INVALID_ARGUMENT)."""


class Sidecar:
    def __init__(
        self,
        name: str,
        target: str,
        metrics: GatewayMetrics,
        *,
        failures: int = 5,
        open_s: float = 2.0,
        propagate: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._propagate = propagate
        self.name = name
        self.target = target
        self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._metrics = metrics
        self._clock = clock
        config = BreakerConfig(
            consecutive_failures=failures,
            base_ejection_s=open_s,
            max_ejection_s=open_s * 8,
            probes=1,
        )
        self._breaker = CircuitBreaker(config, clock())

    def available(self) -> bool:
        return self._breaker.allows(self._clock())

    async def call(
        self,
        method: Callable[..., Awaitable[Reply]],
        request: Any,
        *,
        deadline_s: float,
        request_id: str = "",
    ) -> Reply:
        now = self._clock()
        if not self._breaker.allows(now):
            self._metrics.sidecar_errors.labels(self.name, "breaker_open").inc()
            raise SidecarUnavailable(f"{self.name} is temporarily skipped after failures")
        self._breaker.admit(now)
        metadata = [("x-request-id", request_id)] if request_id else []
        if self._propagate:  # tracing on: the current span travels in the metadata
            metadata.extend(current_trace_headers().items())
        try:
            reply = await method(request, timeout=deadline_s, metadata=metadata or None)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            self._metrics.sidecar_errors.labels(self.name, code.name.lower()).inc()
            if code in _CALLER_FAULTS:
                self._breaker.neutral(self._clock())
                raise SidecarRejected(exc.details() or f"{self.name} rejected the input") from exc
            self._breaker.failure(self._clock())
            raise SidecarUnavailable(f"{self.name} failed: {code.name}") from exc
        except BaseException:
            self._breaker.neutral(self._clock())
            raise
        self._breaker.success(self._clock())
        return reply

    async def close(self) -> None:
        await self.channel.close()
