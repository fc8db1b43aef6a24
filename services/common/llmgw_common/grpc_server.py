"""The shell every gRPC sidecar runs in.

- the standard ``grpc.health.v1.Health`` service: NOT_SERVING until the
  service says it is ready (model loaded, index built), SERVING after, and
  NOT_SERVING again as soon as a drain starts;
- server reflection, so ``grpcurl -plaintext host:port list`` works;
- Prometheus metrics on their own HTTP port;
- graceful drain on SIGTERM/SIGINT: stop accepting, let in-flight calls
  finish within a grace period, then stop.

The request id a caller sends in the ``x-request-id`` metadata is bound to the
logs of that call by :class:`RequestIdInterceptor`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from llmgw_common.logs import bind_request_id, get_logger

log = get_logger(__name__)

_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


class RequestIdInterceptor(grpc.aio.ServerInterceptor):
    """Binds the caller's ``x-request-id`` to the logs of the call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "x-request-id":
                bind_request_id(str(value))
                break
        return await continuation(handler_call_details)


class GrpcServer:
    """A ``grpc.aio`` server with health, reflection and graceful drain."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        service_names: Sequence[str],
        grace_s: float = 10.0,
    ) -> None:
        self.server = grpc.aio.server(
            interceptors=[RequestIdInterceptor()], options=_SERVER_OPTIONS
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = list(service_names)
        reflection.enable_server_reflection(
            [
                *self._service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self._grace_s = grace_s
        self._stop = asyncio.Event()

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any) -> None:
        """Register a servicer: ``add(pb2_grpc.add_XServicer_to_server, servicer)``."""
        register(servicer, self.server)

    async def start(self) -> None:
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("grpc_server_started", port=self.port, services=self._service_names)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._set_all(status)
        log.info("health_changed", serving=serving)

    async def _set_all(self, status: int) -> None:
        for name in ("", *self._service_names):
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def wait_and_drain(self) -> None:
        """Block until a stop is requested, then drain gracefully."""
        await self._stop.wait()
        log.info("drain_started", grace_s=self._grace_s)
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self._grace_s)
        log.info("drain_finished")


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Serve the default Prometheus registry on its own port (0 disables it)."""
    if port:
        start_http_server(port, addr=host)
