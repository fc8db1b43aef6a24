"""The sidecar shell: health follows readiness and drain; reflection lists services."""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmgw_common.grpc_server import GrpcServer


async def _health(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def test_health_is_not_serving_until_ready_then_serving_then_draining() -> None:
    server = GrpcServer(host="127.0.0.1", port=0, service_names=["x.v1.Thing"], grace_s=0.1)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        await server.set_serving(True)
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert await _health(channel, "x.v1.Thing") == health_pb2.HealthCheckResponse.SERVING
        await server.health.enter_graceful_shutdown()
        assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    server.request_stop()
    await server.wait_and_drain()


async def test_reflection_lists_health_and_registered_names() -> None:
    server = GrpcServer(host="127.0.0.1", port=0, service_names=["x.v1.Thing"])
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        names: list[str] = []
        async for reply in stub.ServerReflectionInfo(iter([request])):
            names += [s.name for s in reply.list_services_response.service]
    await server.server.stop(0)
    assert "grpc.health.v1.Health" in names
    assert "x.v1.Thing" in names
