"""Acknowledged erasure over the three services on one clock: interactions
and loyalty each scrub an erased customer's data and say so once, on their
own topic, and the customers service's GetErasureStatus goes from pending to
complete with the time each service scrubbed its data."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.interactions.v1 import interactions_pb2 as ipb
from crm.interactions.v1 import interactions_pb2_grpc
from crm_contracts.topics import INTERACTIONS, LOYALTY
from tests.integration.loyalty.conftest import Trio
from tests.support.erasures import (
    COMPLETE,
    acknowledgements,
    erasure_status,
    states,
    status_when,
)
from tests.support.kafka import read_topic, wait_for
from tests.support.loyalty import (
    erased,
    loyalty_events,
    new_id,
    produce,
    profile,
    profile_when,
    registered,
)
from tests.support.services import Running


def customers(trio: Trio) -> customers_pb2_grpc.CustomersStub:
    return customers_pb2_grpc.CustomersStub(trio.customers.channel)


async def _acknowledged_once_and_consumed(svc: Running, topic: str, customer_id: str,
                                          customers_pool: asyncpg.Pool) -> bool:
    """One acknowledgement of the customer on ``topic``, in the customers
    service's inbox: processed (a dead-lettered event leaves the inbox)."""
    bootstrap = svc.runner.settings.kafka_bootstrap_servers
    assert bootstrap
    records = await read_topic(bootstrap, topic, expect=0, timeout=5, settle=0.2)
    ids = [dict(r.headers)["ce_id"].decode() for r in records if r.key == customer_id.encode()]
    return len(ids) == 1 and bool(await customers_pool.fetchval(
        "SELECT count(*) FROM inbox WHERE event_id = $1", ids[0]))


async def _customer_with_history(trio: Trio) -> tuple[str, str]:
    """A customer with contacts, an open complaint, loyalty follow-ups and a
    discount; returns (customer id, case id)."""
    reply = await customers(trio).RegisterCustomer(cpb.RegisterCustomerRequest(
        display_name="Elena", emails=[f"elena-{uuid.uuid4().hex[:8]}@example.com"]),
        metadata=trio.customers.metadata)
    cid = reply.customer.customer_id
    await customers(trio).SetConsent(cpb.SetConsentRequest(
        customer_id=cid, purpose="promotional_offers", granted=True, source="web"),
        metadata=trio.customers.metadata)
    await profile_when(trio.loyalty, cid, lambda p: p.promotional_consent, "consent known")
    interactions = interactions_pb2_grpc.InteractionsStub(trio.interactions.channel)
    md = trio.interactions.metadata
    for n, amount in enumerate((2500, 4000)):
        await interactions.RecordInteraction(ipb.RecordInteractionRequest(
            customer_id=cid, channel="web", kind="purchase", touchpoint="checkout",
            amount=ipb.Money(amount_minor=amount, currency="EUR"),
            idempotency_key=f"erase-sale-{n}-{cid}"), metadata=md)
    complaint = await interactions.RecordInteraction(ipb.RecordInteractionRequest(
        customer_id=cid, channel="phone", kind="complaint", notes="the sofa arrived torn",
        idempotency_key=f"erase-complaint-{cid}"), metadata=md)
    assert complaint.case_id
    await profile_when(trio.loyalty, cid, lambda p: len(p.discounts) == 1 and p.follow_ups,
                       "a discount and follow-ups")
    return cid, complaint.case_id


async def test_an_erasure_is_complete_once_every_service_acknowledged_it(trio: Trio) -> None:
    cid, case_id = await _customer_with_history(trio)
    before = await erasure_status(trio.customers, cid)
    assert not before.erased and not before.complete and not before.services

    await customers(trio).EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                        metadata=trio.customers.metadata)
    asked = await erasure_status(trio.customers, cid)
    assert asked.erased and not asked.complete
    assert asked.requested_at.ToDatetime(UTC) == trio.customers.clock.now()
    assert [s.name for s in asked.services] == ["customers", "interactions", "loyalty"]
    assert asked.services[0].state == COMPLETE
    assert asked.services[0].completed_at == asked.requested_at

    done = await status_when(trio.customers, cid, lambda s: s.complete, "every acknowledgement")
    assert states(done) == [("customers", COMPLETE), ("interactions", COMPLETE),
                            ("loyalty", COMPLETE)]
    assert all(s.HasField("completed_at") for s in done.services)
    assert all(s.completed_at.ToDatetime() >= done.requested_at.ToDatetime()
               for s in done.services)

    # Each service scrubbed what it held before it acknowledged.
    interactions = interactions_pb2_grpc.InteractionsStub(trio.interactions.channel)
    cases = await interactions.ListCases(ipb.ListCasesRequest(filter="all", customer_id=cid),
                                         metadata=trio.interactions.metadata)
    assert [(c.case_id, c.summary) for c in cases.cases] == [(case_id, "")]
    p = await profile(trio.loyalty, cid)
    assert p.erased and [d.status for d in p.discounts] == ["withdrawn"]
    assert all(f.status in ("cancelled", "completed") for f in p.follow_ups)

    # Erasing again changes nothing: no second erasure, no second acknowledgement.
    await customers(trio).EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                        metadata=trio.customers.metadata)
    for svc, topic, event_type in ((trio.interactions, INTERACTIONS,
                                    "interactions.erasure_completed"),
                                   (trio.loyalty, LOYALTY, "loyalty.erasure_completed")):
        acks = await acknowledgements(svc, topic, cid)
        assert [t for t, _ in acks] == [event_type], f"once on {topic}"
        (_, data), = acks
        service = event_type.split(".")[0]
        assert (data["customer_id"], data["service"]) == (cid, service)
        (part,) = [s for s in done.services if s.name == service]
        assert datetime.fromisoformat(data["erased_at"]) == part.completed_at.ToDatetime(UTC)
    assert await erasure_status(trio.customers, cid) == done


async def test_an_erasure_of_a_customer_with_nothing_held_is_acknowledged_too(
        trio: Trio) -> None:
    """Registered and erased at once: neither service holds a contact, a
    case or an action of them; each scrubs nothing and still says so."""
    reply = await customers(trio).RegisterCustomer(cpb.RegisterCustomerRequest(
        emails=[f"brief-{uuid.uuid4().hex[:8]}@example.com"]), metadata=trio.customers.metadata)
    cid = reply.customer.customer_id
    await customers(trio).EraseCustomer(cpb.EraseCustomerRequest(customer_id=cid),
                                        metadata=trio.customers.metadata)
    done = await status_when(trio.customers, cid, lambda s: s.complete, "every acknowledgement")
    assert states(done) == [("customers", COMPLETE), ("interactions", COMPLETE),
                            ("loyalty", COMPLETE)]


async def test_an_acknowledgement_customers_never_asked_for_is_ignored(trio: Trio) -> None:
    """``customer.erased`` of an id the customers service never had (a
    replayed or foreign event): both services scrub nothing and acknowledge
    it once, and the customers service consumes both acknowledgements and
    ignores them (no dead letter, nothing recorded)."""
    cid = str(uuid.uuid4())
    await produce(trio.loyalty, erased(cid, trio.loyalty.clock.now()))
    pool = trio.customers.runner.pool
    assert pool is not None
    for svc, topic in ((trio.interactions, INTERACTIONS), (trio.loyalty, LOYALTY)):
        await wait_for(functools.partial(_acknowledged_once_and_consumed, svc, topic, cid, pool),
                       what=f"the acknowledgement on {topic}, consumed")
    assert [t for t, _ in await acknowledgements(trio.loyalty, LOYALTY, cid)] == [
        "loyalty.erasure_completed"]
    assert not await pool.fetchval("SELECT count(*) FROM erasures WHERE customer_id = $1",
                                   uuid.UUID(cid))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await erasure_status(trio.customers, cid)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_service_acknowledges_each_erasure_once_even_of_data_erased_before(
        trio: Trio) -> None:
    """Loyalty's view of the customer is erased already, but no
    acknowledgement was ever sent (erased before acknowledgements existed):
    ``customer.erased`` is acknowledged, with the time loyalty erased it, and
    a redelivery of the same event is not acknowledged again."""
    loyalty = trio.loyalty
    cid = new_id()
    now = loyalty.clock.now()
    await produce(loyalty, registered(cid, now))
    await profile_when(loyalty, cid, lambda p: p.stage == "potential", "the customer known")
    pool = loyalty.runner.pool
    assert pool is not None
    earlier = now - timedelta(days=30)
    await pool.execute("UPDATE customer_view SET erased_at = $2 WHERE customer_id = $1",
                       uuid.UUID(cid), earlier)
    erasure = erased(cid, now)
    await produce(loyalty, erasure, erasure)  # delivered twice: the same event
    await loyalty_events(loyalty, cid, 2, settle=0)  # the welcome follow-up, then the ack
    acks = await acknowledgements(loyalty, LOYALTY, cid)
    assert [(t, d["service"]) for t, d in acks] == [("loyalty.erasure_completed", "loyalty")]
    assert datetime.fromisoformat(acks[0][1]["erased_at"]) == earlier


async def test_the_status_of_an_unknown_id_is_not_found(trio: Trio) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await erasure_status(trio.customers, str(uuid.uuid4()))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await erasure_status(trio.customers, "not-a-uuid")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
