"""A service's gRPC server: auth, scopes, health and reflection, over the wire."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from crm.ops.v1 import ops_pb2, ops_pb2_grpc
from crm_runtime.migrations import migrations_for
from crm_runtime.service import ServiceRunner
from crm_runtime.settings import ApiToken, Settings
from tests.support.kafka import create_topics
from tests.support.ledger import MIGRATIONS, ledger_spec

OPS_TOKEN = "ops-token-0123456789abcdef"
OTHER_TOKEN = "other-token-0123456789abcdef"


@pytest.fixture
async def service(settings: Settings, uid: str) -> AsyncIterator[ServiceRunner]:
    assert settings.kafka_bootstrap_servers
    await create_topics(settings.kafka_bootstrap_servers, [f"t.req.{uid}", f"t.booked.{uid}"])
    s = settings.model_copy(update={"api_tokens": [
        ApiToken(system="ops-board", scopes=["ops:read"], token=OPS_TOKEN),
        ApiToken(system="pos", scopes=["customers:read"], token=OTHER_TOKEN)]})
    runner = ServiceRunner(ledger_spec(f"grpc_{uid}", f"t.req.{uid}", f"t.booked.{uid}"), s,
                           grpc_port=0, serve_metrics=False)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.ready.wait(), 60)
    yield runner
    runner.stop()
    await asyncio.wait_for(task, 30)


def _channel(runner: ServiceRunner) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{runner.bound_grpc_port}")


async def _status(runner: ServiceRunner, token: str | None) -> grpc.StatusCode:
    async with _channel(runner) as channel:
        stub = ops_pb2_grpc.OperationsStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        try:
            await stub.GetStatus(ops_pb2.GetStatusRequest(), metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK


async def test_tokens_are_checked_with_the_right_codes(service: ServiceRunner) -> None:
    assert await _status(service, None) == grpc.StatusCode.UNAUTHENTICATED
    assert await _status(service, "not-a-known-token-at-all") == grpc.StatusCode.UNAUTHENTICATED
    assert await _status(service, OTHER_TOKEN) == grpc.StatusCode.PERMISSION_DENIED
    assert await _status(service, OPS_TOKEN) == grpc.StatusCode.OK


async def test_status_reports_the_service(service: ServiceRunner) -> None:
    async with _channel(service) as channel:
        reply = await ops_pb2_grpc.OperationsStub(channel).GetStatus(
            ops_pb2.GetStatusRequest(), metadata=[("authorization", f"Bearer {OPS_TOKEN}")])
    assert reply.service == service.spec.name
    plan = migrations_for(MIGRATIONS)
    assert list(reply.migrations) == [f"{m.source}/{m.version:03d}_{m.name}" for m in plan]
    assert reply.outbox_backlog == 0


async def test_health_and_reflection_are_open(service: ServiceRunner) -> None:
    async with _channel(service) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="crm.ops.v1.Operations"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = set()
        async for response in responses:
            names = {s.name for s in response.list_services_response.service}
            break
    assert {"crm.ops.v1.Operations", "grpc.health.v1.Health"} <= names


async def test_reflection_v1_lists_and_describes_services(service: ServiceRunner) -> None:
    """Clients that speak grpc.reflection.v1 (grpcurl, Postman, grpc-java) work."""
    async with _channel(service) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        stream = call(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="crm.ops.v1.Operations"),
        ]))
        replies = [r async for r in stream]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"crm.ops.v1.Operations", "grpc.reflection.v1.ServerReflection"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto  # the .proto, serialised


# --- refusals before any work -------------------------------------------------------------------

GARBAGE = b"\x0a\x05ab"  # field 1, length 5, two bytes: not a message of any type


def _requests(runner: ServiceRunner, code: str) -> float:
    value = REGISTRY.get_sample_value("crm_grpc_requests_total", {
        "service": runner.spec.name, "method": "GetStatus", "code": code})
    return value or 0.0


async def _raw(runner: ServiceRunner, body: bytes, token: str | None) -> grpc.StatusCode:
    async with _channel(runner) as channel:
        call = channel.unary_unary("/crm.ops.v1.Operations/GetStatus")
        metadata = [("authorization", f"Bearer {token}")] if token else []
        try:
            await call(body, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK


async def test_an_undecodable_body_is_refused_after_the_token_check(
        service: ServiceRunner, caplog: pytest.LogCaptureFixture) -> None:
    before = {code: _requests(service, code) for code in ("UNAUTHENTICATED", "INVALID_ARGUMENT")}
    with caplog.at_level("INFO"):
        assert await _raw(service, GARBAGE, None) == grpc.StatusCode.UNAUTHENTICATED
        assert await _raw(service, GARBAGE, OPS_TOKEN) == grpc.StatusCode.INVALID_ARGUMENT
    assert _requests(service, "UNAUTHENTICATED") == before["UNAUTHENTICATED"] + 1
    assert _requests(service, "INVALID_ARGUMENT") == before["INVALID_ARGUMENT"] + 1
    assert "Traceback" not in caplog.text
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2 and all(r.exc_info is None for r in refusals)


async def test_health_lists_every_service(service: ServiceRunner) -> None:
    async with _channel(service) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest())
    assert reply.statuses["crm.ops.v1.Operations"].status == health_pb2.HealthCheckResponse.SERVING
    assert reply.statuses[""].status == health_pb2.HealthCheckResponse.SERVING
