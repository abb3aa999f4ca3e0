"""Loyalty's contacts pass the customers service's contact gate, whose one
ledger per customer counts every service's contacts (interactions,
customers and loyalty on one clock, real PostgreSQL and broker): a
promotional discount is refused because interactions' contacts used up the
customer's cap; a follow-up due in the customer's quiet hours (their zone
as the customers service knows it) waits for their end; one due when the
customer's contacts are over the cap is cancelled with the reason."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from tests.integration.loyalty.conftest import Trio
from tests.support.kafka import read_topic, wait_for
from tests.support.loyalty import loyalty_events, of_type, produce, profile_when, stage_changed


def _customers(trio: Trio) -> customers_pb2_grpc.CustomersStub:
    return customers_pb2_grpc.CustomersStub(trio.customers.channel)


def _daytime(trio: Trio) -> None:
    """Move the shared clock on to noon UTC unless it is day already (the
    package's tests only move it forward)."""
    now = trio.loyalty.clock.now()
    if not 9 <= now.hour < 18:
        noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
        trio.loyalty.clock.set(noon if noon > now else noon + timedelta(days=1))


async def _customer(trio: Trio, *consents: str) -> str:
    """Registered with the customers service, with these consents, known to
    loyalty (from the customers service's own events)."""
    reply = await _customers(trio).RegisterCustomer(cpb.RegisterCustomerRequest(
        emails=[f"{uuid.uuid4().hex[:10]}@example.com"]), metadata=trio.customers.metadata)
    cid: str = reply.customer.customer_id
    for purpose in consents:
        await _customers(trio).SetConsent(cpb.SetConsentRequest(
            customer_id=cid, purpose=purpose, granted=True, source="web"),
            metadata=trio.customers.metadata)
    await profile_when(trio.loyalty, cid, lambda p: p.promotional_consent == (
        "promotional_offers" in consents), "the customer known to loyalty")
    return cid


async def _interactions_events(trio: Trio, customer_id: str, event_type: str,
                               expect: int) -> None:
    bootstrap = trio.interactions.runner.settings.kafka_bootstrap_servers or ""

    async def enough() -> bool:
        records = await read_topic(bootstrap, "crm.interactions.v1", expect=0, timeout=5,
                                   settle=0.3)
        return sum(1 for r in records if r.key == customer_id.encode()
                   and dict(r.headers)["ce_type"].decode() == event_type) >= expect

    await wait_for(enough, what=f"{expect} {event_type} of {customer_id}")


async def test_a_discount_is_refused_when_interactions_used_the_customers_cap(
        trio: Trio) -> None:
    _daytime(trio)
    cid = await _customer(trio, "surveys", "promotional_offers")
    api = interactions_pb2_grpc.InteractionsStub(trio.interactions.channel)
    md = trio.interactions.metadata

    async def surveys_consent_known() -> bool:
        pool = trio.interactions.runner.pool
        assert pool is not None
        return bool(await pool.fetchval(
            "SELECT surveys_consent FROM known_customers WHERE customer_id = $1",
            uuid.UUID(cid)))

    await wait_for(surveys_consent_known, what="interactions knows the surveys consent")
    # Interactions contacts the customer three times this week: two survey
    # requests after resolved cases, and an agent's call.
    for _ in range(2):
        case = await api.OpenCase(ipb.OpenCaseRequest(
            customer_id=cid, kind="support", channel="chat",
            idempotency_key=str(uuid.uuid4())), metadata=md)
        await api.ResolveCase(ipb.ResolveCaseRequest(case_id=case.case_id, resolution="done"),
                              metadata=md)
    await _interactions_events(trio, cid, "survey.requested", 2)
    await api.RecordInteraction(ipb.RecordInteractionRequest(
        customer_id=cid, channel="phone", kind="follow_up", direction="proactive",
        idempotency_key=str(uuid.uuid4())), metadata=md)
    # Loyalty's repeat-buyer discount would be the fourth: over the promotional cap (3).
    await produce(trio.loyalty, stage_changed(cid, "one_time", "repeat", 2,
                                              trio.loyalty.clock.now()))
    p = await profile_when(trio.loyalty, cid, lambda p: len(p.suppressed) == 1,
                           "the discount suppressed")
    assert [(s.rule_id, s.action_type, s.purpose, s.reason) for s in p.suppressed] == [
        ("repeat-buyer-discount", "discount", "promotional", "frequency_cap")]
    assert list(p.discounts) == []
    events = await loyalty_events(trio.loyalty, cid, 2)  # the welcome follow-up, suppressed
    assert of_type(events, "loyalty.discount_issued") == []


async def test_a_follow_up_due_in_the_customers_quiet_hours_waits_for_their_end(
        trio: Trio) -> None:
    _daytime(trio)
    clock = trio.loyalty.clock
    cid = await _customer(trio)
    p = await profile_when(trio.loyalty, cid, lambda p: len(p.follow_ups) == 1, "welcome")
    due = p.follow_ups[0].due_at.ToDatetime(tzinfo=UTC)  # a day later, as loyalty knows them
    # Since then the customer told the customers service they live in Tokyo
    # (loyalty's view does not know): at noon UTC it is 21:00 there.
    customer = await _customers(trio).GetCustomer(cpb.GetCustomerRequest(customer_id=cid),
                                                  metadata=trio.customers.metadata)
    await _customers(trio).UpdateCustomer(cpb.UpdateCustomerRequest(
        customer_id=cid, expected_version=customer.version,
        profile=cpb.Profile(time_zone="Asia/Tokyo")), metadata=trio.customers.metadata)
    clock.set(due.replace(hour=12))
    morning = due.replace(hour=23)  # 08:00 in Tokyo
    p = await profile_when(trio.loyalty, cid, lambda p: p.follow_ups[0].due_at.ToDatetime(
        tzinfo=UTC) == morning, "the welcome moved to the morning in Tokyo")
    assert p.follow_ups[0].status == "scheduled"
    clock.set(morning)
    await profile_when(trio.loyalty, cid, lambda p: p.follow_ups[0].status == "due",
                       "the welcome due in the morning")


async def test_a_follow_up_due_over_the_cap_is_cancelled_with_the_reason(trio: Trio) -> None:
    _daytime(trio)
    clock = trio.loyalty.clock
    cid = await _customer(trio)
    p = await profile_when(trio.loyalty, cid, lambda p: len(p.follow_ups) == 1, "welcome")
    due: datetime = p.follow_ups[0].due_at.ToDatetime(tzinfo=UTC)
    # Other services' contacts fill the week's service cap (6) before it is due.
    await _customers(trio).ReserveContacts(cpb.ReserveContactsRequest(contacts=[
        cpb.ContactRequest(contact_id=str(uuid.uuid4()), customer_id=cid, purpose="service",
                           service="interactions") for _ in range(6)]),
        metadata=trio.customers.metadata)
    clock.set(due)
    p = await profile_when(trio.loyalty, cid, lambda p: p.follow_ups[0].status == "cancelled",
                           "the welcome cancelled")
    events = await loyalty_events(trio.loyalty, cid, 2)
    assert [e["reason"] for e in of_type(events, "loyalty.followup_cancelled")] == [
        "frequency_cap"]
