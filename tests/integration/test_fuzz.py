"""A fuzzer over every method of every service: whatever a caller sends, the
answer is never INTERNAL, UNKNOWN, UNAVAILABLE or RESOURCE_EXHAUSTED (errors
a client would retry for ever), and every service still answers health.

The three services run together on a database and a broker of their own, in
a thread of their own, so hypothesis drives plain blocking gRPC calls. The
methods come from the services' descriptors (a new method is fuzzed without
touching this file); the requests from their field types
(:mod:`tests.support.fuzz`). ``CRM_FUZZ_EXAMPLES`` sets the examples per
method (60 by default; the run is derandomised so the suite is repeatable,
``CRM_FUZZ_RANDOM=1`` explores new ground).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _d
from google.protobuf import symbol_database
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2
from crm.loyalty.v1 import loyalty_pb2
from crm.ops.v1 import ops_pb2
from crm_runtime.clock import ManualClock
from crm_runtime.settings import Settings
from crm_runtime.stack import EMBEDDED_BROKER_SETTINGS, TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from services.loyalty.app import SPEC as LOYALTY
from tests.conftest import fresh_database
from tests.support.fuzz import requests
from tests.support.proxy import ToggleProxy
from tests.support.services import DEV_TOKEN, running

#: Answers a client would retry: none may come from a request's content.
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
         grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
EXAMPLES = int(os.environ.get("CRM_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize=not os.environ.get("CRM_FUZZ_RANDOM"),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SERVICES = {"customers": cpb.DESCRIPTOR, "interactions": interactions_pb2.DESCRIPTOR,
            "loyalty": loyalty_pb2.DESCRIPTOR}
METHODS = [(name, method) for name, file in SERVICES.items()
           for service in file.services_by_name.values() for method in service.methods]
METHODS += [(name, method) for name in SERVICES
            for method in ops_pb2.DESCRIPTOR.services_by_name["Operations"].methods]
METADATA = [("authorization", f"Bearer {DEV_TOKEN}")]
#: The services, in a thread beside hypothesis, draw random numbers (ids,
#: jitter) while it generates; that is not the strategies' doing.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module")


class Stack:
    """The three services on one clock, in a thread with its own event loop."""

    def __init__(self, admin_dsn: str, broker: TansuBroker, data_dir: Path) -> None:
        self._admin_dsn = admin_dsn
        self._broker = broker
        self._data_dir = data_dir
        self.ports: dict[str, int] = {}
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-stack", daemon=True)

    def __enter__(self) -> Stack:
        self._thread.start()
        if not self._ready.wait(120) or self._error is not None:
            raise RuntimeError(f"the stack did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with fresh_database(self._admin_dsn, "crm_fuzz") as url:
            base = Settings(database_url=url, data_dir=self._data_dir,
                            kafka_bootstrap_servers=self._broker.bootstrap_servers,
                            retry_initial_s=0.05, retry_max_s=0.5, consumer_batch_wait_ms=20,
                            scheduler_poll_interval_s=0.1, relay_poll_interval_s=0.1,
                            shutdown_grace_s=1.0, **EMBEDDED_BROKER_SETTINGS)
            clock = ManualClock(datetime.now(UTC))
            # Customers calls the others for ExportCustomer; their ports are
            # known only once they run, so it calls them through relays.
            relays = {name: ToggleProxy("postgresql://grpc@127.0.0.1:1/relay")
                      for name in ("interactions", "loyalty")}
            peers = base.model_copy(update={f"{name}_grpc_target": f"127.0.0.1:{relay.port}"
                                            for name, relay in relays.items()})
            async with running(CUSTOMERS, peers, clock=clock) as customers:
                target = f"127.0.0.1:{customers.runner.bound_grpc_port}"
                with_target = base.model_copy(update={"customers_grpc_target": target})
                async with running(INTERACTIONS, with_target, clock=clock) as interactions, \
                        running(LOYALTY, with_target, clock=clock) as loyalty:
                    self.ports = {"customers": customers.runner.bound_grpc_port,
                                  "interactions": interactions.runner.bound_grpc_port,
                                  "loyalty": loyalty.runner.bound_grpc_port}
                    for name, relay in relays.items():
                        relay.retarget(self.ports[name])
                        await relay.up()
                    try:
                        self._ready.set()
                        await self._stop.wait()
                    finally:
                        for relay in relays.values():
                            await relay.down()


@pytest.fixture(scope="module")
def stack(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    broker = TansuBroker(log_path=tmp_path_factory.mktemp("fuzz") / "tansu.log").start()
    try:
        with Stack(pg_admin_dsn, broker, tmp_path_factory.mktemp("fuzz-data")) as running_stack:
            yield running_stack
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def channels(stack: Stack) -> Iterator[dict[str, grpc.Channel]]:
    opened = {name: grpc.insecure_channel(f"127.0.0.1:{port}")
              for name, port in stack.ports.items()}
    yield opened
    for channel in opened.values():
        channel.close()


@pytest.fixture(scope="module")
def customer_ids(channels: dict[str, grpc.Channel]) -> list[str]:
    """A few real customers, so ids in requests often name one."""
    stub = customers_pb2_grpc.CustomersStub(channels["customers"])
    return [stub.RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name=f"Fuzz {i}", emails=[f"fuzz-{i}@example.com"]), metadata=METADATA,
        timeout=30).customer.customer_id for i in range(3)]


def _caller(channel: grpc.Channel, method: _d.MethodDescriptor) -> Any:
    output = symbol_database.Default().GetSymbol(method.output_type.full_name)
    return channel.unary_unary(f"/{method.containing_service.full_name}/{method.name}",
                               response_deserializer=output.FromString)


def _code(call: Any, body: bytes) -> grpc.StatusCode:
    try:
        call(body, metadata=METADATA, timeout=30)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("service", "method"), METHODS,
                         ids=[f"{s}.{m.name}" for s, m in METHODS])
def test_no_request_is_answered_with_a_server_error(
        service: str, method: _d.MethodDescriptor, channels: dict[str, grpc.Channel],
        customer_ids: list[str]) -> None:
    call = _caller(channels[service], method)
    message = symbol_database.Default().GetSymbol(method.input_type.full_name)

    bodies = requests(message, customer_ids).map(lambda r: r.SerializeToString())

    @SETTINGS
    @given(st.integers(0, 4).flatmap(lambda i: st.binary(max_size=64) if i == 0 else bodies))
    def one(body: bytes) -> None:
        code = _code(call, body)
        assert code not in NEVER, f"{method.full_name} answered {code.name} to {body[:200]!r}"

    one()


def test_every_service_still_answers_health(channels: dict[str, grpc.Channel]) -> None:
    for name, channel in channels.items():
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
