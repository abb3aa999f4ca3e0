"""Helpers for tests of the customers service over gRPC and Kafka."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from crm.customers.v1 import customers_pb2 as pb
from crm.customers.v1 import customers_pb2_grpc
from crm_contracts.interactions import InteractionRecorded
from crm_contracts.topics import CUSTOMERS
from crm_runtime.events import Envelope
from tests.support.kafka import Record, read_topic, wait_for
from tests.support.services import Running

START = datetime(2031, 3, 1, 12, tzinfo=UTC)


def stub(svc: Running) -> customers_pb2_grpc.CustomersStub:
    return customers_pb2_grpc.CustomersStub(svc.channel)


async def register(svc: Running, **fields: object) -> pb.RegisterCustomerResponse:
    fields.setdefault("emails", [f"{uuid.uuid4().hex[:8]}@example.com"])
    reply: pb.RegisterCustomerResponse = await stub(svc).RegisterCustomer(
        pb.RegisterCustomerRequest(**fields), metadata=svc.metadata)  # type: ignore[arg-type]
    return reply


async def get(svc: Running, customer_id: str) -> pb.Customer:
    reply: pb.Customer = await stub(svc).GetCustomer(
        pb.GetCustomerRequest(customer_id=customer_id), metadata=svc.metadata)
    return reply


def purchase_event(customer_id: str, amount: int, at: datetime,
                   interaction_id: str | None = None) -> Envelope:
    return Envelope(data=InteractionRecorded(
        interaction_id=interaction_id or str(uuid.uuid4()), customer_id=customer_id,
        channel="web", direction="reactive", kind="purchase", occurred_at=at,
        amount_minor=amount, currency="EUR"), subject=customer_id, source="/test/shop")


async def customer_records(svc: Running, customer_id: str, expect: int) -> list[Record]:
    """The records keyed by this customer on crm.customers.v1, once there are
    at least ``expect`` of them."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    found: list[Record] = []

    async def enough() -> bool:
        records = await read_topic(bootstrap, CUSTOMERS, expect=0, timeout=5, settle=0.3)
        found[:] = [r for r in records if r.key == customer_id.encode()]
        return len(found) >= expect

    await wait_for(enough, timeout=30, what=f"{expect} events of {customer_id}")
    return found


async def customer_events(svc: Running, customer_id: str,
                          expect: int) -> list[tuple[str, dict[str, Any]]]:
    """(type, data) of this customer's events on crm.customers.v1."""
    return [(dict(r.headers)["ce_type"].decode(), json.loads(r.value))
            for r in await customer_records(svc, customer_id, expect)]


