"""CRM_OTEL_EXPORTER=otlp in a real ``crm serve`` process: its spans reach an
OTLP/HTTP receiver (the protocol an OpenTelemetry collector speaks, decoded
here with the OTLP protobuf definitions), continuing the caller's trace."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm_runtime.logs import new_traceparent, trace_id
from crm_runtime.settings import SERVICES
from crm_runtime.stack import TansuBroker
from tests.support.cli import CRM, ROOT, crm_env, free_port_block

TOKEN = "otlp-test-token-0123456789"


class _Receiver(BaseHTTPRequestHandler):
    received: list[ExportTraceServiceRequest] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).received.append(request)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    received: list[ExportTraceServiceRequest] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    finally:
        server.shutdown()
        server.server_close()


async def test_spans_reach_an_otlp_receiver(
        collector: tuple[str, list[ExportTraceServiceRequest]], own_database: str,
        own_broker: TansuBroker, tmp_path: Path) -> None:
    endpoint, received = collector
    grpc_port = free_port_block(1)
    metrics_port = free_port_block(1, avoid=frozenset({grpc_port}))
    index = SERVICES.index("customers")  # service n listens on base + n
    env = crm_env(tmp_path, DATABASE_URL=own_database,
                  KAFKA_BOOTSTRAP_SERVERS=own_broker.bootstrap_servers,
                  CRM_DEV_TOKEN=TOKEN, CRM_OTEL_EXPORTER="otlp",
                  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
                  CRM_GRPC_BASE_PORT=str(grpc_port - index),
                  CRM_METRICS_BASE_PORT=str(metrics_port - index),
                  CRM_LOG_LEVEL="WARNING")
    proc = await asyncio.create_subprocess_exec(*CRM, "serve", "customers", cwd=ROOT, env=env,
                                                stdin=asyncio.subprocess.DEVNULL)
    parent = new_traceparent()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = customers_pb2_grpc.CustomersStub(channel)
            metadata = [("authorization", f"Bearer {TOKEN}"), ("traceparent", parent)]
            for _ in range(300):
                assert proc.returncode is None, "crm serve customers exited"
                try:
                    reply = await stub.RegisterCustomer(cpb.RegisterCustomerRequest(
                        emails=["otlp@example.com"]), metadata=metadata, timeout=2)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.2)
            assert reply.customer.customer_id
        spans = []
        for _ in range(100):
            spans = [(rs, span) for request in list(received) for rs in request.resource_spans
                     for scope in rs.scope_spans for span in scope.spans
                     if span.trace_id.hex() == trace_id(parent)]
            if spans:
                break
            await asyncio.sleep(0.1)
        assert spans, f"no span of trace {trace_id(parent)} in {len(received)} exports"
        resource, span = spans[0]
        attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
        assert attributes["service.name"] == "crm-customers"
        assert "RegisterCustomer" in span.name
        assert span.parent_span_id.hex() == parent.split("-")[2]
        assert span.kind == span.SPAN_KIND_SERVER
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
