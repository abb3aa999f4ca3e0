"""Interactions, customers and loyalty together, on one clock: a purchase
published on the ingest topic becomes a stage change in customers and a
repeat-buyer discount on crm.loyalty.v1, once, whatever the redelivery."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm_runtime.events import Envelope
from crm_runtime.stack import TansuBroker
from services.customers.app import SPEC as CUSTOMERS
from services.interactions.app import SPEC as INTERACTIONS
from services.interactions.events import ContactReceived
from tests.integration.loyalty.conftest import loyalty_settings
from tests.support.loyalty import loyalty_events, of_type, produce, profile_when
from tests.support.services import Running, running


@dataclass
class Trio:
    interactions: Running
    customers: Running
    loyalty: Running


@pytest.fixture(scope="module")
async def trio(svc: Running, database_url: str, broker: TansuBroker) -> AsyncIterator[Trio]:
    settings = loyalty_settings(database_url, broker)
    async with running(CUSTOMERS, settings, clock=svc.clock) as customers:
        target = f"127.0.0.1:{customers.runner.bound_grpc_port}"
        with_target = settings.model_copy(update={"customers_grpc_target": target})
        async with running(INTERACTIONS, with_target, clock=svc.clock) as interactions:
            yield Trio(interactions, customers, svc)


def _purchase(trio: Trio, customer_id: str, key: str, amount: int) -> Envelope:
    return Envelope(data=ContactReceived(
        idempotency_key=key, customer_id=customer_id, channel="web", kind="purchase",
        occurred_at=trio.loyalty.clock.now(), amount_minor=amount, currency="EUR",
        outcome="positive"), subject=customer_id, source="/test/shop")


async def test_second_purchase_through_all_services_yields_one_discount(trio: Trio) -> None:
    customers = customers_pb2_grpc.CustomersStub(trio.customers.channel)
    reply = await customers.RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name="Lola", emails=[f"lola-{uuid.uuid4().hex[:8]}@example.com"]),
        metadata=trio.customers.metadata)
    cid = reply.customer.customer_id
    await customers.SetConsent(cpb.SetConsentRequest(
        customer_id=cid, purpose="promotional_offers", granted=True, source="web"),
        metadata=trio.customers.metadata)
    await profile_when(trio.loyalty, cid, lambda p: p.promotional_consent, "consent known")

    first = _purchase(trio, cid, f"sale-1-{cid}", 2500)
    second = _purchase(trio, cid, f"sale-2-{cid}", 4000)
    started = time.monotonic()
    # The shop publishes each sale twice (a retry): each still counts once.
    await produce(trio.interactions, first, first, second, second)
    p = await profile_when(trio.loyalty, cid, lambda p: len(p.discounts) == 1, "a discount")
    elapsed = time.monotonic() - started
    assert p.stage == "repeat" and p.discounts[0].percent == 10
    events = await loyalty_events(trio.loyalty, cid, 3, settle=1.5)
    issued = of_type(events, "loyalty.discount_issued")
    assert [d["rule_id"] for d in issued] == ["repeat-buyer-discount"]
    scheduled = sorted(d["template"] for d in of_type(events, "loyalty.followup_scheduled"))
    assert scheduled == ["thank_you_first_purchase", "welcome"]
    # The welcome follow-up was moot after the first purchase.
    assert [d["reason"] for d in of_type(events, "loyalty.followup_cancelled")] == [
        "moot:customer.purchase_recorded"]
    assert elapsed < 30
